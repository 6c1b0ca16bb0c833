"""kernel.alive and is_alive on real processes: running, ended but not
reaped (a zombie), reaped, and more pids than one poll takes."""

import os
import subprocess

from diprocd import kernel
from helpers import MARKER_VAR, wait_for


def _start(argv, marker):
    return subprocess.Popen(argv, env=dict(os.environ, **{MARKER_VAR: marker}))


def test_alive_tells_running_from_zombie_and_reaped(marker):
    running = _start(["sleep", "60"], marker)
    zombie = _start(["true"], marker)
    reaped = _start(["true"], marker)
    try:
        reaped.wait()
        wait_for(lambda: kernel.proc_stat(zombie.pid).state == "Z",
                 what="the child to end, not reaped")
        assert kernel.alive([running.pid, zombie.pid, reaped.pid, 0, -1,
                             2 ** 40]) == {running.pid}
        assert kernel.is_alive(running.pid)
        assert not kernel.is_alive(zombie.pid)
        assert not kernel.is_alive(reaped.pid)
        assert kernel.alive([]) == set()
    finally:
        running.kill()
        running.wait()
        zombie.wait()


def test_alive_over_several_polls(marker):
    count = 2 * kernel._POLL_BATCH + 3
    procs = [_start(["sleep", "60"], marker) for _ in range(count)]
    try:
        ended = procs[::7]
        for proc in ended:
            proc.kill()
            proc.wait()
        pids = [proc.pid for proc in procs]
        fds = len(os.listdir("/proc/self/fd"))
        assert kernel.alive(pids + pids[:5]) == \
            set(pids) - {proc.pid for proc in ended}
        assert len(os.listdir("/proc/self/fd")) == fds  # no pidfd left open
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
