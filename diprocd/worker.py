"""dpd-workerd's event loop.

One selector waits on: a pidfd per supervised process (exit detection in
milliseconds, no polling), the signal wake-up pipe (TERM/INT: exit, HUP:
re-read CONFIG, CHLD: reap), and the CONFIG watch (inotify). Timers (stop
deadlines, a daemon's pid file wait, the debounce of a CONFIG change) become
the select timeout, so an idle worker sleeps in the kernel.

The worker is also the ``ops`` of every Process: it does the I/O that the
state machine asks for (spawn, signals, pid files, watching pids) and keeps
the status file and the journal (each new process's own record, written
before its exec), which are its memory across restarts for adoption.
"""

import collections
import os
import select
import selectors
import signal
import time

from diprocd import spawn as spawn_mod
from diprocd import status as status_mod
from diprocd.config import load_worker_config
from diprocd.daemon import SignalPipe
from diprocd.errors import ConfigError, SpawnError
from diprocd.fileio import atomic_write
from diprocd.process import RUNNING, STOPPING, WAITING, Process
from diprocd.spec import ProcessSpec
from diprocd.watch import FileWatch

import simplejson as json

# Let a burst of writes to CONFIG settle before reading it.
RELOAD_DEBOUNCE = 0.01
# How often a status file write that failed (disk full...) is retried.
STATUS_RETRY = 1.0
# Starts in flight at once in a burst (each holds a pipe until exec).
LAUNCH_BATCH = 64
# Without pidfd: how often each supervised pid is checked.
PID_POLL_INTERVAL = 0.5


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class Worker:
    """The node supervisor. ``Worker(config, log).run()`` returns the exit
    code; see the module docstring."""

    def __init__(self, config, log, clock=None):
        self.config = config
        self.log = log
        self.clock = clock or SystemClock()
        self.status_path = status_mod.status_file_path(config.pid_file)
        self.journal_path = status_mod.journal_file_path(config.pid_file)
        self._journal_fd = None
        self.procs = {}
        self.selector = None
        self._pidfds = {}          # fd -> (process, pid, kind)
        self._fd_of_pid = {}       # pid -> fd
        self._polled = {}          # pid -> (process, kind, ticks), no pidfd
        self._reaped = {}          # pid -> how it ended (reaped by SIGCHLD)
        self._status_dirty = True
        self._schedule_dirty = True
        self._reload_at = None
        self._next_poll = None
        self._stop = False
        self._status_error = None
        self._status_retry_at = None
        self._loaded_bytes = None
        self._boot_id = spawn_mod.boot_id()

    # --- life cycle ---------------------------------------------------------
    def run(self):
        self.selector = selectors.DefaultSelector()
        signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                              signal.SIGCHLD))
        self.selector.register(signals.fileno(), selectors.EVENT_READ,
                               "signals")
        spawn_mod.raise_open_files_limit()
        if not spawn_mod.become_subreaper():
            self.log.warning("cannot become a child subreaper: exit statuses "
                             "of processes will show as unknown")
        self.watch = FileWatch(self.config.path)
        if self.watch.fileno() is not None:
            self.selector.register(self.watch.fileno(), selectors.EVENT_READ,
                                   "config")
        else:
            self.log.info("no inotify: checking %s every %.2fs",
                          self.config.path, self.watch.poll_interval)
        self._loaded_bytes = _read_bytes(self.config.path)
        self._journal_fd = os.open(
            self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
            | os.O_CLOEXEC, 0o644)
        self.log.info("dpd-workerd started, pid %d, %d processes in %s",
                      os.getpid(), len(self.config.procs), self.config.path)
        try:
            self._adopt_previous(self.config.procs)
            self._apply(self.config.procs)
            while not self._stop:
                self._step(signals)
        finally:
            self._flush_status(force=True)
            self.watch.close()
            for fd in list(self._pidfds):
                os.close(fd)
            self.selector.close()
            signals.close()
            os.close(self._journal_fd)
        self.log.info("dpd-workerd exiting; %d processes left running",
                      sum(1 for p in self.procs.values() if p.alive))
        return 0

    def _step(self, signals):
        self._run_schedulers()
        self._flush_status()
        timeout = self._timeout()
        for key, _ in self.selector.select(timeout):
            if key.data == "signals":
                self._handle_signals(signals.drain())
            elif key.data == "config":
                if self.watch.read_events():
                    self._reload_at = self.clock.monotonic() + RELOAD_DEBOUNCE
            else:
                self._on_pidfd(key.fd)
        now = self.clock.monotonic()
        if self.watch.poll_interval and self.watch.changed():
            self._reload_at = now + RELOAD_DEBOUNCE
        if self._reload_at is not None and now >= self._reload_at:
            self._reload_at = None
            self.reload(force=False)
        if self._polled and now >= (self._next_poll or 0):
            self._poll_pids()
        for proc in list(self.procs.values()):
            if proc.deadline is not None:
                proc.tick(now)

    def _timeout(self):
        now = self.clock.monotonic()
        deadlines = [p.next_deadline() for p in self.procs.values()
                     if p.deadline is not None]
        if self._reload_at is not None:
            deadlines.append(self._reload_at)
        if self._status_error:
            deadlines.append(self._status_retry_at)
        if self.watch.poll_interval:
            deadlines.append(now + self.watch.poll_interval)
        if self._polled:
            self._next_poll = self._next_poll or now + PID_POLL_INTERVAL
            deadlines.append(self._next_poll)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _handle_signals(self, received):
        for signum in received:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.info("received %s: exiting, processes keep running",
                              signal.Signals(signum).name)
                self._stop = True
            elif signum == signal.SIGHUP:
                self.log.info("received SIGHUP: re-reading %s",
                              self.config.path)
                self.reload(force=True)
            elif signum == signal.SIGCHLD:
                self._reap_children()

    # --- configuration ------------------------------------------------------
    def reload(self, force):
        """Re-read CONFIG; an invalid file changes nothing. ``force`` (SIGHUP)
        also gives failed and given-up processes a new chance."""
        data = _read_bytes(self.config.path)
        if not force and data is not None and data == self._loaded_bytes:
            return
        try:
            config = load_worker_config(self.config.path)
        except ConfigError as err:
            for problem in err.problems:
                self.log.error(problem)
            self.log.error("%s is invalid: keeping the last good configuration "
                           "and every process as it is", self.config.path)
            if force:
                self._retry_all()
            return
        self._loaded_bytes = data
        for warning in config.warnings:
            self.log.warning(warning)
        if config.pid_file != self.config.pid_file:
            self.log.warning("pid_file changed to %s: takes effect at the "
                             "next worker start", config.pid_file)
            config = config._replace(pid_file=self.config.pid_file)
        self.config = config
        if force:
            self._retry_all()
        self._apply(config.procs)

    def _retry_all(self):
        for proc in self.procs.values():
            if not proc.removing:
                proc.retry()
        self._schedule_dirty = True

    def _apply(self, specs):
        """Diff by name: stop the removed, start the added, restart the
        changed, leave the unchanged alone."""
        wanted = {spec.name: spec for spec in specs}
        added = changed = removed = 0
        for name, proc in self.procs.items():
            if name not in wanted and not proc.removing:
                proc.removing = True
                proc.next_spec = None
                removed += 1
        for name, spec in wanted.items():
            proc = self.procs.get(name)
            if proc is None:
                proc = self.procs[name] = Process(spec, self, self.clock)
                proc.want()
                added += 1
            elif proc.removing:
                proc.removing = False
                if proc.state == STOPPING:
                    proc.next_spec = spec
                else:
                    proc.replace(spec) if spec != proc.spec else proc.want()
                changed += 1
            elif spec != (proc.next_spec or proc.spec):
                self.log.info("%s: definition changed: restarting", name)
                proc.replace(spec)
                changed += 1
        if added or changed or removed:
            self.log.info("configuration applied: %d added, %d changed, "
                          "%d removed, %d unchanged", added, changed, removed,
                          len(wanted) - added - changed)
        self._schedule_dirty = True

    def _run_schedulers(self):
        """Start waiting processes whose dependencies run; stop removed ones,
        dependents first."""
        while self._schedule_dirty:
            self._schedule_dirty = False
            for proc in list(self.procs.values()):
                if proc.removing:
                    if proc.state != STOPPING and not self._has_live_dependent(
                            proc):
                        proc.stop()
            self._start_waiting()

    def _start_waiting(self):
        """Start every waiting process whose dependencies run, as one
        overlapped burst: up to LAUNCH_BATCH launches are in flight while the
        worker forks the next, so the programs reach exec on the other cores
        meanwhile. States, pid files and the status file follow once the
        whole burst runs: each program journals its own pid before exec, and
        one that dies meanwhile stays a zombie of ours (the worker is its
        subreaper), so neither a record nor an exit is lost."""
        ready = [proc for proc in self.procs.values()
                 if proc.state == WAITING and not proc.removing
                 and all(self._dependency_running(dep)
                         for dep in proc.spec.depends)]
        in_flight = collections.deque()
        outcomes = []

        def collect_oldest():
            proc, launch = in_flight.popleft()
            try:
                outcomes.append((proc, self._wait_launch(launch), None))
            except SpawnError as err:
                outcomes.append((proc, None, err))

        try:
            for proc in ready:
                if not proc.begin_start():
                    continue
                try:
                    in_flight.append((proc, self._launch(proc.spec)))
                except SpawnError as err:
                    outcomes.append((proc, None, err))
                if len(in_flight) >= LAUNCH_BATCH:
                    collect_oldest()
        finally:
            # Whatever happened, no launch is left in flight or unrecorded.
            while in_flight:
                collect_oldest()
            for proc, pid, err in outcomes:
                if err is not None:
                    proc.start_failed(err)
                else:
                    proc.started(pid)

    def _dependency_running(self, name):
        dep = self.procs.get(name)
        return dep is not None and dep.state == RUNNING

    def _has_live_dependent(self, proc):
        return any(other.removing and other.alive
                   and proc.spec.name in other.spec.depends
                   for other in self.procs.values() if other is not proc)

    # --- adoption -------------------------------------------------------------
    def _adopt_previous(self, specs):
        """Take over the processes a previous worker left running, proven ours
        by the same boot and the same kernel start time of their pid."""
        records = {}
        previous = status_mod.read_status(self.status_path)
        if previous is None:
            if os.path.exists(self.status_path):
                self.log.warning("%s is unreadable: cannot prove which running "
                                 "processes it lists are ours", self.status_path)
        elif previous.get("boot_id") != self._boot_id:
            self.log.info("%s is from another boot: nothing to adopt",
                          self.status_path)
        else:
            records.update(previous["procs"])
        # Starts recorded after the last status write (the worker may have
        # been killed in the middle of a burst): newer, so they win.
        for entry in status_mod.read_journal(self.journal_path):
            if entry.get("boot_id") == self._boot_id:
                name = entry.get("name")
                merged = dict(records.get(name) or {})
                merged.update(entry)
                if entry.get("daemon"):
                    # The journalled pid is a daemon's launcher.
                    merged.update(state="starting", pid=None, ticks=None,
                                  launcher=[entry.get("pid"), entry.get("ticks")])
                else:
                    merged.update(state="running", launcher=None)
                records[name] = merged
        wanted = {spec.name: spec for spec in specs}
        for name, record in records.items():
            if not isinstance(record, dict):
                continue
            if record.get("state") in ("starting", "stopping") and record.get(
                    "pid") is None and self._adopt_starting(
                    name, record, wanted):
                continue
            pid, ticks = record.get("pid"), record.get("ticks")
            if not isinstance(pid, int) or not isinstance(ticks, int):
                continue
            if spawn_mod.start_ticks(pid) != ticks:
                self.log.info("%s: pid %d from the last run is gone or is "
                              "another program now: not adopted", name, pid)
                continue
            spec = wanted.get(name) or _spec_from_record(name, record)
            proc = Process(spec, self, self.clock)
            proc.starts = record.get("starts") or 0
            proc.started_at = record.get("started_at")
            self.procs[name] = proc
            proc.adopt(pid, ticks)
            if name not in wanted:
                self.log.info("%s: adopted pid %d, removed from CONFIG while "
                              "the worker was down: stopping it", name, pid)
                proc.removing = True
            elif record.get("fingerprint") != spec.fingerprint():
                self.log.info("%s: adopted pid %d, definition changed while "
                              "the worker was down: restarting it", name, pid)
                proc.spec = _spec_from_record(name, record)
                proc.replace(spec)
            else:
                self.log.info("%s: adopted pid %d", name, pid)

    def _adopt_starting(self, name, record, wanted):
        """A daemon the last worker launched and was still waiting for: wait
        for its pid file again rather than launching a second one."""
        launcher = record.get("launcher")
        if not (isinstance(launcher, list) and len(launcher) == 2
                and isinstance(launcher[1], int)):
            return False
        launcher_pid, launcher_ticks = launcher
        if not isinstance(launcher_pid, int):
            launcher_pid = None  # it had already exited (it forked)
        spec = wanted.get(name)
        changed = spec is None or record.get("fingerprint") != spec.fingerprint()
        proc = Process(_spec_from_record(name, record) if changed else spec,
                       self, self.clock)
        proc.starts = record.get("starts") or 0
        proc.started_at = record.get("started_at")
        self.procs[name] = proc
        alive = launcher_pid is not None and spawn_mod.start_ticks(
            launcher_pid) == launcher_ticks
        proc.adopt_starting(launcher_pid if alive else None, launcher_ticks)
        self.log.info("%s: the last worker was starting this daemon: waiting "
                      "for its pid file", name)
        if spec is None:
            proc.removing = True
        elif changed:
            proc.replace(spec)
        return True

    # --- ops: what the state machine asks for ---------------------------------
    def spawn(self, spec):
        return self._wait_launch(self._launch(spec))

    def _launch(self, spec):
        try:
            return self._launch_unchecked(spec)
        except OSError as err:  # pid file, pipes, fork...: one start fails
            raise SpawnError("%s: %s" % (err.filename or "start",
                                         err.strerror or err))

    def _launch_unchecked(self, spec):
        if spec.daemon and spec.pid_file:
            # The daemon's pid file from an earlier run would be mistaken
            # for the new one.
            _unlink(spec.pid_file)
        if spec.logs != "/dev/null":
            try:
                os.makedirs(os.path.dirname(spec.logs), exist_ok=True)
            except OSError:
                pass  # the open in the child reports the real problem
        return spawn_mod.launch(spec, self._journal_fd,
                                self._journal_entry(spec))

    def _journal_entry(self, spec):
        """The start of the journal line the new process completes with its
        pid and start time (see spawn.launch)."""
        text = json.dumps({
            "boot_id": self._boot_id, "name": spec.name, "daemon": spec.daemon,
            "fingerprint": spec.fingerprint(), "pid_file": spec.pid_file,
            "write_pid": spec.write_pid,
            "stop": [spec.stop_signal, spec.stop_timeout]})
        return text[:-1].encode("utf-8") + b", "

    def _wait_launch(self, launch):
        try:
            return launch.wait()
        except SpawnError as err:
            pid = getattr(err, "pid", None)
            if pid:
                self._reaped.pop(pid, None)
            raise

    def ticks(self, pid):
        return spawn_mod.start_ticks(pid)

    def launcher_ticks(self, pid):
        # It may have forked and exited already: a zombie of ours (subreaper).
        return spawn_mod.start_ticks(pid, zombie_ok=True)

    def kill(self, pid, signum):
        return spawn_mod.signal_process(pid, signum)

    def changed(self, proc):
        self._status_dirty = True
        self._schedule_dirty = True

    def pid_changed(self, proc, old_pid):
        if old_pid is not None:
            self._unwatch(old_pid)
        if proc.pid is not None:
            self._watch(proc, proc.pid, "main")
            if proc.spec.write_pid and not proc.adopted:
                self._write_pid_file(proc.spec, proc.pid)

    def watch_launcher(self, proc, pid):
        self._watch(proc, pid, "launcher")

    def read_daemon_pid(self, spec, not_before=None):
        """The live pid in a daemon's own pid file; with ``not_before`` (its
        launcher's start time) only a process started since then, not a
        stale file naming an older one."""
        try:
            with open(spec.pid_file) as handle:
                pid = int(handle.read(64).split()[0])
        except (OSError, ValueError, IndexError):
            return None
        ticks = spawn_mod.start_ticks(pid)
        if not ticks or (not_before is not None and ticks < not_before):
            return None
        return pid, ticks

    def remove_pid_file(self, spec):
        _unlink(spec.pid_file)

    def stopped(self, proc):
        if proc.removing:
            if proc.spec.pid_file:
                _unlink(proc.spec.pid_file)
            if self.procs.get(proc.spec.name) is proc:
                del self.procs[proc.spec.name]
            self.log.info("%s: removed", proc.spec.name)
        self._status_dirty = True

    def _write_pid_file(self, spec, pid):
        try:
            os.makedirs(os.path.dirname(spec.pid_file), exist_ok=True)
            atomic_write(spec.pid_file, b"%d\n" % pid, mode=0o644, fsync=False,
                         follow_symlinks=False)
        except OSError as err:
            self.log.error("%s: cannot write pid file %s: %s", spec.name,
                           spec.pid_file, err.strerror or err)

    # --- watching pids ---------------------------------------------------------
    def _watch(self, proc, pid, kind):
        fd = self._fd_of_pid.get(pid)
        if fd is not None:
            # A daemon whose pid file names its launcher: one pid, one pidfd.
            self._pidfds[fd] = (proc, pid, kind)
            return
        try:
            fd = spawn_mod.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone and reaped by someone else.
            self._deliver_exit(proc, pid, kind, self._reaped.pop(
                pid, "status unknown"))
            return
        if fd is None:
            self._polled[pid] = (proc, kind, spawn_mod.start_ticks(pid))
            return
        self._pidfds[fd] = (proc, pid, kind)
        self._fd_of_pid[pid] = fd
        self.selector.register(fd, selectors.EVENT_READ, "pid")

    def _unwatch(self, pid):
        self._polled.pop(pid, None)
        fd = self._fd_of_pid.pop(pid, None)
        if fd is not None:
            self.selector.unregister(fd)
            del self._pidfds[fd]
            os.close(fd)

    def _on_pidfd(self, fd):
        entry = self._pidfds.get(fd)
        if entry is None or not _readable(fd):
            # Unwatched earlier in this batch of events (its fd number may
            # even be a new process's pidfd by now): not an exit.
            return
        proc, pid, kind = entry
        how = None
        try:
            result = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
            if result is not None:
                how = spawn_mod.describe_waitid(result)
        except ChildProcessError:
            pass  # not our child (adopted), or already reaped on SIGCHLD
        if how is None:
            how = self._reaped.pop(pid, None) or (
                "status unknown (not the worker's child)")
        self._unwatch(pid)
        self._deliver_exit(proc, pid, kind, how)

    def _deliver_exit(self, proc, pid, kind, how):
        if kind == "launcher":
            if proc.launcher_pid == pid:
                proc.on_launcher_exit(how)
        elif proc.pid == pid:
            proc.on_exit(how)

    def _poll_pids(self):
        self._next_poll = self.clock.monotonic() + PID_POLL_INTERVAL
        for pid, (proc, kind, ticks) in list(self._polled.items()):
            if spawn_mod.start_ticks(pid) != ticks:
                self._polled.pop(pid, None)
                self._deliver_exit(proc, pid, kind, self._reaped.pop(
                    pid, "status unknown"))

    def _reap_children(self):
        """Reap every dead child: ours keep their status for the pidfd
        handler; orphans re-parented to us (we are a subreaper) just go."""
        watched = set(self._fd_of_pid) | set(self._polled)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in watched:
                self._reaped[pid] = spawn_mod.describe_wait_status(status)

    # --- status ----------------------------------------------------------------
    def _flush_status(self, force=False):
        if not (self._status_dirty or force):
            return
        self._status_dirty = False
        document = {
            "version": status_mod.STATUS_VERSION,
            "worker_pid": os.getpid(),
            "config": self.config.path,
            "boot_id": self._boot_id,
            "updated": self.clock.time(),
            "procs": {name: proc.status()
                      for name, proc in sorted(self.procs.items())},
        }
        try:
            atomic_write(self.status_path, json.dumps(document, indent=1),
                         mode=0o644, fsync=False)
            if self._journal_fd is not None:
                os.ftruncate(self._journal_fd, 0)  # all in the status now
            if self._status_error:
                self.log.info("status file %s written again", self.status_path)
            self._status_error = None
        except OSError as err:
            message = str(err.strerror or err)
            if message != self._status_error:
                self.log.error("cannot write status file %s: %s (will retry)",
                               self.status_path, message)
            self._status_error = message
            self._status_dirty = True
            self._status_retry_at = self.clock.monotonic() + STATUS_RETRY


def _readable(fd):
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def _read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _spec_from_record(name, record):
    """A minimal spec to stop a process known only from the status file."""
    kwargs = {"name": name, "run": "/unknown"}
    if record.get("pid_file"):
        kwargs["pid_file"] = record["pid_file"]
    kwargs["write_pid"] = bool(record.get("write_pid", True))
    stop = record.get("stop")
    if isinstance(stop, list) and len(stop) == 2:
        kwargs["stop_signal"], kwargs["stop_timeout"] = int(stop[0]), float(stop[1])
    return ProcessSpec(**kwargs)
