"""``dpdctl`` through the master: a real master, two real nodes (client +
worker) on loopback, and a third node in the master file that never
connects."""

import os
import pwd
import signal

import pytest
import simplejson as json

from conftest import requires_root
from diprocd import fleet
from diprocd.config import default_master_control
from diprocd.daemon import read_pid
from diprocd.kernel import is_alive
from diprocd.status import tree_line
from helpers import (Master, Node, read_json, run_command, running_cluster,
                     wait_for)

SILENT_AFTER = 3.0
INTERVAL = 0.3


@pytest.fixture
def cluster(tmp_path, marker):
    node1 = Node(tmp_path / "node1", marker, "node1")
    node2 = Node(tmp_path / "node2", marker, "node2")
    logs = str(tmp_path / "talk.log")
    master = Master(tmp_path, marker, heartbeat=0.5, silent_after=SILENT_AFTER,
                    nodes={"node1": [node1.proc("a", "/bin/sleep", "8201"),
                                     node1.proc("talk", "/bin/sh", "-c",
                                                "echo one; echo two; exec "
                                                "sleep 8202", logs=logs)],
                           "node2": [node2.proc("b", "/bin/sleep", "8203")],
                           "node3": []})
    with running_cluster(master, (node1, node2),
                         status_interval=INTERVAL):
        yield master, node1, node2


def dpdctl(master, *args):
    return run_command("dpdctl", ["--master", master.config_path] + list(args),
                       master.marker)


def fleet_status(master):
    result = dpdctl(master, "status", "--json")
    return json.loads(result.stdout)["nodes"] if result.stdout else {}


def wait_fleet(master, check, what, timeout=15):
    """The fleet's status once ``check(status)`` holds."""
    def ready():
        nodes = fleet_status(master)
        return check(nodes) and nodes
    return wait_for(ready, timeout=timeout,
                    what=lambda: "%s: %s" % (what, fleet_status(master)))


def running_pid(nodes, node, name):
    entry = nodes.get(node, {}).get("procs", {}).get(name, {})
    return entry.get("pid") if entry.get("state") == "running" else None


def all_running(nodes):
    return all(running_pid(nodes, n, p) for n, p in (
        ("node1", "a"), ("node1", "talk"), ("node2", "b")))


def test_status_lists_every_node_and_process(cluster):
    master, node1, node2 = cluster
    nodes = wait_fleet(master, all_running, "every process running")
    assert running_pid(nodes, "node1", "a") == node1.wait_running("a")
    assert running_pid(nodes, "node2", "b") == node2.wait_running("b")
    assert nodes["node1"]["liveness"] == "up" and nodes["node1"]["in_sync"]
    assert nodes["node3"]["liveness"] == "never seen"
    assert nodes["node3"]["reason"] == "no report from this node yet"
    result = dpdctl(master, "status")
    assert result.returncode == 1  # node3 never seen
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "LIVENESS", "NAME", "STATE"]
    assert lines[1].split()[:3] == ["node3", "*never", "seen"]
    pid = str(running_pid(nodes, "node2", "b"))
    assert ["node2", "up", "b", "running", pid] in [l.split()[:5]
                                                    for l in lines]
    # How each node's worker groups process trees, under the table.
    tree = nodes["node1"]["tree"]
    assert tree["mechanism"] in ("cgroup v2", "cgroup v1 (freezer)",
                                 "cgroup v1 (pids)", "process group")
    assert "node1: " + tree_line(tree) in lines
    assert dpdctl(master, "status", "node1", "node2").returncode == 0


def test_restart_stop_start_tail_through_the_master(cluster):
    master, node1, node2 = cluster
    nodes = wait_fleet(master, all_running, "every process running")
    a, b = running_pid(nodes, "node1", "a"), running_pid(nodes, "node2", "b")
    result = dpdctl(master, "restart", "node1", "a")
    assert result.returncode == 0, result
    new = int(result.stdout.split("pid")[1])
    assert new != a and is_alive(new) and not is_alive(a)
    assert node2.wait_running("b") == b
    assert dpdctl(master, "stop", "node1", "a").returncode == 0
    nodes = wait_fleet(master, lambda n: n["node1"]["procs"]["a"].get("held"),
                       "a stopped by operator")
    assert not is_alive(new)
    result = dpdctl(master, "status", "node1")
    assert result.returncode == 1 and "stopped by operator" in result.stdout
    assert dpdctl(master, "start", "node1", "a").returncode == 0
    wait_fleet(master, lambda n: running_pid(n, "node1", "a"), "a again")
    wait_for(lambda: "two" in dpdctl(master, "tail", "node1", "talk").stdout,
             what="talk's output")
    result = dpdctl(master, "tail", "node1", "talk", "-n", "1")
    assert result.stdout.splitlines() == ["two"]


def test_a_rejected_list_shows_why(cluster):
    master, node1, node2 = cluster
    wait_fleet(master, all_running, "every process running")
    nodes = dict(master.nodes, node2=[node2.proc("b", "/bin/sleep", "8204",
                                                 user="no-such-user-8204")])
    master.write(nodes=nodes)
    # Until its client's next report the node merely looks behind.
    status = wait_fleet(master, lambda n: "rejected" in (
        n["node2"]["reason"] or ""), "node2's refusal")
    assert status["node2"]["in_sync"] is False
    assert 'rejected its list' in status["node2"]["reason"]
    assert 'unknown user "no-such-user-8204"' in status["node2"]["reason"]


def test_a_silent_node_turns_late_then_down(cluster):
    master, node1, node2 = cluster
    wait_fleet(master, lambda n: n["node2"]["liveness"] == "up", "node2 up")
    node2.client.kill()
    node2.stop(signal.SIGKILL)
    wait_fleet(master, lambda n: n["node2"]["liveness"] == "late",
               "node2 late", timeout=fleet.LATE_INTERVALS * INTERVAL + 3)
    wait_fleet(master, lambda n: n["node2"]["liveness"] == "down",
               "node2 down", timeout=SILENT_AFTER + 3)
    result = dpdctl(master, "restart", "node2", "b")
    assert result.returncode == 1
    assert result.stderr.startswith('dpdctl: node "node2" is down (nothing '
                                    "heard for ")


def test_errors_name_what_is_wrong(cluster, tmp_path):
    master, node1, node2 = cluster
    wait_fleet(master, all_running, "every process running")
    result = dpdctl(master, "restart", "node9", "a")
    assert (result.returncode, result.stderr.strip()) == (
        1, 'dpdctl: unknown node "node9"')
    result = dpdctl(master, "restart", "node1", "ghost")
    assert result.returncode == 1
    assert 'no process named "ghost" on this node' in result.stderr
    result = dpdctl(master, "restart", "node3", "x")
    assert result.stderr.strip() == 'dpdctl: node "node3" was never seen'
    assert dpdctl(master, "restart", "node1").returncode == 2
    assert dpdctl(master, "status", "node9").returncode == 1
    master.stop()
    result = dpdctl(master, "status")
    assert result.returncode == 3
    assert default_master_control(master.pid_file) in result.stderr
    # A clean exit removes the socket file: no wait for an answer.
    assert "no such socket" in result.stderr


def as_user(name):
    """A ``start_daemon`` wrapper: the command runs as ``name`` (its uid, its
    group, no other group), as the init script runs the client."""
    user = pwd.getpwnam(name)
    return ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid,
            "--clear-groups", "--"]


@requires_root
@pytest.mark.timeout(60)
def test_a_client_running_as_nobody(reachable_dir, marker):
    """The client needs no root: run as nobody, with its pid file and the
    worker's file in folders nobody owns (its own CONFIG root's), it writes
    its node's list into the worker's file, which the root worker applies,
    and relays dpdctl's commands to the worker (which serves the owner of
    its CONFIG: the file is nobody's once the client rewrote it)."""
    nobody = pwd.getpwnam("nobody")
    node = Node(reachable_dir / "node1", marker, "node1")
    for folder in ("worker", "client-run"):
        os.mkdir(str(node.dir / folder), 0o750)
        os.chown(str(node.dir / folder), nobody.pw_uid, nobody.pw_gid)
    node.config_path = str(node.dir / "worker" / "worker.json")
    master = Master(reachable_dir, marker, heartbeat=0.5,
                    nodes={"node1": [node.proc("a", "/bin/sleep", "8204")]})
    master.start()
    try:
        node.write([])
        node.start("--config-owner", "nobody")
        node.write_client(master.stats, master.updates, status_interval=INTERVAL,
                          pid_file=str(node.dir / "client-run" / "client.pid"))
        client = node.start_client(wrapper=as_user("nobody"))
        pid = node.wait_running("a")
        assert os.stat(node.config_path).st_uid == nobody.pw_uid
        assert read_json(node.config_path)["procs"] == master.nodes["node1"]
        wait_for(lambda: read_pid(str(node.dir / "client-run" / "client.pid"))
                 == client.pid, what="the client's pid file")
        with open("/proc/%d/status" % client.pid) as handle:
            uids = [line.split()[1:] for line in handle
                    if line.startswith("Uid:")][0]
        assert uids == [str(nobody.pw_uid)] * 4
        nodes = wait_fleet(master, lambda n: running_pid(n, "node1", "a"),
                           "node1's status through the client")
        assert running_pid(nodes, "node1", "a") == pid
        result = dpdctl(master, "restart", "node1", "a")
        assert result.returncode == 0, (result, node.log(), node.client_log())
        assert not is_alive(pid)
        assert "refused uid" not in node.log()
    finally:
        node.close()
        master.stop()
