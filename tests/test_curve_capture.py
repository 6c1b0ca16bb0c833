"""What a stranger on the wire sees: loopback traffic between a real master
and a real node captured with tcpdump. With CURVE a secret from a process's
``env`` never appears in the capture; without CURVE it does (which proves
the capture sees the traffic)."""

import os
import shutil
import signal
import subprocess

import pytest

from helpers import Master, Node, read_bytes, wait_for
from test_curve import Keys

SECRET = "capture-me-7c1e5a0f"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("tcpdump") is None,
    reason="needs root and tcpdump (apt-get install tcpdump: "
           "tests/setup-system.sh does)")


def port_of(endpoint):
    return int(endpoint.rsplit(":", 1)[1])


class Capture:
    """tcpdump on lo for the master's two ports, into a pcap file."""

    def __init__(self, path, ports):
        self.path = path
        self.errors = path + ".err"
        expression = " or ".join("tcp port %d" % p for p in ports)
        with open(self.errors, "wb") as err:
            self.proc = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-U", "-s", "0", "-n", "-w", path,
                 expression], stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: b"listening on" in read_bytes(self.errors)
                 or self.proc.poll() is not None, what="tcpdump listening")
        assert self.proc.poll() is None, read_bytes(self.errors)

    def stop(self):
        """End tcpdump (our own pid); the bytes it captured."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        return read_bytes(self.path)


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plain"])
def test_a_secret_in_env_crosses_the_wire_only_without_curve(
        tmp_path, marker, curve):
    node = Node(tmp_path / "node1", marker, "node1")
    ring = Keys(tmp_path, "node1")
    ring.allow("node1")
    master = Master(tmp_path, marker, heartbeat=0.3, nodes={
        "node1": [node.proc("a", "/bin/sleep", "8401",
                            env={"SMTP_PASSWD": SECRET})]},
        **(ring.master_settings() if curve else {}))
    capture = Capture(str(tmp_path / "lo.pcap"),
                      [port_of(master.stats), port_of(master.updates)])
    try:
        master.start()
        node.join(master, **(ring.client_settings("node1") if curve else {}))
        node.wait_only_running(["a"], timeout=15)
        assert SECRET.encode() in node.conf_bytes()  # it did travel
        # A few heartbeats more (each sends the list again).
        wait_for(lambda: os.path.getsize(capture.path) > 4096,
                 what="traffic in the capture")
    finally:
        packets = capture.stop()
        node.close()
        master.stop()
    assert len(packets) > 4096
    if curve:
        assert SECRET.encode() not in packets
    else:
        assert SECRET.encode() in packets
