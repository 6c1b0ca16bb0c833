"""The state machine and the 5-starts-a-minute rule, with a fake clock and
fake ops: no fork, no sleep. (The restart policy's delays: test_backoff.py.)"""

import signal

import pytest

from diprocd import ledger
from diprocd import process as P
from diprocd.spec import ProcessSpec
from fakes import FakeClock, FakeOps


def make(**fields):
    fields.setdefault("name", "p")
    fields.setdefault("run", "/bin/true")
    fields.setdefault("pid_file", "/run/p.pid")
    clock, ops = FakeClock(), FakeOps()
    return P.Process(ProcessSpec(**fields), ops, clock), ops, clock


def test_transition_table_is_enforced():
    proc, _, _ = make()
    with pytest.raises(P.InvalidTransition):
        proc._set_state(P.STOPPING)
    for state, targets in P.TRANSITIONS.items():
        assert state in P.STATES and targets <= set(P.STATES)


def test_start_and_restart_after_death():
    proc, ops, clock = make()
    proc.want()
    assert proc.state == P.WAITING
    proc.start()
    assert proc.state == P.RUNNING and proc.pid == 101 and proc.starts == 1
    proc.on_exit("killed by SIGKILL")
    assert proc.state == P.WAITING and proc.last_exit == "killed by SIGKILL"
    assert ops.removed_pid_files == ["/run/p.pid"]
    proc.start()
    assert proc.state == P.RUNNING and proc.pid == 102 and proc.starts == 2


def test_five_starts_a_minute_then_backoff_until_the_rule_allows_one():
    proc, ops, clock = make()
    proc.want()
    first = clock.now
    for _ in range(5):
        proc.start()
        assert proc.state == P.RUNNING
        clock.now += 1
        proc.on_exit("exit status 1")
    # The fifth death: the sixth start would break the rule; it waits.
    assert proc.state == P.BACKOFF and proc.pid is None
    assert proc.error == "started 5 times within 60s (last: exit status 1)"
    assert len(ops.spawned) == 5 and not proc.as_desired
    assert proc.deadline == proc.next_deadline() == first + 60
    assert proc.next_start == clock.time() + (first + 60 - clock.now)
    proc.start()  # not before its time
    assert proc.state == P.BACKOFF and len(ops.spawned) == 5
    clock.now = first + 59.9
    proc.tick(clock.now)
    assert proc.state == P.BACKOFF
    clock.now = first + 60
    proc.tick(clock.now)
    assert proc.state == P.WAITING and proc.deadline is None
    assert proc.next_start is None
    proc.start()
    assert proc.state == P.RUNNING and len(ops.spawned) == 6


def test_limit_is_a_sliding_window():
    limiter = P.StartLimiter(limit=5, window=60)
    for t in (0, 10, 20, 30, 40):
        assert limiter.free_at(t) == t
        assert limiter.allow(t)
        limiter.record(t)
    assert limiter.free_at(41) == 60 and limiter.free_at(65) == 65
    assert not limiter.allow(59.9)
    assert limiter.allow(60.0)  # the start at 0 left the window
    limiter.record(60.0)
    assert not limiter.allow(69.9)
    assert limiter.free_at(69.9) == 70 and limiter.free_at(200) == 200
    # A start at the time free_at gives is allowed, whatever the floats.
    limiter = P.StartLimiter(limit=1, window=60)
    limiter.record(1000.1)
    assert limiter.allow(limiter.free_at(1000.2))


def test_restart_false_stays_down():
    proc, ops, _ = make(restart=False)
    proc.want()
    proc.start()
    proc.on_exit("exit status 0")
    assert proc.state == P.EXITED and proc.as_desired
    proc.retry()
    assert proc.state == P.EXITED
    proc2, _, _ = make(restart=False)
    proc2.want()
    proc2.start()
    proc2.on_exit("exit status 3")
    assert proc2.state == P.EXITED and not proc2.as_desired


def test_spawn_error_is_visible():
    proc, ops, _ = make(restart=False)
    ops.fail_with = "exec /nope: No such file or directory"
    proc.want()
    proc.start()
    assert proc.state == P.FAILED
    assert proc.error == "exec /nope: No such file or directory"


def test_spawn_errors_count_against_the_limit():
    proc, ops, clock = make()
    ops.fail_with = "chroot /x: No such file or directory"
    proc.want()
    for _ in range(4):
        proc.start()
        assert proc.state == P.WAITING
    proc.start()
    assert proc.state == P.BACKOFF and len(ops.spawned) == 0
    assert proc.error == ("started 5 times within 60s (last: chroot /x: No "
                          "such file or directory)")


def test_stop_escalates_to_kill_at_the_deadline():
    proc, ops, clock = make(stop_signal=signal.SIGINT, stop_timeout=5)
    proc.want()
    proc.start()
    proc.stop()
    assert proc.state == P.STOPPING and ops.signals == [(101, signal.SIGINT)]
    clock.now += 4.9
    proc.tick(clock.now)
    assert ops.signals == [(101, signal.SIGINT)]
    clock.now += 0.2
    proc.tick(clock.now)
    assert ops.signals[-1] == (101, signal.SIGKILL)
    proc.on_exit("killed by SIGKILL")
    assert proc.state == P.STOPPED and ops.stopped_procs == [proc]


def test_replace_restarts_with_new_definition():
    proc, ops, clock = make()
    proc.want()
    proc.start()
    new_spec = ProcessSpec(name="p", run="/bin/sleep", pid_file="/run/p.pid")
    proc.replace(new_spec)
    assert proc.state == P.STOPPING and proc.spec.run == "/bin/true"
    proc.on_exit("killed by SIGTERM")
    assert proc.state == P.WAITING and proc.spec is new_spec
    proc.start()
    assert ops.spawned[-1][0] is new_spec


def test_replace_gives_a_given_up_process_a_new_chance():
    proc, ops, clock = make(give_up_after=5)
    proc.want()
    for _ in range(5):
        proc.start()
        proc.on_exit("exit status 1")
    assert proc.state == P.GIVEN_UP
    proc.replace(ProcessSpec(name="p", run="/bin/sleep", pid_file="/run/p.pid"))
    assert proc.state == P.WAITING
    proc.start()
    assert proc.state == P.RUNNING


def test_daemon_waits_for_its_pid_file():
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.want()
    proc.start()
    assert proc.state == P.STARTING and proc.launcher_pid == 101
    proc.on_launcher_exit("exit status 0")
    assert proc.state == P.STARTING
    ops.daemon_pid = 555
    clock.now += 0.05
    proc.tick(clock.now)
    assert proc.state == P.RUNNING and proc.pid == 555
    # The pid file's wait is over: no deadline left for the worker's loop
    # (a past one made it spin at 100 % of a core once the 10 s passed).
    assert proc.deadline is None and proc.next_deadline() is None


def test_an_adopted_pid_that_dies_while_watched_is_restarted():
    proc, ops, clock = make(restart_delay=5)
    ops.dead_on_watch = {777}
    proc.adopt(777, 12345)
    assert proc.state == P.BACKOFF and proc.pid is None


def test_daemon_without_pid_file_fails_after_timeout():
    proc, ops, clock = make(daemon=True, write_pid=False, restart=False)
    proc.want()
    proc.start()
    clock.now += P.DAEMON_PID_TIMEOUT + 1
    proc.tick(clock.now)
    assert proc.state == P.FAILED and "did not write a live pid" in proc.error


def test_daemon_launcher_failure():
    proc, ops, clock = make(daemon=True, write_pid=False, restart=False)
    proc.want()
    proc.start()
    proc.on_launcher_exit("exit status 1")
    assert proc.state == P.FAILED and "exit status 1" in proc.error


def test_adopted_process_is_running():
    proc, ops, clock = make()
    proc.adopt(4242, 99)
    assert proc.state == P.RUNNING and proc.adopted and proc.ticks == 99
    assert ops.spawned == []


def test_stop_a_daemon_still_waiting_for_its_pid_file():
    """Removed or changed between the launcher's exit and the pid file: the
    worker waits for the pid (bounded), then stops that daemon."""
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.want()
    proc.start()
    proc.on_launcher_exit("exit status 0")
    assert proc.state == P.STARTING and proc.launcher_pid is None
    proc.stop()
    assert proc.state == P.CANCELLING and ops.signals == []
    ops.daemon_pid = 777
    clock.now += 0.05
    proc.tick(clock.now)
    assert proc.pid == 777 and ops.signals == [(777, signal.SIGTERM)]
    assert proc.state == P.STOPPING
    proc.on_exit("killed by SIGTERM")
    assert proc.state == P.STOPPED and ops.stopped_procs == [proc]


def test_stop_a_launching_daemon_that_never_writes_its_pid():
    proc, ops, clock = make(daemon=True, write_pid=False, stop_timeout=0)
    proc.want()
    proc.start()
    proc.stop()  # the launcher still runs: it is not killed at once
    assert proc.state == P.CANCELLING and ops.signals == []
    clock.now += P.DAEMON_PID_TIMEOUT + 1
    proc.tick(clock.now)
    assert ops.signals == [(101, signal.SIGKILL)]  # the launcher, never None
    proc.tick(clock.now + 1)
    assert ops.signals == [(101, signal.SIGKILL)]
    proc.on_launcher_exit("killed by SIGKILL")
    assert proc.state == P.STOPPED


def test_daemon_that_does_not_fork():
    """Its pid file names the launcher itself: one pid, supervised once."""
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.want()
    proc.start()
    ops.daemon_pid = 101
    proc.tick(clock.now + 0.05)
    assert proc.state == P.RUNNING and proc.pid == 101
    assert proc.launcher_pid is None


UNKNOWN = "status unknown (not the worker's child)"


def test_adopted_starting_daemon_launcher_exit_is_not_a_failure():
    """After a worker restart the launcher is not our child: its exit has no
    status, and it is the normal fork of a daemon, not a failure."""
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.adopt_starting(101, 1010)
    proc.on_launcher_exit(UNKNOWN)
    assert proc.state == P.STARTING, (proc.state, proc.error)
    ops.daemon_pid = 555
    proc.tick(clock.now + 0.1)
    assert proc.state == P.RUNNING and proc.pid == 555 and ops.spawned == []


def test_adopted_starting_daemon_removed_is_stopped_once_it_writes_its_pid():
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.adopt_starting(101, 1010)
    proc.removing = True
    proc.stop()
    proc.on_launcher_exit(UNKNOWN)
    assert proc.state == P.CANCELLING
    ops.daemon_pid = 555
    proc.tick(clock.now + 0.1)
    assert ops.signals == [(555, proc.spec.stop_signal)]


def test_a_daemon_being_stopped_while_starting_keeps_its_launcher_in_status():
    proc, ops, clock = make(daemon=True, write_pid=False)
    proc.want()
    proc.start()
    proc.stop()
    assert proc.state == P.CANCELLING
    assert proc.pending_launcher() == (101, 1010)
    assert ledger.Record.of(proc).to_json()["launcher"] == [101, 1010]


def test_operator_restarts_do_not_count_against_the_start_limit():
    proc, ops, clock = make()
    proc.want()
    proc.start()
    for _ in range(3 * P.START_LIMIT):
        proc.restart_now()
        proc.on_exit("killed by SIGTERM")  # the stop signal took effect
        assert proc.state == P.WAITING
        proc.start()
        assert proc.state == P.RUNNING
    # Crashes still count.
    for _ in range(P.START_LIMIT - 1):
        proc.on_exit("exit status 1")
        proc.start()
    proc.on_exit("exit status 1")
    assert proc.state == P.BACKOFF


def test_an_operators_stop_holds_until_start_or_a_new_definition():
    proc, ops, clock = make()
    proc.want()
    proc.start()
    proc.hold()
    assert proc.state == P.STOPPING and ops.signals == [(101, signal.SIGTERM)]
    proc.on_exit("killed by SIGTERM")
    assert proc.state == P.STOPPED and proc.held and not proc.as_desired
    proc.want()  # a reload, a dependency: still held
    assert proc.state == P.STOPPED
    proc.release()
    assert proc.state == P.WAITING and not proc.held
    proc.start()
    proc.hold()
    proc.on_exit("killed by SIGTERM")
    proc.replace(ProcessSpec(name="p", run="/bin/sleep", pid_file="/run/p.pid"))
    assert proc.state == P.WAITING and not proc.held


def test_start_during_the_operators_stop_starts_once_stopped():
    proc, ops, clock = make(stop_timeout=3)
    proc.want()
    proc.start()
    proc.hold()
    assert proc.state == P.STOPPING
    proc.release()  # before the stop ended
    proc.on_exit("killed by SIGKILL")
    assert proc.state == P.WAITING and not proc.held


def test_a_stop_during_a_definition_change_keeps_the_new_definition():
    proc, ops, clock = make()
    proc.want()
    proc.start()
    new = ProcessSpec(name="p", run="/bin/sleep", pid_file="/run/p.pid")
    proc.replace(new)
    assert proc.state == P.STOPPING
    proc.hold()
    proc.on_exit("killed by SIGTERM")
    assert proc.state == P.STOPPED and proc.held and proc.spec == new
    proc.release()
    assert proc.state == P.WAITING and proc.spec == new
