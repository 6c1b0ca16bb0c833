"""``NodeOps``: the worker's real ``process.ProcessOps``.

It does the I/O a Process asks for: launching through ``spawn`` with the
ledger's journal slot and the worker's dpd-exec (``helper``, or None),
signalling and start times through ``kernel``,
watching pids through ``pidwatch``, and the pid files of processes. The two
notifications (``changed``, ``stopped``) go to the worker's callbacks.
"""

import os

from diprocd import kernel, spawn
from diprocd.daemon import read_pid
from diprocd.errors import SpawnError
from diprocd.fileio import atomic_write
from diprocd.process import ProcessOps


class NodeOps(ProcessOps):
    def __init__(self, ledger, pidwatch, log, on_changed, on_stopped,
                 program_nofile=None):
        self.ledger = ledger
        self.pidwatch = pidwatch
        self.log = log
        self.program_nofile = program_nofile
        self.helper = None  # dpd-exec's path (dpdexec.find), or None
        self.changed = on_changed
        self.stopped = on_stopped

    def launch(self, spec):
        try:
            if spec.daemon and spec.pid_file:
                # The daemon's pid file from an earlier run would be
                # mistaken for the new one.
                _unlink(spec.pid_file)
            return spawn.launch(spec, self.ledger.slot(spec),
                                self.program_nofile, self.helper)
        except OSError as err:  # pid file, pipes, fork...: one start fails
            raise SpawnError("%s: %s" % (err.filename or "start",
                                         err.strerror or err))

    def wait_launch(self, handle):
        try:
            return handle.wait()
        except SpawnError as err:
            pid = getattr(err, "pid", None)
            if pid:
                self.pidwatch.forget(pid)
            raise

    def start_ticks(self, pid, zombie_ok=False):
        return kernel.start_ticks(pid, zombie_ok)

    def kill(self, pid, signum):
        return kernel.signal_process(pid, signum)

    def watch(self, proc, pid, kind):
        self.pidwatch.watch(proc, pid, kind)

    def unwatch(self, pid):
        self.pidwatch.unwatch(pid)

    def write_pid_file(self, spec, pid):
        if not spec.pid_file:
            return  # a process known only from an old record
        if not os.path.islink(spec.pid_file) and read_pid(spec.pid_file) == pid:
            return  # it says so already (an adopted process's, as a rule)
        try:
            os.makedirs(os.path.dirname(spec.pid_file), exist_ok=True)
            atomic_write(spec.pid_file, b"%d\n" % pid, mode=0o644, fsync=False,
                         follow_symlinks=False)
        except OSError as err:
            self.log.error("%s: cannot write pid file %s: %s", spec.name,
                           spec.pid_file, err.strerror or err)

    def remove_pid_file(self, spec, naming=None):
        if spec.pid_file and (naming is None
                              or read_pid(spec.pid_file) == naming):
            _unlink(spec.pid_file)

    def read_daemon_pid(self, spec, not_before=None):
        pid = read_pid(spec.pid_file)
        if pid is None:
            return None
        ticks = kernel.start_ticks(pid)
        if not ticks or (not_before is not None and ticks < not_before):
            return None
        return pid, ticks


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
