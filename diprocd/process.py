"""The per-process state machine of the worker.

A ``Process`` owns one spec's state: its named state, pid, start history
(the 5-starts-a-minute rule), its restart policy (``backoff.Backoff``: the
delay before a restart, giving up) and its deadline (SIGKILL, a daemon's
pid file, the end of a backoff). It does no I/O of its own:
starting, signalling, pid files and watching pids go through ``ops`` (a
``ProcessOps``: ``ops.NodeOps`` in the worker, a fake in unit tests) and time
comes from ``clock`` (a fake in unit tests). Every state change goes through
``_set_state``, which checks the one transition table below.

A process that dies or fails to start, with ``restart``, is started again
once its delay has passed (``backoff``: at once by default). Never more
than 5 starts within 60 s: a start beyond that waits, in ``backoff``, until
the rule allows it (``StartLimiter.free_at``); it is never given up for
it. Only ``give_up_after`` gives a process up (``given-up``), until its
definition changes, SIGHUP, ``dpdctl restart`` or a worker restart.

A process with a ``check`` is ``ready`` (and shown ``running``) once its
check first passed (``health`` runs the checks and keeps ``health``);
``check_failed`` ends it so that its exit takes the path of any death.
"""

import collections
import itertools
import logging
import signal

from diprocd.backoff import Backoff
from diprocd.errors import SpawnError

log = logging.getLogger("dpd-workerd")

# --- the states, named plainly ----------------------------------------------
STOPPED = "stopped"      # not running and not wanted (yet): new, or stopped
WAITING = "waiting"      # wanted, waiting for its dependencies to run
BACKOFF = "backoff"      # wanted, waiting for its restart delay (deadline)
STARTING = "starting"    # a daemon launched; waiting for its own pid file
RUNNING = "running"      # (shown "starting" until a ``check`` first passes)
STOPPING = "stopping"    # stop signal sent; SIGKILL at the deadline
CANCELLING = "cancelling"  # a daemon stopped while starting: its pid file
                           # is awaited (bounded), then that pid is stopped
EXITED = "exited"        # died with restart false: stays down
FAILED = "failed"        # could not be started, restart false: stays down
GIVEN_UP = "given-up"    # give_up_after failures: down until retried

STATES = (STOPPED, WAITING, BACKOFF, STARTING, RUNNING, STOPPING, CANCELLING,
          EXITED, FAILED, GIVEN_UP)

TRANSITIONS = {
    # BACKOFF, EXITED: an adopted pid that died while being watched.
    STOPPED: {WAITING, STARTING, RUNNING, FAILED, GIVEN_UP, BACKOFF, EXITED},
    WAITING: {WAITING, STARTING, RUNNING, FAILED, GIVEN_UP, STOPPED, BACKOFF},
    BACKOFF: {WAITING, STOPPED},
    STARTING: {RUNNING, CANCELLING, WAITING, EXITED, FAILED, GIVEN_UP,
               BACKOFF},
    RUNNING: {RUNNING, STARTING, STOPPING, WAITING, EXITED, FAILED, GIVEN_UP,
              BACKOFF},
    STOPPING: {STOPPED},
    CANCELLING: {STOPPING, STOPPED},
    EXITED: {WAITING, STOPPED},
    FAILED: {WAITING, STOPPED},
    GIVEN_UP: {WAITING, STOPPED},
}

# The seed's rule: never more than START_LIMIT starts within START_WINDOW s.
START_LIMIT = 5
START_WINDOW = 60.0
# How long a daemon (``daemon: true``) has to write its own pid file.
DAEMON_PID_TIMEOUT = 10.0
DAEMON_PID_POLL = 0.02


class InvalidTransition(Exception):
    pass


class ProcessOps:
    """What a Process asks of the world; every method is a stub here.
    ``ops.NodeOps`` does it for real; unit tests pass a fake."""

    def launch(self, spec):
        """Begin starting ``spec``; return a handle for ``wait_launch``.
        Raise SpawnError for what fails before the fork."""
        raise NotImplementedError

    def wait_launch(self, handle):
        """The pid once the program runs; raise SpawnError otherwise."""
        raise NotImplementedError

    def start_ticks(self, pid, zombie_ok=False):
        """The kernel start time of ``pid``, or None when it is gone."""
        raise NotImplementedError

    def kill(self, pid, signum):
        """Signal ``pid``'s group (or ``pid``); False when it is gone."""
        raise NotImplementedError

    def watch(self, proc, pid, kind):
        """Report the end of ``pid`` ("main" or "launcher") to ``proc``."""
        raise NotImplementedError

    def unwatch(self, pid):
        raise NotImplementedError

    def write_pid_file(self, spec, pid):
        raise NotImplementedError

    def remove_pid_file(self, spec, naming=None):
        """Remove ``spec``'s pid file; with ``naming``, only while it names
        that pid."""
        raise NotImplementedError

    def read_daemon_pid(self, spec, not_before=None):
        """(pid, ticks) of the live pid in a daemon's own pid file, started
        no earlier than ``not_before``; or None."""
        raise NotImplementedError

    def changed(self, proc):
        """Notification: ``proc``'s state changed."""
        raise NotImplementedError

    def stopped(self, proc):
        """Notification: ``proc`` stopped for good (or for a removal)."""
        raise NotImplementedError

    # The whole tree of a process (``cgroup``), beyond its pid: what
    # ``ops.NodeOps`` does where a cgroup hierarchy is writable. By default
    # there is none.
    def end_tree(self, spec):
        """``spec``'s process is stopped: end what is left of its tree."""

    def exit_words(self, spec, how):
        """``how`` the main pid of ``spec`` ended, said more exactly where
        the tree knows more (killed for ``memory_max``)."""
        return how


class StartLimiter:
    """Remembers start times; allows a start while fewer than ``limit``
    happened within the last ``window`` seconds."""

    def __init__(self, limit=START_LIMIT, window=START_WINDOW):
        self.limit = limit
        self.window = window
        self.starts = collections.deque()

    def _forget_old(self, now):
        # The same sum as free_at's: a start at free_at(t) is allowed.
        while self.starts and self.starts[0] + self.window <= now:
            self.starts.popleft()

    def allow(self, now):
        self._forget_old(now)
        return len(self.starts) < self.limit

    def free_at(self, when):
        """The earliest time, from ``when`` on, at which a start is
        allowed (``when`` itself when it is); forgets nothing."""
        recent = [t for t in self.starts if t + self.window > when]
        if len(recent) < self.limit:
            return when
        return recent[len(recent) - self.limit] + self.window

    def record(self, now):
        self.starts.append(now)

    def reset(self):
        self.starts.clear()


# Revisions of processes: each attribute set takes the next.
_REVISIONS = itertools.count(1)


class Process:
    """One supervised process (see the module docstring)."""

    # Moves at every set of an attribute, here or in the process's Health
    # (``touch``): the ledger encodes again only the processes whose
    # revision moved since its last status write.
    revision = 0

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        object.__setattr__(self, "revision", next(_REVISIONS))

    def touch(self):
        """What this process shows changed outside it (its Health)."""
        object.__setattr__(self, "revision", next(_REVISIONS))

    def __init__(self, spec, ops, clock):
        self.spec = spec
        self.ops = ops
        self.clock = clock
        self.state = STOPPED
        self.pid = None
        self.ticks = None          # kernel start time of pid
        self.launcher_pid = None   # daemon: the program we exec'd, which forks
        self.launcher_ticks = None  # its start time: an older pid is stale
        self.started_at = None     # wall clock, for status
        self.since = clock.time()  # wall clock of the last state change
        self.starts = 0
        self.last_exit = None
        self.error = None
        self.adopted = False
        self.own_child = False     # exit status available (our descendant)
        self.limiter = StartLimiter()
        self.backoff = Backoff()
        self.run_since = None      # monotonic: when it last started running
        self.next_start = None     # wall clock of the end of a backoff
        self.last_failure = None   # what made it back off: error or exit
        self.deadline = None       # monotonic: SIGKILL, daemon pid wait, or
                                   # the end of a backoff
        self.next_spec = None      # definition to start once stopped
        self.removing = False      # stop for good (removed from CONFIG)
        self.held = False          # stopped by the operator (dpdctl stop)
        self._free_start = False   # an operator's restart: not counted
        self.health = None         # health.Health of the checks, if any
        self.unhealthy = None      # why check_failed is ending it

    # --- the one place states change --------------------------------------
    def _set_state(self, state):
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition("%s: %s -> %s" % (self.spec.name,
                                                      self.state, state))
        if state != self.state:
            log.debug("%s: %s -> %s", self.spec.name, self.state, state)
            if self.state == BACKOFF:  # whatever ends it: the wait is over
                self.deadline = self.next_start = None
        self.state = state
        self.since = self.clock.time()
        self.ops.changed(self)

    @property
    def alive(self):
        """A live pid is being supervised (running, starting or stopping)."""
        return self.state in (RUNNING, STARTING, STOPPING, CANCELLING)

    @property
    def ready(self):
        """Running and, with a ``check``, passed it once since its start
        (or adoption): what ``depends`` waits for."""
        if self.state != RUNNING:
            return False
        health = self.health
        return self.spec.check is None or (
            health is not None and health.pid == self.pid and health.passed)

    @property
    def shown_state(self):
        """The state the status shows: a process with a check is
        "starting" until it is ready."""
        if self.state == RUNNING and not self.ready:
            return STARTING
        return self.state

    @property
    def as_desired(self):
        if self.removing or self.held:
            return False
        if self.state == RUNNING:
            return self.ready
        return self.state == EXITED and self.last_exit == "exit status 0"

    # --- wanting to run ----------------------------------------------------
    def want(self):
        """Ask to run: the worker starts it once its dependencies run."""
        if self.held:
            return
        if self.state in (STOPPED, EXITED, FAILED, GIVEN_UP):
            self._set_state(WAITING)

    def start(self):
        """Start now (the worker calls this when dependencies are met)."""
        if not self.begin_start():
            return
        try:
            pid = self.ops.wait_launch(self.ops.launch(self.spec))
        except SpawnError as err:
            self.start_failed(err)
            return
        self.started(pid)

    # start() in three steps, for the worker's overlapped burst of starts.
    def begin_start(self):
        """Apply the start limit: False (and BACKOFF until the rule allows a
        start) when 5 starts already happened within 60 s; else count this
        start and return True."""
        now = self.clock.monotonic()
        if self.state == BACKOFF:
            return False  # its deadline (tick) makes it WAITING
        if self._free_start:
            # The operator asked for this start: the rule counts crashes.
            self._free_start = False
            self.starts += 1
            self.adopted = False
            return True
        if not self.limiter.allow(now):
            # A restart was timed for it (_restart_later); this is a start
            # the operator released (dpdctl start) within the window.
            self._set_pid(None)
            self._limited(now, self.limiter.free_at(now))
            return False
        self.limiter.record(now)
        self.starts += 1
        self.adopted = False
        return True

    def start_failed(self, err):
        """The start counted by begin_start failed before exec."""
        self.error = str(err)
        self.last_exit = None
        log.error("%s: cannot start: %s", self.spec.name, err)
        self._set_pid(None)
        # With restart, a failed start counts against the limit like a
        # death, and as a quick failure.
        if self.spec.restart:
            self._restart_later(None)
        else:
            self._set_state(FAILED)

    def started(self, pid):
        """The program runs as ``pid`` (a daemon: its launcher does)."""
        self.error = None
        self.started_at = self.clock.time()
        self.run_since = self.clock.monotonic()
        self.own_child = True
        if self.spec.daemon:
            self.launcher_pid = pid
            # It may have forked and exited already: a zombie of ours.
            self.launcher_ticks = self.ops.start_ticks(pid, zombie_ok=True)
            self._set_pid(None)
            self.deadline = self.clock.monotonic() + DAEMON_PID_TIMEOUT
            self._set_state(STARTING)
            self.ops.watch(self, pid, "launcher")
        else:
            self._set_pid(pid)
            self._set_state(RUNNING)
        log.info("%s: started, pid %s", self.spec.name, pid)

    def adopt_starting(self, launcher_pid, launcher_ticks):
        """A daemon a previous worker launched whose pid file had not come
        yet: wait for it (bounded) instead of launching a second one."""
        self.adopted = True
        self.own_child = False
        self.run_since = self.clock.monotonic()
        self.launcher_pid = launcher_pid
        self.launcher_ticks = launcher_ticks
        self.deadline = self.clock.monotonic() + DAEMON_PID_TIMEOUT
        self._set_state(STARTING)
        if launcher_pid is not None:
            self.ops.watch(self, launcher_pid, "launcher")

    def adopt(self, pid, ticks):
        """Supervise a process a previous worker started (checked by the
        caller: same boot, same kernel start time)."""
        self.adopted = True
        self.own_child = False
        # Its run before is not known here: its time counts from now.
        self.run_since = self.clock.monotonic()
        self._set_pid(pid, ticks)
        if self.pid is None:
            return  # it died meanwhile: on_exit took it on
        self._set_state(RUNNING)

    def _set_pid(self, pid, ticks=None):
        old = self.pid
        self.pid = pid
        self.ticks = ticks if pid is None or ticks else self.ops.start_ticks(
            pid)
        if pid == old:
            return
        if old is not None:
            self.ops.unwatch(old)
        if pid is not None:
            self.ops.watch(self, pid, "main")
            if self.spec.write_pid:
                # Adopted ones too: the last worker may have been killed
                # after the program's journal line, before its pid file.
                self.ops.write_pid_file(self.spec, pid)

    def pending_launcher(self):
        """(pid, ticks) of a daemon's launcher while its own pid is not
        known yet (the ledger keeps it for adoption), else None."""
        if self.state in (STARTING, CANCELLING) and self.pid is None \
                and self.launcher_ticks:
            return (self.launcher_pid, self.launcher_ticks)
        return None

    # --- events -----------------------------------------------------------
    def on_exit(self, how):
        """The supervised pid is gone; ``how`` describes its end."""
        if self.unhealthy:
            how = "%s, ended because %s" % (how, self.unhealthy)
            self.unhealthy = None
            if self.state == RUNNING:
                self.deadline = None
        self.last_exit = how
        name = self.spec.name
        self._set_pid(None)
        if self.state in (STOPPING, CANCELLING):
            self._finish_stop(how)
            return
        log.warning("%s: exited (%s)", name, how)
        if self.spec.write_pid:
            self.ops.remove_pid_file(self.spec)
        if self.spec.restart:
            self._restart_later(self.clock.monotonic() - self.run_since
                                if self.run_since is not None else None)
        else:
            self._set_state(EXITED)

    def _finish_stop(self, how):
        log.info("%s: stopped (%s)", self.spec.name, how)
        self.deadline = None
        self._set_pid(None)
        self._set_state(STOPPED)
        if self.next_spec is not None and not self.removing:
            # The stopped definition's pid file names a dead pid; the new
            # one may have another (or none of the worker's writing).
            self.ops.remove_pid_file(self.spec)
            self.spec, self.next_spec = self.next_spec, None
            self.error = None
            if self.held:  # the operator stopped it meanwhile: not yet
                self.ops.stopped(self)
                return
            self._set_state(WAITING)
        else:
            self.ops.stopped(self)

    def on_launcher_exit(self, how):
        """``daemon: true``: the program we exec'd returned (it forked)."""
        self.launcher_pid = None
        if not self.own_child and how.startswith("status unknown"):
            how = "exit status 0"  # adopted: not ours to reap; wait for the pid file
        if self.state == CANCELLING:
            if how == "exit status 0" and self._stop_found_daemon():
                return
            if how != "exit status 0" or self.deadline is None:
                self._finish_stop(how)
            return  # else wait (bounded) for its pid file, then stop it
        if self.state != STARTING:
            return
        if how != "exit status 0":
            self.error = "daemon launcher ended (%s) before its pid file" % how
            self._fail_start()
        else:
            self._poll_daemon_pid()

    def tick(self, now):
        """Handle a passed deadline: end a backoff, SIGKILL a stop that
        lasted too long, or look for a starting daemon's pid file."""
        if self.state == BACKOFF:
            if self.deadline is not None and now >= self.deadline:
                self._set_state(WAITING)  # the worker starts it this turn
            return
        if self.state == CANCELLING:
            if self._stop_found_daemon():
                return
            if self.deadline is not None and now >= self.deadline:
                if self.launcher_pid:
                    self.deadline = None  # its exit ends the stop
                    self.ops.kill(self.launcher_pid, signal.SIGKILL)
                else:
                    self._finish_stop("no daemon pid appeared in %s"
                                      % self.spec.pid_file)
            return
        if self.deadline is None or now < self.deadline:
            if self.state == STARTING:
                self._poll_daemon_pid()
            return
        if self.state == RUNNING and not self.unhealthy:
            self.deadline = None  # nothing is due: never a busy loop
            return
        if self.state == STOPPING or (self.state == RUNNING
                                      and self.unhealthy):
            log.warning("%s: still alive %.1fs after %s: SIGKILL",
                        self.spec.name, self.spec.stop_timeout,
                        signal.Signals(self.spec.stop_signal).name)
            self.deadline = None
            self.ops.kill(self.pid, signal.SIGKILL)
        elif self.state == STARTING:
            if not self._poll_daemon_pid():
                self.error = ("daemon did not write a live pid in %s within "
                              "%ds" % (self.spec.pid_file, DAEMON_PID_TIMEOUT))
                if self.launcher_pid:
                    self.ops.kill(self.launcher_pid, signal.SIGKILL)
                self._fail_start()

    def next_deadline(self):
        if self.deadline is not None and self.state in (STARTING, CANCELLING):
            return min(self.deadline,
                       self.clock.monotonic() + DAEMON_PID_POLL)
        return self.deadline

    def _found_daemon_pid(self):
        """The live pid the daemon's own pid file names (not older than its
        launcher), now supervised; or None."""
        found = self.ops.read_daemon_pid(self.spec, self.launcher_ticks)
        if not found:
            return None
        pid, ticks = found
        if pid == self.launcher_pid:
            self.launcher_pid = None  # it did not fork: one pid, one watch
        self._set_pid(pid, ticks)
        return pid

    def _poll_daemon_pid(self):
        pid = self._found_daemon_pid()
        if pid is None:
            return False
        if self.pid != pid:
            return True  # it died as it was found: on_exit took it on
        self.deadline = None  # the pid file's wait is over
        self._set_state(RUNNING)
        log.info("%s: daemon running, pid %d", self.spec.name, pid)
        return True

    def _stop_found_daemon(self):
        """Stopping a daemon that was launching: once its pid file names a
        live pid, send it the stop signal."""
        pid = self._found_daemon_pid()
        if pid is None:
            return False
        if self.pid != pid:
            return True  # it died as it was found: on_exit ended the stop
        self.deadline = self.clock.monotonic() + self.spec.stop_timeout
        log.info("%s: stopping daemon pid %d with %s", self.spec.name, pid,
                 signal.Signals(self.spec.stop_signal).name)
        self._set_state(STOPPING)
        if not self.ops.kill(pid, self.spec.stop_signal):
            self.on_exit("gone before the stop signal")
        return True

    def _fail_start(self):
        log.error("%s: %s", self.spec.name, self.error)
        self.deadline = None
        self._set_pid(None)
        if self.spec.restart:
            self._restart_later(None)
        else:
            self._set_state(FAILED)

    # --- the restart policy (backoff.py: the arithmetic) -----------------
    def _restart_later(self, ran_for):
        """It died after ``ran_for`` s (None: its start failed) and is to
        restart: give it up (give_up_after), or wait for its delay and for
        the start limit (BACKOFF), or restart at once (WAITING)."""
        policy = self.backoff
        policy.ended(self.spec, ran_for)
        cause = self.last_failure = self.error or self.last_exit
        if policy.exhausted(self.spec):
            self.error = ("failed %d times in a row%s: given up until the "
                          "definition changes, SIGHUP, dpdctl restart or a "
                          "worker restart" % (
                              policy.failures,
                              " (last: %s)" % cause if cause else ""))
            log.error("%s: %s", self.spec.name, self.error)
            self._set_state(GIVEN_UP)
            return
        now = self.clock.monotonic()
        due = now + policy.delay(self.spec)
        if self.limiter.free_at(due) > due:
            self._limited(now, None)
            return
        if due <= now:
            self._set_state(WAITING)
            return
        log.info("%s: restart in %.1fs", self.spec.name, due - now)
        self._back_off(now, due)

    def _limited(self, now, due):
        """The start limit holds back the next start: wait (BACKOFF) until
        it allows one and, from now on, for at least the floor delay."""
        policy = self.backoff
        policy.limited = True
        if due is None:
            due = now + policy.delay(self.spec)
        due = max(due, self.limiter.free_at(due))
        cause = self.last_failure
        self.error = "started %d times within %ds%s" % (
            self.limiter.limit, self.limiter.window,
            " (last: %s)" % cause if cause else "")
        log.warning("%s: %s: next start in %.1fs", self.spec.name,
                    self.error, due - now)
        self._back_off(now, due)

    def _back_off(self, now, due):
        """Wait in BACKOFF until ``due`` (monotonic): tick starts it."""
        if self.state != BACKOFF:
            self._set_state(BACKOFF)
        self.deadline = due
        self.next_start = self.clock.time() + (due - now)

    def check_failed(self, reason):
        """Its health check failed ``failures`` times in a row: end it
        (stop signal, SIGKILL after ``stop_timeout``) as if it had died,
        so that its exit takes ``on_exit``'s path: the restart policy and
        the start limit, like any death."""
        if self.state != RUNNING or self.pid is None or self.unhealthy:
            return
        self.unhealthy = reason
        log.warning("%s: %s: ending pid %d with %s", self.spec.name, reason,
                    self.pid, signal.Signals(self.spec.stop_signal).name)
        self.deadline = self.clock.monotonic() + self.spec.stop_timeout
        if not self.ops.kill(self.pid, self.spec.stop_signal):
            self.on_exit("gone before the stop signal")

    # --- stopping and changing --------------------------------------------
    def stop(self):
        """Send the stop signal; SIGKILL after ``stop_timeout``. A process
        that is not alive goes straight to STOPPED."""
        if self.state in (STOPPING, CANCELLING):
            return
        if self.state == STARTING:
            # A daemon still launching: let it write its pid file (bounded),
            # then stop that pid; killing the launcher could orphan it.
            log.info("%s: stopping a daemon that is still starting",
                     self.spec.name)
            self.deadline = self.clock.monotonic() + DAEMON_PID_TIMEOUT
            self._set_state(CANCELLING)
            self._stop_found_daemon()
            return
        if not self.alive or self.pid is None:
            if self.state != STOPPED:
                self._set_state(STOPPED)
            self.ops.stopped(self)
            return
        log.info("%s: stopping pid %d with %s", self.spec.name, self.pid,
                 signal.Signals(self.spec.stop_signal).name)
        self.deadline = self.clock.monotonic() + self.spec.stop_timeout
        self._set_state(STOPPING)
        if not self.ops.kill(self.pid, self.spec.stop_signal):
            self.on_exit("gone before the stop signal")

    # --- what the operator asks (dpdctl) ----------------------------------
    def hold(self):
        """``dpdctl stop``: stop it and keep it stopped until ``release``
        or until its definition changes."""
        self.held = True
        if self.state in (WAITING, BACKOFF):
            self._set_state(STOPPED)
            self.ops.stopped(self)  # what is left in its cgroup goes too
        elif self.state not in (STOPPING, CANCELLING):
            self.stop()
        # Stopping already: a definition it was to restart with (next_spec)
        # is kept, started once the operator's stop is over.

    def release(self):
        """``dpdctl start``: the operator's stop is over."""
        self.held = False
        if self.state in (STOPPING, CANCELLING):
            self.next_spec = self.next_spec or self.spec  # start once stopped
        else:
            self.want()

    def restart_now(self):
        """``dpdctl restart``: stop, then start the same definition, now;
        the start does not count against the 5-starts-a-minute rule."""
        self.held = False
        self._free_start = True
        self.backoff.reset()
        if self.alive:
            if self.state not in (STOPPING, CANCELLING):
                self.next_spec = self.spec
                self.stop()
            else:
                self.next_spec = self.next_spec or self.spec
        else:
            self._wait_again()

    def _wait_again(self):
        """Not alive: wait to be started (again), whatever it was."""
        self.error = None
        if self.state != WAITING:
            if self.state != STOPPED:
                self._set_state(STOPPED)
            self._set_state(WAITING)

    def replace(self, spec):
        """Run ``spec`` instead: restart with it, or just adopt it when the
        process is not running. A new definition ends an operator's stop."""
        self.held = False
        self.limiter.reset()
        self.backoff.reset()
        if self.alive:
            self.next_spec = spec
            self.stop()
        else:
            self.spec = spec
            self._wait_again()

    def retry(self):
        """SIGHUP: a given-up, failed or backing-off process gets a fresh
        start limit and restart delay, and a start now."""
        self.limiter.reset()
        self.backoff.reset()
        if self.state in (GIVEN_UP, FAILED, BACKOFF):
            self.error = None
            self._set_state(WAITING)
