"""``NodeOps``: the worker's real ``process.ProcessOps``.

It does the I/O a Process asks for: launching through ``spawn`` with the
ledger's journal slot, the worker's dpd-exec (``helper``, or None) and
the worker's ``log_dir`` (made when missing: root's, mode 0750),
signalling and start times through ``kernel``,
watching pids through ``pidwatch``, and the pid files of processes. The two
notifications (``changed``, ``stopped``) go to the worker's callbacks.

Where ``tree`` (a ``cgroup.Tree``) has a hierarchy, each process is started
in its own cgroup, a SIGKILL of its main pid (the stop deadline) ends its
whole cgroup, and what is left in it once it is stopped is killed and the
folder removed (``end_tree``); ``sweep_trees`` does the same at the
worker's start for every folder no adopted process owns.
"""

import os
import signal

from diprocd import cgroup, kernel, spawn
from diprocd.daemon import read_pid
from diprocd.errors import SpawnError
from diprocd.fileio import atomic_write
from diprocd.process import ProcessOps


class NodeOps(ProcessOps):
    def __init__(self, ledger, pidwatch, log, on_changed, on_stopped,
                 program_nofile=None, log_dir=None, tree=None):
        self.ledger = ledger
        self.log_dir = log_dir  # the worker's: the default logs' folder
        self.tree = tree or cgroup.Tree(cgroup.PROCESS_GROUP)
        self._tree_of_pid = {}  # main pid -> its process's name (in its cgroup)
        self._oom_kills = {}  # name -> its cgroup's OOM kills at its start
        self.pidwatch = pidwatch
        self.log = log
        self.program_nofile = program_nofile
        self.helper = None  # dpd-exec's path (dpdexec.find), or None
        self.server = None  # a dpdexec.Server of it, or None
        self.changed = on_changed
        self.stopped = on_stopped

    def launch(self, spec):
        try:
            if spec.daemon and spec.pid_file:
                # The daemon's pid file from an earlier run would be
                # mistaken for the new one.
                _unlink(spec.pid_file)
            if self.log_dir and os.path.dirname(spec.logs) == self.log_dir:
                _make_folder(self.log_dir, LOG_DIR_MODE)
            folders, born_inside = self._prepare_tree(spec)
            return spawn.launch(spec, self.ledger.slot(spec),
                                self.program_nofile, folders, born_inside,
                                self.helper, self.server)
        except OSError as err:  # pid file, pipes, fork...: one start fails
            raise SpawnError("%s: %s" % (err.filename or "start",
                                         err.strerror or err))

    def _prepare_tree(self, spec):
        """(The cgroup folders ``spec``'s process joins, none without a
        hierarchy; whether it is born in the first): what its last run
        left there is killed first."""
        if spec.memory_max is not None and self.tree.memory is None:
            self.log.warning("%s: memory_max is not enforced here: %s",
                             spec.name, self.tree.why or "no memory cgroup")
        if not self.tree.enabled:
            return [], False
        left = self.tree.members(spec.name)
        try:
            folders, fresh = self.tree.prepare(spec.name, spec.memory_max,
                                               left)
        except OSError as err:
            raise SpawnError("cgroup: %s: %s" % (
                err.filename or self.tree.base, err.strerror or err))
        if left:
            self.log.warning("%s: %d processes left in its cgroup by its "
                             "last run: killed", spec.name, len(left))
        if spec.memory_max is not None:  # else no OOM kill to tell of
            self._oom_kills[spec.name] = self.tree.oom_kills(spec.name)
        else:
            self._oom_kills.pop(spec.name, None)
        return folders, fresh and self.tree.born_inside

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
        alive = kernel.signal_process(pid, signum)
        name = self._tree_of_pid.get(pid)
        if signum == signal.SIGKILL and name is not None:
            try:  # the whole tree, descendants that left the group too
                self.tree.kill(name)
            except OSError as err:
                self.log.error("%s: cannot kill its cgroup: %s", name,
                               err.strerror or err)
        return alive

    def watch(self, proc, pid, kind):
        if kind == "main" and self.tree.contains(proc.spec.name, pid):
            self._tree_of_pid[pid] = proc.spec.name
        self.pidwatch.watch(proc, pid, kind)

    def unwatch(self, pid):
        self._tree_of_pid.pop(pid, None)
        self.pidwatch.unwatch(pid)

    def end_tree(self, spec):
        left = self.tree.members(spec.name)
        if left:
            self.log.info("%s: %d processes left in its cgroup after its "
                          "main process: killed", spec.name, len(left))
        if not self.tree.remove(spec.name):
            self.log.warning("%s: its cgroup is not empty yet: removed at "
                             "its next start or the worker's", spec.name)
        self._oom_kills.pop(spec.name, None)

    def exit_words(self, spec, how):
        before = self._oom_kills.get(spec.name)
        if before is None:
            return how
        after = self.tree.oom_kills(spec.name)
        if after is None or after <= before:
            return how
        self._oom_kills[spec.name] = after
        return "%s (out of memory: memory_max %d bytes)" % (how,
                                                             spec.memory_max)

    def sweep_trees(self, procs):
        """At the worker's start, after adoption: each cgroup folder of
        this worker that no live adopted process of ``procs`` owns holds
        what a dead main process left: killed, and the folder removed."""
        for name in self.tree.names():
            proc = procs.get(name)
            members = self.tree.members(name)
            if proc is not None and proc.alive:
                if proc.pid is not None and proc.pid not in members:
                    self.log.warning("%s: adopted pid %d is not in its "
                                     "cgroup: its descendants are not "
                                     "reached", name, proc.pid)
                elif proc.pid is not None:
                    self.log.info("%s: adopted with its cgroup (%d "
                                  "processes)", name, len(members))
                continue
            if members:
                self.log.warning("%s: %d processes in its cgroup, their main "
                                 "process gone: killed", name, len(members))
            self.tree.remove(name)

    def tidy_trees(self):
        """At the worker's exit: the empty folders go (processes keep
        running in theirs)."""
        self.tree.tidy()

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


# The default logs' folder: the output of processes may hold secrets.
LOG_DIR_MODE = 0o750


def _make_folder(path, mode):
    """``path`` made (its parents too) when missing, ``mode`` whatever the
    umask; an existing one is left as it is."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(os.path.dirname(path) or "/", 0o755, exist_ok=True)
        old_umask = os.umask(0)  # the mode as given, no chmod: a link
        try:                     # swapped in meanwhile is not followed
            os.mkdir(path, mode)
        finally:
            os.umask(old_umask)
    except FileExistsError:
        pass
    except OSError as err:
        raise SpawnError("logs: cannot make the folder %s: %s"
                         % (path, err.strerror or err))


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
