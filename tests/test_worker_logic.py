"""The worker's own decisions with fake ops and a fake clock: the diff of a
new CONFIG, the burst of starts, dependencies and removal order. No fork,
no signal, no sleep."""

import logging
import signal

from diprocd import process as P
from diprocd.config import WorkerConfig
from diprocd.spec import ProcessSpec
from diprocd.worker import LAUNCH_BATCH, Worker
from fakes import FakeClock, FakeOps


class WorkerOps(FakeOps):
    """FakeOps whose notifications reach the worker, as NodeOps's do."""

    worker = None

    def changed(self, proc):
        self.worker._changed(proc)

    def stopped(self, proc):
        super().stopped(proc)
        self.worker._stopped(proc)


def spec(name, **fields):
    fields.setdefault("run", "/bin/sleep")
    fields.setdefault("pid_file", "/run/t/%s.pid" % name)
    return ProcessSpec(name=name, **fields)


def make_worker(*specs):
    clock, ops = FakeClock(), WorkerOps()
    config = WorkerConfig("/etc/w.json", "/run/t/w.pid", procs=tuple(specs))
    worker = Worker(config, logging.getLogger("test-worker"), clock=clock,
                    ops=ops)
    ops.worker = worker
    worker.apply(specs)
    worker.run_schedulers()
    return worker, ops, clock


def names(ops):
    return [s.name for s, _ in ops.spawned]


def pid_of(worker, name):
    return worker.procs[name].pid


def exit_(worker, name, how="killed by SIGTERM"):
    """The kernel reports the end of ``name``'s pid."""
    proc = worker.procs[name]
    worker._on_exit(proc, proc.pid, "main", how)
    worker.run_schedulers()


def test_added_processes_start_in_one_burst():
    worker, ops, _ = make_worker(spec("a"), spec("b"), spec("c"))
    assert sorted(names(ops)) == ["a", "b", "c"]
    assert all(p.state == P.RUNNING for p in worker.procs.values())
    assert {pid for pid in ops.watched} == {101, 102, 103}


def test_a_burst_keeps_at_most_a_batch_in_flight():
    many = [spec("p%03d" % i) for i in range(3 * LAUNCH_BATCH + 5)]
    worker, ops, _ = make_worker(*many)
    assert len(ops.spawned) == len(many)
    assert ops.max_in_flight == LAUNCH_BATCH and ops.in_flight == 0


def test_diff_leaves_the_unchanged_alone():
    worker, ops, _ = make_worker(spec("keep"), spec("change"), spec("drop"))
    keep, old = pid_of(worker, "keep"), pid_of(worker, "change")
    worker.apply([spec("keep"), spec("change", args=("2",)), spec("new")])
    worker.run_schedulers()
    assert pid_of(worker, "keep") == keep
    assert worker.procs["change"].state == P.STOPPING
    assert worker.procs["drop"].state == P.STOPPING
    assert (old, signal.SIGTERM) in ops.signals
    assert names(ops)[3:] == ["new"]
    exit_(worker, "change")
    assert worker.procs["change"].spec.args == ("2",)
    assert worker.procs["change"].state == P.RUNNING
    assert names(ops)[-1] == "change"
    exit_(worker, "drop")
    assert "drop" not in worker.procs
    assert "/run/t/drop.pid" in ops.removed_pid_files
    assert pid_of(worker, "keep") == keep
    assert [s for s, _ in ops.spawned].count(spec("keep")) == 1


def test_a_revert_while_stopping_runs_the_reverted_definition():
    worker, ops, _ = make_worker(spec("s", args=("1",)))
    worker.apply([spec("s", args=("2",))])
    worker.run_schedulers()
    assert worker.procs["s"].state == P.STOPPING
    worker.apply([spec("s", args=("1",))])
    worker.run_schedulers()
    exit_(worker, "s")
    assert worker.procs["s"].state == P.RUNNING
    assert worker.procs["s"].spec.args == ("1",)


def test_removed_then_added_back_while_stopping_keeps_running():
    worker, ops, _ = make_worker(spec("s"))
    worker.apply([])
    worker.run_schedulers()
    assert worker.procs["s"].removing
    worker.apply([spec("s")])
    worker.run_schedulers()
    exit_(worker, "s")
    assert worker.procs["s"].state == P.RUNNING and not worker.procs["s"].removing
    assert len(ops.spawned) == 2


def test_a_dependent_waits_for_its_dependency_to_run():
    worker, ops, clock = make_worker(
        spec("web", depends=("db",)),
        spec("db", daemon=True, write_pid=False))
    assert names(ops) == ["db"]
    assert worker.procs["db"].state == P.STARTING
    assert worker.procs["web"].state == P.WAITING
    ops.daemon_pid = 900  # the daemon writes its pid file
    clock.now += 0.05
    worker._turn(clock.monotonic())
    assert worker.procs["db"].state == P.RUNNING
    assert names(ops) == ["db", "web"]


def test_removal_stops_dependents_first():
    worker, ops, _ = make_worker(spec("db"), spec("web", depends=("db",)))
    db, web = pid_of(worker, "db"), pid_of(worker, "web")
    worker.apply([])
    worker.run_schedulers()
    assert [pid for pid, _ in ops.signals] == [web]
    exit_(worker, "web")
    assert [pid for pid, _ in ops.signals] == [web, db]
    exit_(worker, "db")
    assert worker.procs == {}


def test_a_start_error_in_a_burst_fails_that_start_only():
    clock, ops = FakeClock(), WorkerOps()
    ops.fail_names["bad"] = "exec /nope: No such file or directory"
    config = WorkerConfig("/etc/w.json", "/run/t/w.pid")
    worker = Worker(config, logging.getLogger("test-worker"), clock=clock,
                    ops=ops)
    ops.worker = worker
    worker.apply([spec("a"), spec("bad", restart=False), spec("c")])
    worker.run_schedulers()
    assert worker.procs["a"].state == worker.procs["c"].state == P.RUNNING
    assert worker.procs["bad"].state == P.FAILED
    assert "No such file" in worker.procs["bad"].error


def test_sighup_gives_a_given_up_process_a_new_chance():
    worker, ops, clock = make_worker(spec("crash", give_up_after=5),
                                     spec("loop"))
    for _ in range(P.START_LIMIT):
        clock.now += 1
        exit_(worker, "crash", "exit status 1")
        exit_(worker, "loop", "exit status 1")
    assert worker.procs["crash"].state == P.GIVEN_UP
    # Without give_up_after: waiting for the start limit, not given up.
    assert worker.procs["loop"].state == P.BACKOFF
    clock.now += 3600
    worker.run_schedulers()
    assert worker.procs["crash"].state == P.GIVEN_UP
    worker._retry_all()
    worker.run_schedulers()
    assert worker.procs["crash"].state == P.RUNNING
    assert worker.procs["loop"].state == P.RUNNING
    assert len(ops.spawned) == 2 * (P.START_LIMIT + 1)
