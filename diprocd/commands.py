"""What an operator may ask a worker (``dpdctl``), answered on the worker's
loop through its control socket (``control.py``).

- ``status``: every process's view (as in the status file), the worker's
  pid, its CONFIG and whether that file is valid right now;
- ``restart NAME...``: stop, then start the same definition now; other
  processes untouched; the start does not count against the
  5-starts-a-minute rule (that rule counts crashes);
- ``stop NAME...``: stopped and kept stopped ("stopped by operator", kept
  across worker restarts in the status file) until ``start`` or until its
  definition changes;
- ``start NAME...``: the operator's stop is over;
- ``reload``: as SIGHUP;
- ``tail NAME``: the last lines of its ``logs`` (at most TAIL_BYTES).

Every reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``
naming what is wrong (an unknown process, no logs).
"""

import errno
import os
import stat

from diprocd.config import load_worker_config
from diprocd.errors import ConfigError
from diprocd.ledger import view_of

TAIL_BYTES = 256 * 1024


class WorkerCommands:
    def __init__(self, worker):
        self.worker = worker

    def __call__(self, request):
        cmd = request["cmd"]
        names = request.get("names", [])
        if cmd in ("restart", "stop", "start", "tail"):
            if not names:
                return _error("%s: name at least one process" % cmd)
            unknown = [n for n in names if n not in self.worker.procs
                       or self.worker.procs[n].removing]
            if unknown:
                return _error("no process named %s on this node"
                              % ", ".join('"%s"' % n for n in unknown))
        return getattr(self, "_" + cmd)(names, request)

    def _status(self, names, request):
        worker = self.worker
        config_error = None
        if worker.config.on_disk_differs():  # parsed only when it changed
            try:
                load_worker_config(worker.config.path, worker.config.owners)
            except ConfigError as err:
                config_error = err.problems[0]
        return {"ok": True, "worker_pid": os.getpid(),
                "config": worker.config.path, "config_error": config_error,
                "tree": worker.tree.describe(),
                "spawner": worker._spawner_name(),
                "procs": {name: view_of(proc)
                          for name, proc in sorted(worker.procs.items())}}

    def _restart(self, names, request):
        old = {}
        for name in names:
            proc = self.worker.procs[name]
            old[name] = proc.pid
            proc.restart_now()
        self.worker.changed()
        return {"ok": True, "old_pids": old}

    def _stop(self, names, request):
        return self._each(names, "hold")

    def _start(self, names, request):
        return self._each(names, "release")

    def _each(self, names, method):
        for name in names:
            getattr(self.worker.procs[name], method)()
        self.worker.changed()
        return {"ok": True}

    def _reload(self, names, request):
        self.worker.reload(force=True)
        return {"ok": True}

    def _tail(self, names, request):
        spec = self.worker.procs[names[0]].spec
        if spec.logs == "/dev/null":
            return _error('process "%s" has no "logs" (its output goes to '
                          "/dev/null)" % spec.name)
        try:
            data, size = _read_tail(spec.logs)
        except OSError as err:
            return _error("%s: %s" % (spec.logs, err.strerror or err))
        lines = data.decode("utf-8", "replace").splitlines()
        if size > TAIL_BYTES and lines:
            lines = lines[1:]  # the first may be cut
        return {"ok": True, "logs": spec.logs,
                "lines": lines[-request.get("lines", 20):]}


def _read_tail(path):
    """The last TAIL_BYTES of a regular file and its size. Opened without
    blocking and refused unless regular: a FIFO as ``logs`` must not hold
    the worker's loop."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        start = max(0, info.st_size - TAIL_BYTES)
        return os.pread(fd, TAIL_BYTES, start), info.st_size
    finally:
        os.close(fd)


def _error(message):
    return {"ok": False, "error": message}
