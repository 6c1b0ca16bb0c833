"""The worker's ledger: what it remembers across its own restarts, and the
view of its processes that others read. One format, written and read here.

Two files beside the worker's pid file (``/run/dpd-workerd.pid``):

- ``dpd-workerd.status.json``, rewritten atomically after changes (at
  most every ``STATUS_INTERVAL`` seconds: worker.py), compact, each
  process's part encoded again only when it changed, the members up to
  "procs" on the first line (read alone by ``read_view``)::

      {"version": 2, "worker_pid": N, "config": PATH, "boot_id": ID,
       "config_crc32": C,           # of the CONFIG bytes applied (--status)
       "updated": T, "spawner": HOW,   # "dpd-exec PATH" or "fork (why)"
       "tree":    {"mechanism": M, "path": P, "memory": M, "note": N},
                                    # how process trees are grouped (cgroup)
       "procs":   {NAME: view},     # --status, the client, the master
       "records": {NAME: record},   # adoption: the next worker's memory
       "held":    {NAME: fingerprint}}  # stopped by the operator

  A *view* is what a person or the master needs (state, pid, uptime,
  starts, last exit, error, adopted, ok, held, the wall-clock time of
  the next start of a process in ``backoff``, health: the last check's
  result and output). A *record* is what a later worker
  needs to take a process over without starting a duplicate: pid and
  kernel start time (or, for a daemon still starting, its launcher's),
  the definition's fingerprint, and how to stop it. Only views (and
  ``tree``) travel to the master (``read_view``).

- ``dpd-workerd.journal``: one line per process started since the status
  file was last written, appended by the new process itself just before
  its exec (``JournalSlot``; dpd-exec or spawn.py's child), so that no program ever runs unrecorded,
  whenever the worker is killed. A line is ``\\n<pid> <ticks|-> <json>\\n``:
  the worker writes the JSON part whole before the fork, the child puts its
  pid and start time in front. The leading newline means a line torn by a
  full disk spoils only itself. The journal is emptied after every
  successful status write.

  The worker holds an exclusive ``flock`` on its journal, through the open
  file that each child shares until its exec. So the next worker, taking
  that lock before it reads the journal, waits for the starts a killed
  worker left in flight to journal themselves (``Ledger.open``), rather
  than starting those programs a second time.

``recall`` merges both once, keeping only this boot's records.

The status file is mode 0644 (the client, maybe another user, reads it),
the journal 0600, whatever the umask; a symlink planted at the status
file's name is replaced, one at the journal's refused (``fileio``).
"""

import dataclasses
import fcntl
import os
import time

import simplejson as json

from diprocd import jsonin
from diprocd.daemon import beside_pid_file
from diprocd.errors import ConfigError
from diprocd.fileio import atomic_write, open_in_place
from diprocd.spec import ProcessSpec

STATUS_VERSION = 2
# A status file larger than this is not read (16 KiB a process for 1000).
MAX_STATUS_BYTES = 16 * 1024 * 1024


# Ends the status file's first line, which holds the view: the members
# before "records" (no compact JSON text holds a newline of its own).
VIEW_END = "\n"


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def status_path(worker_pid_file):
    """``/run/dpd-workerd.pid`` -> ``/run/dpd-workerd.status.json``."""
    return beside_pid_file(worker_pid_file, ".status.json")


def journal_path(worker_pid_file):
    """``/run/dpd-workerd.pid`` -> ``/run/dpd-workerd.journal``."""
    return beside_pid_file(worker_pid_file, ".journal")


@dataclasses.dataclass
class Record:
    """What adopting one process needs (see the module docstring)."""

    pid: int = None
    ticks: int = None
    launcher: tuple = None        # (pid or None, ticks): a daemon starting
    starts: int = 0
    started_at: float = None
    fingerprint: str = None
    pid_file: str = None
    write_pid: bool = True
    stop: tuple = None            # (signal number, timeout)

    @classmethod
    def of(cls, proc):
        spec = proc.spec
        return cls(proc.pid, proc.ticks, proc.pending_launcher(), proc.starts,
                   proc.started_at, spec.fingerprint(), spec.pid_file,
                   spec.write_pid, (spec.stop_signal, spec.stop_timeout))

    def to_json(self):
        # Field by field: dataclasses.asdict deep-copies, and was two thirds
        # of a status write.
        out = {name: getattr(self, name) for name in _RECORD_FIELDS}
        for key in ("launcher", "stop"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    @classmethod
    def from_json(cls, obj):
        """A record from the status file or the journal; None when it is
        not one (foreign or damaged)."""
        if not isinstance(obj, dict):
            return None
        record = cls()
        for field in dataclasses.fields(cls):
            if field.name in obj:
                setattr(record, field.name, obj[field.name])
        if not _is_int(record.pid):
            record.pid = None
        if not _is_int(record.ticks):
            record.ticks = None
        record.launcher = _launcher(record.launcher)
        if not (isinstance(record.stop, (list, tuple)) and len(record.stop) == 2
                and _is_int(record.stop[0])
                and isinstance(record.stop[1], (int, float))):
            record.stop = None
        if not _is_int(record.starts):
            record.starts = 0
        if not isinstance(record.started_at, (int, float)):
            record.started_at = None
        return record

    def stop_spec(self, name):
        """A minimal spec to stop a process known only from its record."""
        kwargs = {"name": name, "run": "/unknown",
                  "write_pid": bool(self.write_pid)}
        if isinstance(self.pid_file, str):
            kwargs["pid_file"] = self.pid_file
        if self.stop is not None:
            kwargs["stop_signal"] = int(self.stop[0])
            kwargs["stop_timeout"] = float(self.stop[1])
        return ProcessSpec(**kwargs)


_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(Record))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _launcher(value):
    if isinstance(value, (list, tuple)) and len(value) == 2 and _is_int(
            value[1]):
        return (value[0] if _is_int(value[0]) else None, value[1])
    return None


def view_of(proc):
    """The process's line in ``procs``: what people and the master see."""
    return {
        "state": proc.shown_state,
        "pid": proc.pid,
        "started_at": proc.started_at,
        "since": proc.since,
        "starts": proc.starts,
        "last_exit": proc.last_exit,
        "error": proc.error,
        "adopted": proc.adopted,
        "ok": proc.as_desired,
        "held": proc.held,
        "next_start": proc.next_start,
        "health": proc.health.view() if proc.spec.check and proc.health
        else None,
    }


class JournalSlot:
    """One start's journal line, but for the pid and start time that only
    the new process knows: it calls ``line`` and writes to ``fd``."""

    __slots__ = ("fd", "record")

    def __init__(self, fd, record):
        self.fd = fd
        self.record = record

    def line(self, pid, ticks):
        return b"\n%d %s %s\n" % (pid, b"-" if ticks is None else b"%d" % ticks,
                                  self.record)


class Ledger:
    """The status file and the journal of one worker (module docstring)."""

    def __init__(self, worker_pid_file, boot_id):
        self.status_path = status_path(worker_pid_file)
        self.journal_path = journal_path(worker_pid_file)
        self.boot_id = boot_id
        self.journal_fd = None
        # {name: (Process, its revision, the JSON texts of its view and
        # record)} of the last write: a process is encoded again only when
        # its revision moved (an attribute of it or of its Health was set).
        self._texts = {}

    def open(self, wait=0.0):
        """Open the journal and lock it, waiting at most ``wait`` seconds
        for the children of a killed worker that still hold it (they have
        not reached exec yet: see the module docstring). Returns False when
        some still do after that."""
        self.journal_fd = open_in_place(
            self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.journal_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)  # before the loop runs: nothing to serve

    def close(self):
        if self.journal_fd is not None:
            os.close(self.journal_fd)
            self.journal_fd = None

    def slot(self, spec):
        """The journal slot a new process of ``spec`` fills before exec."""
        record = json.dumps({
            "boot_id": self.boot_id, "name": spec.name, "daemon": spec.daemon,
            "fingerprint": spec.fingerprint(), "pid_file": spec.pid_file,
            "write_pid": spec.write_pid,
            "stop": [spec.stop_signal, spec.stop_timeout]})
        return JournalSlot(self.journal_fd, record.encode("utf-8"))

    def write(self, worker_pid, config_path, updated, procs, tree=None,
              spawner=None, config_crc32=None):
        """Replace the status file with ``procs`` ({name: Process}) and
        ``tree`` (``cgroup.Tree.describe()``), and empty the journal (all
        in the status now); ``spawner`` says how the worker starts
        processes, ``config_crc32`` is the CRC-32 of the CONFIG bytes it
        applies (``dpd-workerd --status`` does not check those again).
        OSError propagates: the old file is kept and the caller retries."""
        head = _dumps({
            "version": STATUS_VERSION, "worker_pid": worker_pid,
            "config": config_path, "config_crc32": config_crc32,
            "boot_id": self.boot_id,
            "updated": updated, "spawner": spawner, "tree": tree})
        views, records, held, texts = [], [], {}, {}
        for name in sorted(procs):
            proc = procs[name]
            text = self._texts.get(name)
            if text is None or text[0] is not proc \
                    or text[1] != proc.revision:
                key = _dumps(name) + ":"
                text = (proc, proc.revision, key + _dumps(view_of(proc)),
                        key + _dumps(Record.of(proc).to_json()))
            texts[name] = text
            views.append(text[2])
            records.append(text[3])
            if proc.held:
                # Stopped by the operator, with the definition it applies to.
                held[name] = proc.spec.fingerprint()
        document = "%s,\"procs\":{%s},%s\"records\":{%s},\"held\":%s}" % (
            head[:-1], ",".join(views), VIEW_END, ",".join(records),
            _dumps(held))
        atomic_write(self.status_path, document, mode=0o644, fsync=False,
                     follow_symlinks=False)
        self._texts = texts
        if self.journal_fd is not None:
            os.ftruncate(self.journal_fd, 0)

    def recall(self, log):
        """{name: Record} of this boot: the status file's records, then the
        journal's newer starts over them."""
        records = {}
        document = read_document(self.status_path)
        if document is None:
            if os.path.exists(self.status_path):
                log.warning("%s is unreadable: cannot prove which running "
                            "processes it lists are ours", self.status_path)
        elif document.get("boot_id") != self.boot_id:
            log.info("%s is from another boot: nothing to adopt",
                     self.status_path)
        else:
            # Version 1 kept the record fields in "procs".
            saved = document.get("records", document["procs"])
            if isinstance(saved, dict):
                for name, obj in saved.items():
                    record = Record.from_json(obj)
                    if record is not None:
                        records[name] = record
        for name, entry in read_journal(self.journal_path):
            if entry.get("boot_id") != self.boot_id:
                continue
            record = records.get(name) or Record()
            merged = Record.from_json(dict(record.to_json(), **entry))
            if entry.get("daemon"):
                # The journalled pid is a daemon's launcher.
                merged.launcher = (merged.pid, merged.ticks) \
                    if merged.ticks is not None else None
                merged.pid = merged.ticks = None
            else:
                merged.launcher = None
            records[name] = merged
        return records

    def holds(self):
        """{name: fingerprint} of the processes the operator stopped (a
        hold ends when the definition changes), from the status file."""
        document = read_document(self.status_path) or {}
        held = document.get("held")
        if not isinstance(held, dict):
            return {}
        return {name: fp for name, fp in held.items() if isinstance(fp, str)}


def read_journal(path):
    """The journal's entries as (name, dict with pid and ticks), skipping a
    torn or foreign line."""
    try:
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        entry = _parse_journal_line(line)
        if entry is not None and isinstance(entry.get("name"), str):
            entries.append((entry["name"], entry))
    return entries


def _parse_journal_line(line):
    try:
        if line.startswith(b"{"):  # version 1: pid and ticks inside
            entry = json.loads(line.decode("utf-8"))
        else:
            pid, ticks, text = line.split(b" ", 2)
            entry = json.loads(text.decode("utf-8"))
            if isinstance(entry, dict):
                entry["pid"] = int(pid)
                entry["ticks"] = None if ticks == b"-" else int(ticks)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _read_status(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_STATUS_BYTES + 1)
    except OSError:
        return None


def _parse_status(data, path):
    try:
        document = jsonin.loads(data, path, ConfigError, MAX_STATUS_BYTES)
    except ConfigError:
        return None
    if not isinstance(document, dict) \
            or not isinstance(document.get("procs"), dict):
        return None
    return document


def read_document(path):
    """The whole status document, or None when missing or unreadable."""
    data = _read_status(path)
    return None if data is None else _parse_status(data, path)


VIEW_KEYS = ("version", "worker_pid", "config", "config_crc32", "updated",
             "spawner", "tree", "procs")


def read_view(path):
    """What the worker shows others: the status document without the
    adoption records; None when missing or unreadable. The first line
    alone is parsed when it holds the view (half the bytes: the records
    are as long as the views), else the whole."""
    data = _read_status(path)
    if data is None:
        return None
    end = data.find(VIEW_END.encode())
    document = None
    if 0 < end and data[end - 1:end] == b"," \
            and len(data) <= MAX_STATUS_BYTES:
        document = _parse_status(data[:end - 1] + b"}", path)
    if document is None:
        document = _parse_status(data, path)
        if document is None:
            return None
    return {key: document.get(key) for key in VIEW_KEYS}
