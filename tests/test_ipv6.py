"""IPv6: a real master and node on ::1, and dpdctl over tcp on ::1 (CURVE,
an operator key), beside the same cluster on 127.0.0.1. ZeroMQ sockets
are IPv4-only unless told (zmq.IPV6): a master bound to tcp://[::1]:N
used to pass --check, then exit with "cannot bind: No such device"."""

import shutil
import socket

import pytest
import simplejson as json
import zmq

from diprocd import bus
from helpers import Master, Node, run_command, wait_for
from test_curve import Keys


def ipv6_loopback_problem():
    """Why this machine cannot serve on ::1, or None."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as err:
        return "cannot bind ::1 here: %s" % (err.strerror or err)
    return None


FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6", marks=pytest.mark.skipif(
        ipv6_loopback_problem() is not None,
        reason=str(ipv6_loopback_problem()))),
]


def tcp_endpoint(host):
    """tcp://HOST:PORT on a free port of that loopback address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return "tcp://%s:%d" % ("[%s]" % host if ":" in host else host, port)


def master_sees(master, node):
    view = master.view() or {"nodes": {}}
    return view["nodes"].get(node)


@pytest.mark.parametrize("host", FAMILIES)
def test_a_master_and_a_node_on_each_family(tmp_path, marker, host):
    """--check passes, the node's list reaches its worker, its status the
    master, and an edit of the master file the node, over that family."""
    node = Node(tmp_path / "node1", marker, "node1")
    master = Master(tmp_path, marker, heartbeat=0.5,
                    master_stats=tcp_endpoint(host),
                    master_updates=tcp_endpoint(host),
                    nodes={"node1": [node.proc("a", "/bin/sleep", "8501")]})
    master.write()
    result = run_command("dpd-masterd", ["--check", master.config_path])
    assert result.returncode == 0 and "warning" not in result.stderr, result
    master.start()
    try:
        node.join(master)
        result = run_command("dpd-clientd", ["--check",
                                             node.client_config_path])
        assert result.returncode == 0 and "warning" not in result.stderr, result
        node.wait_only_running(["a"])
        wait_for(lambda: (master_sees(master, "node1") or {}).get("in_sync"),
                 what=lambda: "node1 in sync at the master; master log:\n"
                 + master.log())
        master.write(nodes={"node1": [node.proc("b", "/bin/sleep", "8502")]})
        node.wait_only_running(["b"])
        assert "cannot bind" not in master.log()
    finally:
        node.close()
        assert master.stop() == 0, master.log()


@pytest.mark.skipif(ipv6_loopback_problem() is not None,
                    reason=str(ipv6_loopback_problem()))
def test_dpdctl_over_tcp_on_ipv6(tmp_path, marker):
    """Every endpoint on ::1, CURVE on all of them: an operator's dpdctl
    reaches the master's tcp control endpoint, sees the node, and restarts
    its process through the master and the node's client."""
    ring = Keys(tmp_path, "node1", "alice")
    ring.allow("node1")
    operators = tmp_path / "operators"
    operators.mkdir()
    shutil.copy(ring.public("alice"), operators)
    control = tcp_endpoint("::1")
    node = Node(tmp_path / "node1", marker, "node1")
    master = Master(tmp_path, marker, heartbeat=0.5,
                    master_stats=tcp_endpoint("::1"),
                    master_updates=tcp_endpoint("::1"),
                    master_control=control,
                    curve_operators_dir=str(operators),
                    nodes={"node1": [node.proc("a", "/bin/sleep", "8503")]},
                    **ring.master_settings())
    master.start()
    try:
        node.join(master, **ring.client_settings("node1"))
        old = node.wait_only_running(["a"])["a"]
        as_alice = ["--connect", control, "--key", ring.secret("alice"),
                    "--master-key", ring.public("master")]

        def a_running():
            """a's pid as dpdctl status shows it, once all is as desired
            (its client's report may come before the worker started a)."""
            result = run_command("dpdctl", as_alice + ["status", "--json"],
                                 marker)
            if result.returncode != 0:
                return None
            procs = json.loads(result.stdout)["nodes"]["node1"]["procs"]
            return procs.get("a", {}).get("pid")
        assert wait_for(a_running, timeout=15, what="dpdctl status over "
                        "[::1] to show a running on node1") == old
        result = run_command("dpdctl", as_alice + ["restart", "node1", "a"],
                             marker)
        assert result.returncode == 0, result
        new = node.wait_running("a")
        assert new != old and "a: restarted, pid %d" % new in result.stdout
    finally:
        node.close()
        master.stop()


def test_an_ipv4_only_peer_reaches_an_ipv6_enabled_socket():
    """During an upgrade an older client (or dpdctl), whose sockets are
    IPv4-only, talks to a new master's: a socket made by bus.socket and
    bound to an IPv4 address still takes IPv4-only peers, and the other way
    round."""
    context = zmq.Context()
    try:
        for new_binds in (True, False):
            new = bus.socket(context, zmq.PULL if new_binds else zmq.PUSH)
            old = context.socket(zmq.PUSH if new_binds else zmq.PULL)
            old.setsockopt(zmq.LINGER, 0)
            assert new.getsockopt(zmq.IPV6) == 1 and old.getsockopt(zmq.IPV6) == 0
            server, client = (new, old) if new_binds else (old, new)
            server.bind("tcp://127.0.0.1:0")
            client.connect(server.getsockopt(zmq.LAST_ENDPOINT).decode()
                           .replace("[::ffff:127.0.0.1]", "127.0.0.1"))
            pusher, puller = (old, new) if new_binds else (new, old)
            pusher.send(b"hello")
            assert puller.poll(5000), "new binds: %s" % new_binds
            assert puller.recv() == b"hello"
            new.close()
            old.close()
    finally:
        context.term()
