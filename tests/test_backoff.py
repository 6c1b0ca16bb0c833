"""The restart policy (diprocd/backoff.py) and how a Process follows it,
with a fake clock, fake ops and a fixed or seeded random source: the
delays' growth, cap and jitter, the reset after a long run, the
5-starts-a-minute rule's interplay, give_up_after, and what the operator
and the worker may do to a process in backoff. No fork, no sleep."""

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diprocd import backoff as B
from diprocd import process as P
from diprocd.spec import ProcessSpec
from fakes import FakeClock, FakeOps
from test_worker_logic import make_worker, spec as worker_spec

MIDDLE = 0.5  # rand() giving the factor 1: no jitter


def spec(**fields):
    fields.setdefault("name", "p")
    fields.setdefault("run", "/bin/false")
    fields.setdefault("pid_file", "/run/p.pid")
    return ProcessSpec(**fields)


def make(rand=lambda: MIDDLE, **fields):
    clock, ops = FakeClock(), FakeOps()
    proc = P.Process(spec(**fields), ops, clock)
    proc.backoff.rand = rand
    return proc, ops, clock


def delays(policy, definition, failures):
    out = []
    for _ in range(failures):
        policy.ended(definition, 0.0)
        out.append(policy.delay(definition))
    return out


# --- the arithmetic -------------------------------------------------------

def test_the_delay_doubles_for_each_quick_failure_up_to_the_cap():
    definition = spec(restart_delay=1, restart_delay_max=10)
    policy = B.Backoff(rand=lambda: MIDDLE)
    assert delays(policy, definition, 7) == [1, 2, 4, 8, 10, 10, 10]
    # A restart_delay above the cap is capped too.
    policy = B.Backoff(rand=lambda: MIDDLE)
    assert delays(policy, spec(restart_delay=50, restart_delay_max=20),
                  2) == [20, 20]
    # Thousands of failures do not overflow.
    policy.failures = 10 ** 6
    assert policy.delay(definition) == 10


def test_the_default_restarts_at_once_until_the_limit_was_hit():
    definition = spec()
    policy = B.Backoff(rand=lambda: MIDDLE)
    assert delays(policy, definition, 5) == [0, 0, 0, 0, 0]
    policy.limited = True  # the start limit held a start back
    assert policy.delay(definition) == B.LIMIT_FLOOR * 2 ** 4
    assert delays(policy, definition, 6) == [32, 64, 128, 256, 300, 300]
    assert delays(B.Backoff(), spec(restart_delay_max=0), 3) == [0, 0, 0]


def test_jitter_stays_within_ten_percent_and_under_the_cap():
    definition = spec(restart_delay=10, restart_delay_max=100)
    low = B.Backoff(rand=lambda: 0.0)
    high = B.Backoff(rand=lambda: 1.0 - 1e-12)
    assert delays(low, definition, 6) == pytest.approx(
        [9, 18, 36, 72, 90, 90])
    assert delays(high, definition, 6) == pytest.approx(
        [11, 22, 44, 88, 100, 100])
    rng = random.Random(12)
    seen = {}
    for _ in range(2000):
        policy = B.Backoff(rand=rng.random)
        for failures, delay in enumerate(delays(policy, definition, 5), 1):
            raw = min(100, 10 * 2 ** (failures - 1))
            assert 0.9 * raw <= delay <= min(100, 1.1 * raw)
            seen.setdefault(failures, set()).add(round(delay, 3))
    # Spread, not a handful of values: a fleet does not restart in step.
    assert all(len(values) > 500 for values in seen.values()), {
        k: len(v) for k, v in seen.items()}


def test_a_long_run_starts_the_count_over():
    definition = spec(restart_delay=1, restart_delay_reset=60)
    policy = B.Backoff(rand=lambda: MIDDLE)
    assert delays(policy, definition, 4) == [1, 2, 4, 8]
    policy.limited = True
    policy.ended(definition, 59.9)  # not long enough: one more failure
    assert policy.failures == 5 and policy.delay(definition) == 16
    policy.ended(definition, 60.0)
    assert policy.failures == 0 and not policy.limited
    assert policy.delay(definition) == 1
    policy.ended(definition, None)  # a failed start is always quick
    assert policy.failures == 1


def test_give_up_after_counts_quick_failures_in_a_row():
    definition = spec(give_up_after=3)
    policy = B.Backoff()
    for _ in range(2):
        policy.ended(definition, 1.0)
    assert not policy.exhausted(definition)
    policy.ended(definition, 3600.0)  # a long run: the count starts over
    for _ in range(2):
        policy.ended(definition, None)
    assert not policy.exhausted(definition)
    policy.ended(definition, 0.5)
    assert policy.exhausted(definition)
    assert not B.Backoff().exhausted(spec())  # null: never


# --- a Process following it -----------------------------------------------

def crash(proc, clock, ran=0.1):
    """Start it (it must be waiting), let it run ``ran`` s, and let it die."""
    assert proc.state == P.WAITING, (proc.state, proc.error)
    proc.start()
    assert proc.state == P.RUNNING
    started = clock.now
    clock.now += ran
    proc.on_exit("exit status 1")
    return started


def wait_out(proc, clock):
    """Let the fake clock reach the process's deadline, as the worker's
    loop sleeps until it; returns how long that was."""
    assert proc.state == P.BACKOFF
    due = proc.next_deadline()
    waited = due - clock.now
    clock.now = due
    proc.tick(clock.now)
    return waited


def test_a_crash_loop_backs_off_with_growing_delays():
    proc, ops, clock = make(restart_delay=0.5, restart_delay_max=2)
    proc.want()
    starts = []
    for _ in range(4):
        starts.append(crash(proc, clock))
        assert proc.state == P.BACKOFF and proc.error is None
        assert proc.next_start == pytest.approx(
            clock.time() + proc.deadline - clock.now)
        wait_out(proc, clock)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == pytest.approx([0.6, 1.1, 2.1])  # 0.1 s run + the delay
    # The fifth start fills the window: the next waits for it to open.
    starts.append(crash(proc, clock))
    assert proc.error == "started 5 times within 60s (last: exit status 1)"
    assert proc.deadline == starts[0] + 60
    wait_out(proc, clock)
    starts.append(crash(proc, clock))
    assert starts[-1] == starts[0] + 60 and len(ops.spawned) == 6
    # Then the delay again (capped at 2 s), within the rule.
    assert wait_out(proc, clock) == pytest.approx(2)


def test_the_default_settles_at_one_start_per_restart_delay_max():
    proc, ops, clock = make(rand=random.Random(5).random)
    proc.want()
    starts = []
    while clock.now < 1000 + 4 * 3600:
        starts.append(crash(proc, clock, ran=0.01))
        if proc.state == P.BACKOFF:
            wait_out(proc, clock)
    assert starts[:5] == pytest.approx([1000 + 0.01 * i for i in range(5)])
    assert starts[5] == pytest.approx(1060)  # the window, not given up
    for i in range(len(starts)):  # never more than 5 within 60 s
        assert sum(1 for t in starts[i:i + 6] if t < starts[i] + 60) <= 5
    late = [b - a for a, b in zip(starts, starts[1:])][-20:]
    assert all(0.9 * 300 <= gap <= 300 + 0.02 for gap in late), late
    assert len(ops.spawned) == len(starts)


def test_a_run_past_restart_delay_reset_gets_a_fresh_delay():
    proc, ops, clock = make(restart_delay=1, restart_delay_max=100,
                            restart_delay_reset=30)
    proc.want()
    waits = []
    for ran in (0.1, 0.1, 0.1, 29.9, 30.0, 0.1, 0.1):
        crash(proc, clock, ran)
        waits.append(wait_out(proc, clock))
    assert waits == pytest.approx([1, 2, 4, 8, 1, 1, 2])


def test_failed_starts_back_off_too():
    proc, ops, clock = make(restart_delay=3)
    ops.fail_with = "exec /nope: No such file or directory"
    proc.want()
    proc.start()
    assert proc.state == P.BACKOFF and proc.deadline == clock.now + 3
    assert proc.error == "exec /nope: No such file or directory"
    wait_out(proc, clock)
    proc.start()
    assert proc.deadline == clock.now + 6
    # A daemon that never writes its pid file: a failed start as well.
    proc, ops, clock = make(restart_delay=3, daemon=True, write_pid=False)
    proc.want()
    proc.start()
    clock.now += P.DAEMON_PID_TIMEOUT + 1
    proc.tick(clock.now)
    assert proc.state == P.BACKOFF and proc.deadline == clock.now + 3
    assert "did not write a live pid" in proc.error


def test_give_up_after_gives_up_and_sighup_retries():
    proc, ops, clock = make(give_up_after=3, restart_delay=1)
    proc.want()
    crash(proc, clock)
    wait_out(proc, clock)
    crash(proc, clock, ran=3600)  # a long run: the count starts over
    wait_out(proc, clock)
    for _ in range(2):
        crash(proc, clock)
        wait_out(proc, clock)
    crash(proc, clock)
    assert proc.state == P.GIVEN_UP and proc.deadline is None
    assert proc.error == ("failed 3 times in a row (last: exit status 1): "
                          "given up until the definition changes, SIGHUP, "
                          "dpdctl restart or a worker restart")
    clock.now += 3600
    proc.tick(clock.now)
    assert proc.state == P.GIVEN_UP  # time alone does not bring it back
    proc.retry()
    assert proc.state == P.WAITING and proc.backoff.failures == 0
    crash(proc, clock)
    assert proc.state == P.BACKOFF and wait_out(proc, clock) == 1
    # Five starts a minute is still the rule below give_up_after.
    proc, ops, clock = make(give_up_after=20)
    proc.want()
    for _ in range(5):
        crash(proc, clock)
    assert proc.state == P.BACKOFF


def test_sighup_a_new_definition_and_dpdctl_restart_end_a_backoff():
    for end in ("retry", "replace", "restart_now"):
        proc, ops, clock = make(restart_delay=100)
        proc.want()
        crash(proc, clock)
        crash_at = clock.now
        assert proc.state == P.BACKOFF and proc.deadline == crash_at + 100
        if end == "replace":
            proc.replace(spec(run="/bin/true", restart_delay=100))
        else:
            getattr(proc, end)()
        assert proc.state == P.WAITING, end
        assert proc.deadline is None and proc.next_start is None
        assert proc.backoff.failures == 0
        crash(proc, clock)
        assert proc.deadline == clock.now + 100, end  # a fresh delay


def test_the_operators_stop_of_a_process_in_backoff():
    proc, ops, clock = make(restart_delay=100)
    proc.want()
    crash(proc, clock)
    proc.hold()
    assert proc.state == P.STOPPED and proc.held and proc.deadline is None
    assert proc.next_deadline() is None
    # Stopped like any other: the worker ends what is left of its tree.
    assert ops.stopped_procs == [proc]
    clock.now += 1000
    proc.tick(clock.now)
    assert proc.state == P.STOPPED and len(ops.spawned) == 1
    proc.release()  # dpdctl start: now, within the start limit
    assert proc.state == P.WAITING
    crash(proc, clock)
    assert proc.state == P.BACKOFF and proc.deadline == clock.now + 200


def test_dpdctl_start_within_a_full_window_waits_for_it():
    proc, ops, clock = make()
    proc.want()
    first = clock.now
    for _ in range(5):
        crash(proc, clock)
    proc.hold()
    proc.release()
    assert proc.state == P.WAITING
    proc.start()
    assert proc.state == P.BACKOFF and proc.deadline == first + 60
    assert len(ops.spawned) == 5


# --- the worker: a deadline its loop sleeps until -------------------------

def test_the_worker_sleeps_until_the_backoff_ends_then_starts_it():
    worker, ops, clock = make_worker(
        worker_spec("crash", restart_delay=30), worker_spec("other"))
    for name in ("crash", "other"):
        assert worker.procs[name].state == P.RUNNING
    crash_proc = worker.procs["crash"]
    crash_proc.backoff.rand = lambda: MIDDLE
    worker._on_exit(crash_proc, crash_proc.pid, "main", "exit status 1")
    due = clock.now + 30
    assert worker._turn(clock.now) == due  # the loop's timeout
    assert crash_proc.state == P.BACKOFF and len(ops.spawned) == 2
    # Nothing else waits for it: a change of another is applied at once.
    worker.apply([worker_spec("crash", restart_delay=30),
                  worker_spec("other", args=("2",))])
    worker._turn(clock.now)
    assert worker.procs["other"].state == P.STOPPING
    clock.now = due - 0.001
    assert worker._turn(clock.now) == due
    assert crash_proc.state == P.BACKOFF
    clock.now = due
    worker._turn(clock.now)
    assert crash_proc.state == P.RUNNING and len(ops.spawned) == 3


def test_a_process_removed_in_backoff_just_goes():
    worker, ops, clock = make_worker(worker_spec("crash", restart_delay=30))
    proc = worker.procs["crash"]
    worker._on_exit(proc, proc.pid, "main", "exit status 1")
    worker._turn(clock.now)
    assert proc.state == P.BACKOFF
    worker.apply([])
    assert worker._turn(clock.now) is None
    assert "crash" not in worker.procs and proc.state == P.STOPPED
    assert len(ops.spawned) == 1


def test_the_status_view_shows_backoff_and_its_next_start():
    from diprocd import ledger, status
    proc, ops, clock = make(restart_delay=90)
    proc.want()
    crash(proc, clock)
    view = ledger.view_of(proc)
    assert view["state"] == "backoff" and not view["ok"]
    assert view["next_start"] == pytest.approx(clock.time() + 90)
    assert view["last_exit"] == "exit status 1"
    rows = status.process_rows({"p": view}, clock.time(), local=False)
    assert rows[0][2] == "*backoff"
    assert rows[0][-1].startswith("next start in 90s (")
    assert rows[0][-1].endswith("); exit status 1")


def test_the_delay_is_logged(caplog):
    proc, ops, clock = make(restart_delay=1)
    proc.want()
    with caplog.at_level(logging.INFO, logger="dpd-workerd"):
        crash(proc, clock)
    assert any(r.getMessage() == "p: restart in 1.0s"
               for r in caplog.records)


@settings(max_examples=200, deadline=None)
@given(restart_delay=st.sampled_from([0, 0.3, 1, 7]),
       delay_max=st.sampled_from([0, 1, 10, 300]),
       reset=st.sampled_from([0, 2, 60]),
       runs=st.lists(st.floats(min_value=0, max_value=120), max_size=40),
       seed=st.integers(0, 2 ** 32))
def test_never_more_than_five_starts_a_minute_and_never_given_up(
        restart_delay, delay_max, reset, runs, seed):
    """Whatever the policy and however long each run lasts: never more than
    5 starts within 60 s, no wait longer than restart_delay_max or the
    rule's minute, and without give_up_after never given up."""
    proc, ops, clock = make(rand=random.Random(seed).random,
                            restart_delay=restart_delay,
                            restart_delay_max=delay_max,
                            restart_delay_reset=reset)
    proc.want()
    starts = []
    for ran in runs:
        starts.append(crash(proc, clock, ran))
        assert sum(1 for t in starts if t > starts[-1] - 60) <= 5, starts
        if proc.state == P.BACKOFF:
            assert wait_out(proc, clock) <= max(delay_max, 60)
        assert proc.state == P.WAITING
