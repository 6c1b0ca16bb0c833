"""``dpd-workerd --status``: the worker's view of its processes as a table.

The view comes from the ledger (``ledger.read_view``); this module only
renders it and decides the exit code.
"""

import time

from diprocd import ledger
from diprocd.config import load_worker_config
from diprocd.daemon import read_locked_pid
from diprocd.errors import ConfigError


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


def render(document, now):
    """The status document as a table, one process a line."""
    rows = [("NAME", "STATE", "PID", "UPTIME", "STARTS", "LAST EXIT / ERROR")]
    for name, proc in sorted(document["procs"].items()):
        started = proc.get("started_at")
        uptime = _age(now - started) if started and proc.get("pid") else "-"
        note = proc.get("error") or proc.get("last_exit") or ""
        if proc.get("adopted"):
            note = ("adopted; " + note) if note else "adopted"
        rows.append((name, proc.get("state", "?"), str(proc.get("pid") or "-"),
                     uptime, str(proc.get("starts", 0)), note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(5)] + [row[5]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def status_main(config_path):
    """``dpd-workerd --status CONFIG``: print the table; 0 when the worker
    runs and every process is as desired, else 1."""
    try:
        config = load_worker_config(config_path)
    except ConfigError as err:
        for problem in err.problems:
            print("error: " + problem)
        return 1
    path = ledger.status_path(config.pid_file)
    document = ledger.read_view(path)
    worker_pid = read_locked_pid(config.pid_file)
    if worker_pid is not None:
        print("dpd-workerd running, pid %d; status from %s" % (worker_pid, path))
    else:
        print("dpd-workerd is not running (pid file %s)" % config.pid_file)
    if document is None:
        print("no status file at %s" % path)
        return 1
    print(render(document, time.time()))
    all_ok = all(proc.get("ok") for proc in document["procs"].values())
    return 0 if worker_pid is not None and all_ok else 1
