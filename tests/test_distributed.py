"""End to end: one dpd-masterd and several nodes (a dpd-clientd and a
dpd-workerd each, with their own files), all on 127.0.0.1 with free ports.

Each test gets a cluster of its own (the ``cluster`` fixture), started as an
operator would and waited for until every node runs exactly its list:
node2's client starts before the master, the others just after it; as root
with ``unshare``, one more node's client runs in a UTS namespace of its own
and is named "%H". Every process carries the test's marker, so the marker
fixture ends them all, and nothing else.
"""

import functools
import os
import pwd
import re
import signal
import subprocess
import time
import uuid

import pytest

from diprocd.kernel import is_alive
from helpers import Master, Node, process_doc, read_json, wait_for

USER = pwd.getpwuid(os.geteuid()).pw_name
IS_ROOT = os.geteuid() == 0
UTS_HOSTNAME = "dpd-uts-" + uuid.uuid4().hex[:6]
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def sleeper(name, marker, seconds="1000"):
    return process_doc(marker, name, "/bin/sleep", seconds, user=USER)


@functools.lru_cache(maxsize=None)
def can_unshare_uts():
    return IS_ROOT and subprocess.run(["unshare", "--uts", "true"],
                                      capture_output=True).returncode == 0


def uts_wrapper(hostname):
    """Run a command in a UTS namespace of its own named ``hostname``."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && '
            'exec "$@"', "sh", hostname]


class Cluster:
    """A master (heartbeat 1 s, silent after 3 s) and its nodes, each in a
    folder of its own under ``folder``."""

    def __init__(self, folder, marker):
        self.dir = folder
        self.marker = marker
        self.master = Master(folder, marker, heartbeat=1, silent_after=3)
        self.nodes = {}  # label -> Node; a node's name at the master may differ
        self.wrappers = {}  # label -> the client's wrapper

    @property
    def lists(self):
        return self.master.nodes

    def add_node(self, label, name=None, client_name=None, wrapper=None):
        """A node with an empty worker file and its client's file."""
        node = Node(os.path.join(self.dir, "node-" + label), self.marker,
                    name or label)
        node.write([])
        node.write_client(self.master.stats, self.master.updates,
                          node_name=client_name or node.name)
        self.nodes[label] = node
        self.wrappers[label] = wrapper
        return node

    def start_node(self, label):
        """Its worker, and once the worker watches its file, its client.
        (A worker misses a rewrite of its file made while it starts: see
        test_worker.py::test_a_write_while_the_worker_starts_is_applied.)"""
        node = self.nodes[label]
        node.start()
        node.start_client(self.wrappers[label])
        return node

    def wait_converged(self):
        for node in self.nodes.values():
            node.wait_only_running(names(self.lists[node.name]))

    def stop_master(self):
        assert self.master.stop() == 0
        assert not os.path.exists(self.master.pid_file)

    def close(self):
        for node in self.nodes.values():
            node.close()
        if self.master.daemon and self.master.daemon.poll() is None:
            self.master.daemon.kill()
            self.master.daemon.wait()


@pytest.fixture
def cluster(tmp_path, marker):
    cluster = Cluster(str(tmp_path), marker)
    lists = {
        "node1": [sleeper("n1.a", marker), sleeper("n1.b", marker)],
        "node10": [sleeper("n10.a", marker)],
        "node2": [sleeper("n2.a", marker)],
        "late": [sleeper("late.a", marker)],
    }
    for label in ("node1", "node10", "node2"):
        cluster.add_node(label)
    if can_unshare_uts():
        lists[UTS_HOSTNAME] = [sleeper("uts.a", marker)]
        cluster.add_node("uts", name=UTS_HOSTNAME, client_name="%H",
                         wrapper=uts_wrapper(UTS_HOSTNAME))
    cluster.master.write(lists)
    # One node's client starts before the master, the others just after.
    cluster.start_node("node2")
    cluster.master.start()
    for label in cluster.nodes:
        if cluster.nodes[label].client is None:
            cluster.start_node(label)
    cluster.wait_converged()
    yield cluster
    cluster.close()


def names(procs):
    return [p["name"] for p in procs]


def test_each_node_runs_exactly_its_processes(cluster):
    for node in cluster.nodes.values():
        expected = cluster.lists[node.name]
        node.wait_only_running(names(expected))
        assert read_json(node.config_path)["procs"] == expected


@pytest.mark.skipif(not can_unshare_uts(), reason="needs root and unshare --uts")
def test_percent_h_is_the_hostname_in_the_client_uts_namespace(cluster):
    node = cluster.nodes["uts"]
    node.wait_only_running(["uts.a"])
    assert 'node "%s"' % UTS_HOSTNAME in node.client_log()


def test_status_flows_back_to_the_master(cluster):
    def all_seen():
        view = cluster.master.view()
        if not view:
            return False
        for node in cluster.nodes.values():
            entry = view["nodes"].get(node.name)
            if not entry or not entry["in_sync"] or not entry["status"]:
                return False
            running = {n for n, p in entry["status"]["procs"].items()
                       if p["state"] == "running"}
            if running != set(node.running()):
                return False
        return view
    wait_for(all_seen, timeout=10, what="every node's status at the master")


def test_a_change_reaches_the_right_node_only(cluster):
    node1, node10 = cluster.nodes["node1"], cluster.nodes["node10"]
    node1.wait_only_running(["n1.a", "n1.b"])
    before = {label: (node.conf_bytes(), node.running())
              for label, node in cluster.nodes.items()}
    lists = dict(cluster.lists)
    lists["node10"] = lists["node10"] + [sleeper("n10.b", cluster.marker)]
    cluster.master.write(lists)
    node10.wait_only_running(["n10.a", "n10.b"])
    assert node10.running()["n10.a"] == before["node10"][1]["n10.a"]
    for label, node in cluster.nodes.items():
        if label != "node10":
            assert node.conf_bytes() == before[label][0], label
            assert node.running() == before[label][1], label


def test_an_invalid_master_file_changes_nothing(cluster):
    before = {label: (node.conf_bytes(), node.running())
              for label, node in cluster.nodes.items()}
    good_lists = cluster.lists
    with open(cluster.master.config_path, "w") as handle:  # in-place, broken
        handle.write('{"nodes": {"node1": [')
    wait_for(lambda: "invalid master file" in cluster.master.log(),
             timeout=5, what="the master to log the invalid file")
    bad = dict(good_lists, node1=[{"name": "x", "run": "relative"}])
    cluster.master.write(bad)
    wait_for(lambda: 'process "x": field "run"' in cluster.master.log(),
             timeout=5, what="the master to log the bad process")
    # Two heartbeats later, nothing has moved anywhere.
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        for label, node in cluster.nodes.items():
            assert node.conf_bytes() == before[label][0], label
        time.sleep(0.1)
    for label, node in cluster.nodes.items():
        assert node.running() == before[label][1], label
    cluster.master.write(good_lists)
    assert cluster.master.daemon.poll() is None


def test_a_removed_node_has_its_processes_stopped(cluster):
    node2 = cluster.nodes["node2"]
    pids = list(node2.running().values())
    assert pids
    lists = dict(cluster.lists)
    del lists["node2"]
    cluster.master.write(lists)
    wait_for(lambda: read_json(node2.config_path)["procs"] == [], timeout=5,
             what="node2's worker file to be emptied")
    wait_for(lambda: not any(is_alive(pid) for pid in pids), timeout=15,
             what="node2's processes to stop")
    assert 'node "node2" removed' in cluster.master.log()
    # The others are untouched.
    cluster.nodes["node1"].wait_only_running(["n1.a", "n1.b"], timeout=1)


def test_a_client_started_late_gets_its_list_within_a_second(cluster):
    wait_for(lambda: time.monotonic() - cluster.master.started >= 10,
             timeout=15, interval=0.1, what="the master to be up for 10 s")
    cluster.add_node("late")
    node = cluster.start_node("late")
    node.wait_only_running(["late.a"])
    lines = node.client_log().splitlines()

    def when(pattern):
        for line in lines:
            if pattern in line:
                stamp = LOG_TIME.match(line).group(1)
                return time.mktime(time.strptime(stamp[:19],
                                                 "%Y-%m-%d %H:%M:%S")) + \
                    int(stamp[20:]) / 1000.0
        raise AssertionError("no %r in the client log" % pattern)
    assert when("wrote ") - when("listening to") < 1.0


def test_master_restart_changes_nothing_running(cluster):
    before = {label: (node.conf_bytes(), os.stat(node.config_path).st_mtime_ns,
                      node.running())
              for label, node in cluster.nodes.items()}
    old_epoch = wait_for(cluster.master.view,
                         what="the master's nodes file")["epoch"]
    cluster.stop_master()
    cluster.master.start()

    def all_in_sync_with_new_master():
        view = cluster.master.view()
        if not view or view["epoch"] == old_epoch:
            return False
        return all(view["nodes"].get(node.name, {}).get("in_sync")
                   for node in cluster.nodes.values())
    wait_for(all_in_sync_with_new_master, timeout=10,
             what="every node to hold the new master's lists")
    for label, node in cluster.nodes.items():
        conf_bytes, mtime, running = before[label]
        assert node.conf_bytes() == conf_bytes, label
        assert os.stat(node.config_path).st_mtime_ns == mtime, label
        assert node.running() == running, label


def test_daemons_stop_cleanly(cluster):
    cluster.stop_master()
    for node in cluster.nodes.values():
        node.client.send_signal(signal.SIGTERM)
        assert node.client.wait(timeout=10) == 0
