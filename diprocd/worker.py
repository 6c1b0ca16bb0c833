"""dpd-workerd's own decisions: what to start, stop and restart.

The worker runs on the shared ``loop.Loop``: signals (TERM/INT: exit, HUP:
re-read CONFIG and retry failed, given-up and backing-off processes, CHLD:
reap), the CONFIG watch, and a pidfd per supervised process (``pidwatch``);
each turn of the loop waits at most until the nearest process deadline (a
stop's SIGKILL, a daemon's pid file, the end of a ``backoff``). Around that
it decides:

- ``reload``/``apply``: the diff of CONFIG by name (stop the removed, start
  the added, restart the changed, leave the unchanged alone);
- ``run_schedulers``: start waiting processes whose dependencies run (and
  passed their health check: ``Process.ready``), as one overlapped burst;
  stop removed ones, dependents first;
- ``self.health`` (``health.HealthChecks``): the health checks of the
  running processes, told of each state change (``_changed``);
- at start, ``adoption.adopt`` what the last worker left running.

The I/O a Process asks for is ``ops.NodeOps``; what the worker remembers
across restarts, and shows others, is its ``ledger.Ledger``.
"""

import collections
import os
import signal
import time

from diprocd import adoption, cgroup, dpdexec, kernel, spawn
from diprocd.commands import WorkerCommands
from diprocd.config import load_worker_config
from diprocd.control import ControlServer, control_path
from diprocd.daemon import carry_over, flush_logs
from diprocd.errors import ConfigError, SpawnError
from diprocd.health import HealthChecks
from diprocd.ledger import Ledger
from diprocd.loop import Loop
from diprocd.ops import NodeOps
from diprocd.pidwatch import PidWatch
from diprocd.process import CANCELLING, STOPPING, WAITING, Process

# How often a status file write that failed (disk full...) is retried.
STATUS_RETRY = 1.0
# The status file is written STATUS_DELAY after a change, so that a burst
# of changes is one write and a restart's program reaches exec before the
# worker spends a core on the file; and at most every STATUS_INTERVAL,
# whatever the rate of changes (it is read by people and the client, the
# journal is what adoption needs meanwhile: ledger.py).
STATUS_DELAY = 0.02
STATUS_INTERVAL = 0.1
# Starts in flight at once in a burst (each holds a pipe until exec).
LAUNCH_BATCH = 64


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class Worker:
    """The node supervisor. ``Worker(config, log).run()`` returns the exit
    code; see the module docstring. ``ops`` and ``clock`` are replaceable:
    the unit tests drive the diff and the scheduling with fakes."""

    # Its log is held for a turn of the loop (daemon.setup_logging): the
    # lines of an exit are written once its restart is under way.
    BUFFERED_LOG = True

    def __init__(self, config, log, clock=None, ops=None, loop=None,
                 pid_lock=None):
        self.config = config
        self.pid_lock = pid_lock
        self.log = log
        self.clock = clock or SystemClock()
        self.loop = loop or Loop(clock=self.clock.monotonic, log=log)
        self.ledger = Ledger(config.pid_file, kernel.boot_id())
        self.pidwatch = PidWatch(self.loop, self._on_exit, log)
        self.ops = ops or NodeOps(self.ledger, self.pidwatch, log,
                                  self._changed, self._stopped,
                                  log_dir=config.log_dir)
        self.health = HealthChecks(self.loop, self.pidwatch, self.clock, log,
                                   self.changed)
        self.procs = {}
        # How process trees are grouped: detected in run().
        self.tree = cgroup.Tree(cgroup.PROCESS_GROUP)
        self._status_dirty = True
        self._status_written = float("-inf")  # monotonic time of the last
        self._schedule_dirty = True
        self._status_error = None
        self.control = None
        self._config_present = True
        self.spawner = None  # dpdexec.Spawner, found by run()

    # --- life cycle ---------------------------------------------------------
    def run(self):
        self.ops.program_nofile = self.health.program_nofile = \
            kernel.raise_open_files_limit()
        self.spawner = dpdexec.find()
        self.ops.helper = self.spawner.path
        self.ops.server = self.spawner.server(self.log)
        self.tree = self.ops.tree = cgroup.detect(self.config.pid_file)
        self._say_tree()
        if not kernel.become_subreaper():
            self.log.warning("cannot become a child subreaper: exit statuses "
                             "of processes will show as unknown")
        loop = self.loop
        loop.handle_signals({signal.SIGTERM: self._exit_signal,
                             signal.SIGINT: self._exit_signal,
                             signal.SIGHUP: self._hangup,
                             signal.SIGCHLD: lambda _: self.pidwatch.reap()})
        watch = loop.watch_file(self.config.path,
                                lambda: self.reload(force=False))
        if watch.fileno() is None:
            self.log.info("no inotify: checking %s every %.2fs",
                          self.config.path, watch.poll_interval)
        loop.every_turn(self._turn)
        # A child records itself before its exec: wait for those a killed
        # worker left in flight (a child stuck before exec for longer than
        # EXEC_TIMEOUT would have been killed by that worker).
        try:
            complete = self.ledger.open(wait=spawn.EXEC_TIMEOUT)
        except OSError as err:  # a symlink planted there, a read-only disk
            self.log.error("cannot open the journal %s: %s",
                           self.ledger.journal_path, err.strerror or err)
            loop.close()
            return 1
        if not complete:
            self.log.warning("programs the last worker was starting still "
                             "have not reached exec after %ds: those may "
                             "be started twice", spawn.EXEC_TIMEOUT)
        self.log.info("dpd-workerd started, pid %d, %d processes in %s",
                      os.getpid(), len(self.config.procs), self.config.path)
        self.log.info("starting processes with %s", self.spawner.describe())
        try:
            self.procs.update(adoption.adopt(
                self.ledger.recall(self.log), self.config.procs, self.ops,
                self.clock, self.log))
            self.ops.sweep_trees(self.procs)
            self.apply(self.config.procs)
            self._restore_holds(self.ledger.holds())
            self._open_control()
            if self.config.on_disk_differs():  # written while we started
                self.reload(force=False)
            loop.run()
        finally:
            self._flush_status(force=True)
            if self.control is not None:
                self.control.close()
            self.health.close()
            if self.ops.server is not None:
                self.ops.server.close()
            self.pidwatch.close()
            loop.close()
            self.ledger.close()
            self.ops.tidy_trees()
        self.log.info("dpd-workerd exiting; %d processes left running",
                      sum(1 for p in self.procs.values() if p.alive))
        flush_logs()
        return 0

    def _say_tree(self):
        tree = self.tree
        if not tree.enabled:
            self.log.warning("no writable cgroup hierarchy (%s): a stop "
                             "signals the process group; a descendant that "
                             "leaves it (setsid) survives, and memory_max is "
                             "not enforced", tree.why)
            return
        self.log.info("a cgroup per process: %s in %s; memory_max: %s",
                      tree.mechanism, tree.base,
                      tree.memory or "not enforced (%s)" % tree.why)

    def _turn(self, now):
        """Before each wait: passed deadlines, starts and stops that became
        possible, the status file. Returns the next process deadline."""
        for proc in list(self.procs.values()):
            if proc.deadline is not None:
                proc.tick(now)
        self.run_schedulers()
        self._flush_status()
        flush_logs()
        deadlines = [p.next_deadline() for p in self.procs.values()
                     if p.deadline is not None]
        return min(deadlines) if deadlines else None

    def _open_control(self):
        """The control socket beside the pid file (dpdctl --worker); the
        worker runs without it if the folder does not allow it."""
        control = ControlServer(self.loop, control_path(self.config.pid_file),
                                WorkerCommands(self), self.log)
        try:
            control.open()
        except OSError as err:
            self.log.warning("no control socket at %s: %s", control.path,
                             err.strerror or err)
            return
        self.control = control
        self._serve_config_owner()

    def _serve_config_owner(self):
        """The control socket serves the owner of CONFIG too: the user its
        client runs as, which relays the operator's commands (whoever can
        write CONFIG commands this worker anyway: control.py). Looked up
        after each good load of CONFIG: a chown alone counts from the next
        change of the file, or SIGHUP."""
        if self.control is None:
            return
        try:
            owner = os.stat(self.config.path).st_uid
        except OSError:
            return  # gone meanwhile: the owner served stays until it is back
        self.control.serve_config_owner(owner)

    def _restore_holds(self, holds):
        """Processes the operator stopped stay stopped across a worker
        restart, unless their definition changed meanwhile."""
        for name, fingerprint in holds.items():
            proc = self.procs.get(name)
            if proc is not None and proc.spec.fingerprint() == fingerprint:
                self.log.info("%s: stopped by the operator: kept stopped",
                              name)
                proc.hold()

    def changed(self):
        """Something was asked (dpdctl): schedule and write the status."""
        self._status_dirty = True
        self._schedule_dirty = True

    def _exit_signal(self, signum):
        self.log.info("received %s: exiting, processes keep running",
                      signal.Signals(signum).name)
        self.loop.stop()

    def _hangup(self, _signum):
        self.log.info("received SIGHUP: re-reading %s", self.config.path)
        self.reload(force=True)

    # --- configuration ------------------------------------------------------
    def reload(self, force):
        """Re-read CONFIG; an invalid file changes nothing. ``force`` (SIGHUP)
        also gives failed, given-up and backing-off processes a new chance
        (``Process.retry``)."""
        present = os.path.exists(self.config.path)
        if present != self._config_present:
            self._config_present = present
            if present:
                self.log.info("%s is back", self.config.path)
            else:
                self.log.warning("%s is gone: every process keeps running as "
                                 "it is; the file is applied when it comes "
                                 "back", self.config.path)
        if not force and not self.config.on_disk_differs():
            return
        try:
            config = load_worker_config(self.config.path,
                                        self.config.owners)
        except ConfigError as err:
            for problem in err.problems:
                self.log.error(problem)
            self.log.error("%s is invalid: keeping the last good configuration "
                           "and every process as it is", self.config.path)
            if force:
                self._retry_all()
            return
        for warning in config.warnings:
            self.log.warning(warning)
        config = carry_over(self.config, config, self.pid_lock, self.log)
        if config.pid_file != self.config.pid_file and not self._move_ledger(
                config.pid_file):
            config = self._keep_pid_file(config)
        self.config = config
        self.ops.log_dir = config.log_dir
        self._serve_config_owner()
        if force:
            self._retry_all()
        self.apply(config.procs)

    def _retry_all(self):
        for proc in self.procs.values():
            if not proc.removing:
                proc.retry()
        self._schedule_dirty = True

    def apply(self, specs):
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
                proc = self.procs[name] = Process(spec, self.ops, self.clock)
                proc.want()
                added += 1
            elif proc.removing:
                proc.removing = False
                if proc.state in (STOPPING, CANCELLING):
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

    # --- scheduling -----------------------------------------------------------
    def run_schedulers(self):
        """Start waiting processes whose dependencies run; stop removed ones,
        dependents first."""
        while self._schedule_dirty:
            self._schedule_dirty = False
            for proc in list(self.procs.values()):
                if proc.removing and proc.state not in (STOPPING, CANCELLING) \
                        and not self._has_live_dependent(proc):
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
            proc, handle = in_flight.popleft()
            try:
                outcomes.append((proc, self.ops.wait_launch(handle), None))
            except SpawnError as err:
                outcomes.append((proc, None, err))

        try:
            for proc in ready:
                if not proc.begin_start():
                    continue
                try:
                    in_flight.append((proc, self.ops.launch(proc.spec)))
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
        """Running, and ready when it has a check."""
        dep = self.procs.get(name)
        return dep is not None and dep.ready

    def _has_live_dependent(self, proc):
        return any(other.removing and other.alive
                   and proc.spec.name in other.spec.depends
                   for other in self.procs.values() if other is not proc)

    # --- what Processes tell the worker -------------------------------------------
    def _changed(self, proc):
        self.health.follow(proc)
        self.changed()

    def _stopped(self, proc):
        self.ops.end_tree(proc.spec)
        if proc.removing:
            self.ops.remove_pid_file(proc.spec)
            if self.procs.get(proc.spec.name) is proc:
                del self.procs[proc.spec.name]
            self.log.info("%s: removed", proc.spec.name)
        self._status_dirty = True

    def _on_exit(self, proc, pid, kind, how):
        if kind == "check":  # proc: a health.ExecProbe
            proc.exited(how)
        elif kind == "launcher":
            if proc.launcher_pid == pid:
                proc.on_launcher_exit(how)
        elif proc.pid == pid:
            proc.on_exit(self.ops.exit_words(proc.spec, how))

    def _move_ledger(self, pid_file):
        """The status file and the journal follow the pid file, so that the
        client (which finds them from CONFIG) and the next worker find
        them: the whole state is written at the new place, then the old
        files go."""
        old = self.ledger
        new = Ledger(pid_file, old.boot_id)
        try:
            new.open()
            new.write(os.getpid(), self.config.path, self.clock.time(),
                      self.procs, self.tree.describe(),
                      self._spawner_name())
        except OSError as err:
            new.close()
            self.log.error("cannot write the status file beside the new pid "
                           "file %s: %s; the status stays at %s", pid_file,
                           err.strerror or err, old.status_path)
            return False
        self.ledger = self.ops.ledger = new
        old.close()
        for path in (old.status_path, old.journal_path):
            try:
                os.unlink(path)
            except OSError:
                pass
        self.log.info("status file now %s", new.status_path)
        if self.control is not None:
            self.control.close()
            self.control = None
        self.config = self.config.replace(pid_file=pid_file)
        self._open_control()
        return True

    def _keep_pid_file(self, config):
        """The files could not follow the pid file: the lock goes back, so
        that the pid file, the status and the journal stay together (the
        next reload tries again)."""
        try:
            self.pid_lock.move(self.config.pid_file)
        except Exception as err:  # AlreadyRunning, OSError: logged, kept
            self.log.error("cannot take back the pid file %s: %s",
                           self.config.pid_file, err)
            return config
        return config.replace(pid_file=self.config.pid_file)

    # --- status ----------------------------------------------------------------
    def _flush_status(self, force=False):
        """Write the status file now (``force``), or schedule its write
        when something changed (see STATUS_DELAY)."""
        if force:
            self.loop.cancel("status")
            self._write_status()
        elif self._status_dirty and self.loop.pending("status") is None:
            due = max(self.clock.monotonic() + STATUS_DELAY,
                      self._status_written + STATUS_INTERVAL)
            self.loop.call_at("status", due, self._write_status)

    def _write_status(self):
        self._status_dirty = False
        self._status_written = self.clock.monotonic()
        try:
            self.ledger.write(os.getpid(), self.config.path, self.clock.time(),
                              self.procs, self.tree.describe(),
                              self._spawner_name(), self.config.crc32)
            if self._status_error:
                self.log.info("status file %s written again",
                              self.ledger.status_path)
            self._status_error = None
        except OSError as err:
            message = str(err.strerror or err)
            if message != self._status_error:
                self.log.error("cannot write status file %s: %s (will retry)",
                               self.ledger.status_path, message)
            self._status_error = message
            self.loop.call_later("status retry", STATUS_RETRY,
                                 self._retry_status)

    def _spawner_name(self):
        return self.spawner.describe() if self.spawner is not None else None

    def _retry_status(self):
        self._status_dirty = True
