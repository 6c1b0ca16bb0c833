"""A worker at a scale where select() would fail: 3000 processes (pidfds
numbered far past 1024), 20 killed at random, every one restarted, none
twice."""

import os
import random
import signal

import pytest

from diprocd.kernel import is_alive
from helpers import Node, marked_pids, wait_for

COUNT = 3000
KILLED = 20


def argv_tokens(marker):
    """{token: [pid, ...]} of the marked sleeps, by their argument."""
    found = {}
    for pid in marked_pids(marker):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"/bin/sleep":
            found.setdefault(argv[1].decode(), []).append(pid)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_3000_processes_20_killed_all_restarted_once(tmp_path, marker):
    node = Node(tmp_path, marker)
    tokens = ["%d" % (600000 + i) for i in range(COUNT)]
    node.write([node.proc("p%04d" % i, "/bin/sleep", token)
                for i, token in enumerate(tokens)])
    # The first status is written once the whole burst of 3000 runs: give
    # a loaded machine its time.
    node.start(verbose=False, wait=False)
    try:
        wait_for(node.worker_up, timeout=180, what="the worker's status")
        running = wait_for(lambda: len(node.running()) == COUNT
                           and node.running(), timeout=180,
                           what=lambda: "%d running of %d"
                           % (len(node.running()), COUNT))
        fds = os.listdir("/proc/%d/fd" % node.daemon.pid)
        assert len(fds) > COUNT  # a pidfd each: many past 1024
        victims = random.Random(marker).sample(sorted(running), KILLED)
        for name in victims:
            os.kill(running[name], signal.SIGKILL)

        def restarted():
            now = node.running()
            return len(now) == COUNT and all(
                now[name] != running[name] for name in victims) and now
        now = wait_for(restarted, timeout=60, what=lambda: "the %d killed "
                       "restarted; running %d" % (KILLED, len(node.running())))
        assert all(node.state(name)["starts"] == 2 for name in victims)
        assert not any(is_alive(running[name]) for name in victims)
        instances = argv_tokens(marker)
        assert sorted(instances) == sorted(tokens)
        assert all(len(pids) == 1 for pids in instances.values())
        assert set(now.values()) == {pids[0] for pids in instances.values()}
        assert node.daemon.poll() is None
    finally:
        node.stop()
