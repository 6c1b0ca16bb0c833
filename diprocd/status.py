"""The table of a worker's processes, for ``dpd-workerd --status`` and
``dpdctl status``: one renderer, one rule for what is as desired.

The view comes from the ledger (``ledger.read_view``) or, live, from the
worker's control socket; a process the view says is running but whose pid
is gone shows as ``dead``. What is not as desired comes first, its state
marked with ``*``.
"""

import os
import time

from diprocd import kernel, ledger
from diprocd.config import load_pid_file, load_worker_config
from diprocd.daemon import read_locked_pid
from diprocd.errors import ConfigError


def _claims_pid(entry):
    pid = entry.get("pid")
    return entry.get("state") in ("running", "starting") \
        and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def live_state(entry, alive=None):
    """The state to show: "running" (or "starting" with a pid: awaiting
    its health check) only while its pid is alive. ``alive``: the live
    pids among the entries' (``kernel.alive``), when already known."""
    if _claims_pid(entry) and not (
            entry["pid"] in alive if alive is not None
            else kernel.is_alive(entry["pid"])):
        return "dead"
    return entry.get("state", "?")


def as_desired(entry, state=None):
    """``state``: its ``live_state`` when already known."""
    if state is None:
        state = live_state(entry)
    return bool(entry.get("ok")) and state != "dead"


def live_views(procs):
    """A local worker's {name: view} (what are not dicts left out) with
    "state" as shown (a gone pid "dead") and "ok" as desired; every pid
    looked up at once."""
    entries = {name: entry for name, entry in procs.items()
               if isinstance(entry, dict)}
    alive = kernel.alive(entry["pid"] for entry in entries.values()
                         if _claims_pid(entry))
    views = {}
    for name, entry in entries.items():
        state = live_state(entry, alive)
        views[name] = dict(entry, state=state, ok=as_desired(entry, state))
    return views


def tree_line(tree):
    """How the worker groups each process's descendants (its status file's
    ``tree``), in words; None when it does not say (an older worker)."""
    if not isinstance(tree, dict) or not isinstance(tree.get("mechanism"),
                                                    str):
        return None
    if tree.get("path"):
        text = "process trees: %s in %s; memory_max: %s" % (
            tree["mechanism"], tree["path"], tree.get("memory")
            or "not enforced")
    else:
        text = ("process trees: process group (no writable cgroup: a "
                "descendant that calls setsid survives a stop; memory_max "
                "not enforced)")
    if tree.get("note"):
        text += " [%s]" % tree["note"]
    return text


def _age(seconds):
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    if seconds < 172800:
        return "%dh" % (seconds // 3600)
    return "%dd" % (seconds // 86400)


def note(entry, now):
    """The last column: the operator's stop, the next start of a process
    in backoff, the error or the last exit; then the health check's last
    result."""
    if entry.get("held"):
        return "stopped by operator"
    text = entry.get("error") or entry.get("last_exit") or ""
    if entry.get("adopted"):
        text = ("adopted; " + text) if text else "adopted"
    due = entry.get("next_start")
    # A node's report is not trusted to hold a time localtime takes.
    if entry.get("state") == "backoff" and isinstance(due, (int, float)) \
            and not isinstance(due, bool) and 0 <= due < 1e11:
        text = "next start in %s (%s)%s" % (
            _age(max(0, due - now + 0.999)),
            time.strftime("%H:%M:%S", time.localtime(due)),
            "; " + text if text else "")
    health = entry.get("health")
    if isinstance(health, dict):
        output = str(health.get("output") or "").replace("\n", " ")
        check = "check %s%s" % (health.get("health"),
                                ": " + output[:80] if output else "")
        text = "%s; %s" % (text, check) if text else check
    return text


def process_rows(procs, now, prefix=(), local=True):
    """(as desired, cells...) for each process of {name: view}; ``local``:
    the pids are this machine's, so a gone one shows "dead"."""
    if local:
        procs = live_views(procs)
    rows = []
    for name, entry in procs.items():
        if not isinstance(entry, dict):
            continue
        state, ok = entry.get("state", "?"), bool(entry.get("ok"))
        started = entry.get("started_at")
        uptime = _age(now - started) if isinstance(started, (int, float)) \
            and entry.get("pid") and state == "running" else "-"
        rows.append((ok,) + tuple(prefix) + (
            name, ("" if ok else "*") + state, str(entry.get("pid") or "-"),
            uptime, str(entry.get("starts", 0)), note(entry, now)))
    return rows


def table(header, rows):
    """Rows (as desired, cells...) as text, what is not as desired first;
    the last cell is free text, the others are aligned."""
    rows = sorted(rows, key=lambda row: (row[0],) + row[1:])
    lines = [header] + [row[1:] for row in rows]
    width = len(header) - 1
    widths = [max(len(line[i]) for line in lines) for i in range(width)]
    return "\n".join("  ".join([line[i].ljust(widths[i])
                                for i in range(width)] + [line[width]]).rstrip()
                     for line in lines)


PROCESS_HEADER = ("NAME", "STATE", "PID", "UPTIME", "STARTS",
                  "LAST EXIT / ERROR")


def render(procs, now):
    """{name: view} as a table, one process a line, what is not as desired
    first (its state marked "*"); returns (text, all as desired)."""
    rows = process_rows(procs, now)
    return table(PROCESS_HEADER, rows), all(row[0] for row in rows)


def _applied(config_path, owners):
    """(pid file, status document, no problems) when CONFIG holds the
    bytes its worker applies (same path, same CRC-32), else (None, None,
    None)."""
    if owners:
        return None, None, None
    try:
        pid_file, crc32 = load_pid_file(config_path, with_crc32=True)
    except ConfigError:
        return None, None, None
    document = ledger.read_view(ledger.status_path(pid_file))
    if document is None or document.get("config_crc32") != crc32 \
            or document.get("config") != os.path.abspath(config_path):
        return None, None, None
    return pid_file, document, []


def status_main(config_path, owners=()):
    """``dpd-workerd --status CONFIG``: print the table; 0 when the worker
    runs and every process is as desired, else 1. An invalid CONFIG (that
    is when this is needed) still shows the running worker's state, from
    the pid file the CONFIG names, with its problems. ``owners``: as the
    worker's --config-owner.

    The CONFIG's bytes the worker applies (their CRC-32 in its status
    file) are not checked again: with thousands of processes the checks
    are most of this command's time. Other bytes, or ``owners``, are."""
    pid_file, document, problems = _applied(config_path, owners)
    if pid_file is None:
        try:
            pid_file = load_worker_config(config_path, owners).pid_file
            problems = []
        except ConfigError as err:
            problems = err.problems
            try:
                pid_file = load_pid_file(config_path)
            except ConfigError:
                pid_file = None
    for problem in problems:
        print("error: " + problem)
    if pid_file is None:
        return 1
    if problems:
        print("%s is invalid: a running worker keeps the last good one"
              % config_path)
    path = ledger.status_path(pid_file)
    if document is None:
        document = ledger.read_view(path)
    worker_pid = read_locked_pid(pid_file)
    if worker_pid is not None:
        spawner = (document or {}).get("spawner")
        how = ", starting processes with %s" % spawner \
            if isinstance(spawner, str) else ""
        print("dpd-workerd running, pid %d%s; status from %s"
              % (worker_pid, how, path))
    else:
        print("dpd-workerd is not running (pid file %s)" % pid_file)
    if document is None:
        print("no status file at %s" % path)
        return 1
    text, all_ok = render(document["procs"], time.time())
    print(text)
    line = tree_line(document.get("tree"))
    if line:
        print(line)
    return 0 if worker_pid is not None and all_ok and not problems else 1
