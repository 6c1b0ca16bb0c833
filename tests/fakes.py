"""Fakes for the unit tests of pure logic: a clock and the I/O a Process
asks for (no fork, no signal, no sleep)."""

from diprocd.errors import SpawnError
from diprocd.process import ProcessOps


class FakeClock:
    """``now`` is the monotonic clock; the wall clock follows it, shifted by
    ``wall_jump`` (set it to jump the wall clock alone, as an NTP step or
    an operator's ``date -s`` does)."""

    def __init__(self):
        self.now = 1000.0
        self.wall_jump = 0.0

    def monotonic(self):
        return self.now

    def time(self):
        return 1.7e9 + self.now + self.wall_jump


class FakeOps(ProcessOps):
    """Records what a Process (or the worker) asks; pids count up from 101.
    ``fail_with`` fails every launch, ``fail_names`` those of some specs."""

    def __init__(self):
        self.next_pid = 100
        self.spawned = []
        self.fail_names = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.watched = {}
        self.signals = []
        self.fail_with = None
        self.daemon_pid = None
        self.removed_pid_files = []
        self.stopped_procs = []

    def launch(self, spec):
        if self.fail_with:
            raise SpawnError(self.fail_with)
        self.next_pid += 1
        self.spawned.append((spec, self.next_pid))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return spec, self.next_pid

    def wait_launch(self, handle):
        spec, pid = handle
        self.in_flight -= 1
        if spec.name in self.fail_names:
            raise SpawnError(self.fail_names[spec.name])
        return pid

    def start_ticks(self, pid, zombie_ok=False):
        return pid * 10

    def kill(self, pid, signum):
        self.signals.append((pid, signum))
        return True

    def changed(self, proc):
        pass

    def watch(self, proc, pid, kind):
        if pid in getattr(self, "dead_on_watch", ()):
            # As pidwatch does for a pid already gone: at once.
            proc.on_exit("exit status unknown (gone before it was watched)")
            return
        self.watched[pid] = (proc, kind)

    def unwatch(self, pid):
        self.watched.pop(pid, None)

    def write_pid_file(self, spec, pid):
        pass

    def read_daemon_pid(self, spec, not_before=None):
        return (self.daemon_pid, 1) if self.daemon_pid else None

    def remove_pid_file(self, spec, naming=None):
        self.removed_pid_files.append(spec.pid_file)

    def stopped(self, proc):
        self.stopped_procs.append(proc)
