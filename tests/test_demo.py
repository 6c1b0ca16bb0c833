"""`make demo`: started as a newcomer would, watched until both nodes run
their processes, stopped with Ctrl-C (SIGINT), leaving nothing behind."""

import os
import re
import signal
import subprocess
import threading

import pytest

from diprocd.kernel import is_alive
from helpers import ROOT, marked_env, marked_pids, wait_for

ROW = re.compile(r"^\s+(node\d)\s+(\S+)\s+(.+?)\s+pid (\S+)$")


class Output:
    """Collect a child's stdout lines in a thread (no blocking reads)."""

    def __init__(self, stream):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(stream,),
                                       daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self):
        return "\n".join(self.lines)

    def last_table(self):
        """{(node, process): (state, pid)} of the latest table printed."""
        table = {}
        for line in self.lines:
            if line.endswith("cluster state"):
                table = {}
            match = ROW.match(line)
            if match:
                node, name, state, pid = match.groups()
                table[(node, name)] = (state, pid)
        return table


def all_running(output):
    table = output.last_table()
    running = {key: int(pid) for key, (state, pid) in table.items()
               if state == "running"}
    nodes = {node for node, _ in running}
    if nodes == {"node1", "node2"} and len(running) == len(table) == 4:
        return running
    return None


@pytest.mark.timeout(120)
def test_make_demo_runs_a_cluster_and_stops_on_ctrl_c(marker):
    # `make demo` as typed: make, the venv's python, demo/run.py. Its own
    # session, so the SIGINT below is the test's Ctrl-C, sent to the whole
    # foreground group as a terminal would.
    demo = subprocess.Popen(
        ["make", "--no-print-directory", "-s", "demo"], cwd=ROOT,
        env=marked_env(marker), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True)
    output = Output(demo.stdout)
    try:
        running = wait_for(lambda: all_running(output), timeout=60,
                           what=lambda: "both nodes to run their processes:"
                           "\n%s" % output.text())
        folder = re.search(r"diprocd demo in (\S+)", output.text()).group(1)
        assert os.path.isdir(folder)
        # The demo's daemons and the nodes' processes all carry our marker.
        started = set(marked_pids(marker))
        assert set(running.values()) <= started
        os.killpg(demo.pid, signal.SIGINT)
        # make, interrupted too, exits by SIGINT after its child, as at a
        # terminal; the demo itself says it stopped.
        assert demo.wait(timeout=60) in (0, -signal.SIGINT), output.text()
        output.thread.join(timeout=10)
        assert "stopped." in output.text()
        wait_for(lambda: not marked_pids(marker), timeout=20,
                 what=lambda: "every process of the demo to exit: %s"
                 % marked_pids(marker))
        assert not any(is_alive(pid) for pid in running.values())
        assert not os.path.exists(folder), "temporary folder left behind"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
