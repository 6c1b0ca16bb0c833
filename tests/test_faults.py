"""Faults that must kill no daemon and lose nothing (issue "Nothing kills a
daemon, nothing is lost"), each a test on the real daemons.

Cases that already had a test elsewhere are not repeated here:

- a program that ignores SIGTERM is killed after ``stop_timeout``:
  test_worker.py::test_stop_escalates_to_sigkill;
- a full or read-only folder under the client's target keeps the old file:
  test_distributed_faults.py::test_full_or_read_only_target_keeps_the_old_file.

Every process a test starts carries its marker (the ``marker`` fixture ends
them all); waits are conditions with deadlines.
"""

import os
import random
import signal

import pytest

from diprocd.daemon import read_pid
from diprocd.kernel import is_alive
from helpers import Node, wait_for


@pytest.fixture
def node(tmp_path, marker):
    os.chmod(str(tmp_path), 0o755)  # processes running as nobody may need it
    node = Node(tmp_path, marker)
    yield node
    node.close()


def sleeper(node, name, tag, **fields):
    return node.proc(name, "/bin/sleep", str(tag), **fields)


def running_count(node):
    return sum(1 for entry in node.status().values()
               if entry.get("state") == "running")


# -- 1. the worker killed in the middle of a cold start, again and again ---------

@pytest.mark.timeout(120)
def test_worker_killed_at_random_moments_of_a_cold_start(node):
    """200 programs, the worker SIGKILLed five times at random moments of
    its burst of starts (after 1 to 199 programs run, so between a child's
    journal line and the worker's status file and pid files), a new worker
    started each time: the last one runs each program exactly once, and
    every pid file names its program."""
    count = 200
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    tags = ["%d" % (61000 + i) for i in range(count)]
    node.write([node.proc("c%d" % i, "/bin/sleep", tags[i])
                for i in range(count)])
    thresholds = sorted(rng.sample(range(1, count), 5))
    for threshold in thresholds:
        node.start(verbose=False, wait=False)
        wait_for(lambda: len(node.instances("sleep")) >= threshold,
                 timeout=30, what="%d programs running (seed %d)"
                 % (threshold, seed))
        node.stop(signal.SIGKILL)
    node.start(verbose=False)
    wait_for(lambda: running_count(node) == count, timeout=30,
             what=lambda: "all running (seed %d, kills after %s); %d are"
             % (seed, thresholds, running_count(node)))
    status = node.status()
    for i, tag in enumerate(tags):
        pids = node.instances(tag)
        assert len(pids) == 1, "c%d runs %d times (seed %d, kills after %s)" \
            % (i, len(pids), seed, thresholds)
        assert status["c%d" % i]["pid"] == pids[0]
    missing = [name for name in sorted(status)
               if read_pid(str(node.dir / "run" / (name + ".pid")))
               != status[name]["pid"]]
    assert missing == [], "pid files missing or wrong (seed %d): %s" % (
        seed, missing[:10])


# -- 4. the worker's file deleted ------------------------------------------------

def test_worker_file_deleted_then_back(node):
    """CONFIG removed: every process keeps running, the worker says so
    once; put back unchanged nothing restarts; put back changed it is
    applied."""
    a, b = sleeper(node, "a", 62001), sleeper(node, "b", 62002)
    node.write([a, b])
    node.start()
    pids = {name: node.wait_running(name) for name in "ab"}
    os.unlink(node.config_path)
    wait_for(lambda: "%s is gone" % node.config_path in node.log(),
             what=lambda: "the worker to log the missing file:\n" + node.log())
    node.daemon.send_signal(signal.SIGHUP)  # a re-read finds nothing either
    wait_for(lambda: "keeping the last good configuration" in node.log(),
             what="the SIGHUP re-read")
    assert node.daemon.poll() is None
    assert node.running() == pids
    node.write([a, b])
    wait_for(lambda: "%s is back" % node.config_path in node.log(),
             what="the worker to see the file back")
    assert node.running() == pids
    os.unlink(node.config_path)
    wait_for(lambda: node.log().count("%s is gone" % node.config_path) == 2,
             what="the second removal")
    c = sleeper(node, "c", 62003)
    node.write([a, c])
    node.wait_running("c")
    wait_for(lambda: "b" not in node.status(), what="b removed")
    assert node.running()["a"] == pids["a"] and not is_alive(pids["b"])
    assert node.log().count("%s is gone" % node.config_path) == 2
