"""bench/procevents.py, the benchmarks' timing of restarts by the kernel's
exec events: its parsing of a datagram, and (as root) real events."""

import os
import struct
import subprocess
import sys
import time

import pytest

from conftest import requires_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "bench"))
import procevents  # noqa: E402


def _message(what, tgid, stamp_ns):
    event = struct.pack("=IIQ", what, 0, stamp_ns) + struct.pack(
        "=ii", tgid, tgid)
    cn = struct.pack("=IIIIHH", procevents.CN_IDX_PROC,
                     procevents.CN_VAL_PROC, 0, 0, len(event), 0)
    body = cn + event
    header = struct.pack("=IHHII", 16 + len(body), procevents.NLMSG_DONE,
                         0, 0, 0)
    return header + body


def test_parse_takes_the_exec_events_of_a_datagram():
    data = (_message(procevents.PROC_EVENT_EXEC, 41, 1_500_000_000)
            + _message(0x1, 42, 2_000_000_000)  # a fork: not an exec
            + _message(procevents.PROC_EVENT_EXEC, 43, 2_500_000_000))
    assert procevents.parse(data) == [(41, 1.5), (43, 2.5)]
    assert procevents.parse(data[:20]) == []  # cut short: nothing made up
    assert procevents.parse(b"") == []


@requires_root
def test_an_exec_is_seen_with_the_kernels_time_of_it():
    events = procevents.ExecEvents.open()
    if events is None:
        pytest.skip("no process connector here")
    try:
        events.drain()
        before = time.perf_counter()
        child = subprocess.Popen(["/bin/true"])
        child.wait(timeout=10)
        after = time.perf_counter()
        deadline = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline and not seen:
            seen = [when for pid, when in events.read(0.5)
                    if pid == child.pid]
        assert seen, "no exec event of pid %d" % child.pid
        assert before <= seen[0] <= after
    finally:
        events.close()
