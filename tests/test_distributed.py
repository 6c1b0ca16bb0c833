"""End to end: one dpd-masterd and several nodes (a dpd-clientd and a
dpd-workerd each, with their own files), all on 127.0.0.1 with free ports,
in one module-wide session. The tests run in file order and build on each
other's state, like an operator would: start, change, break, remove, add a
late node, restart the master.

Every supervised process carries the session's marker in its "env", so the
teardown ends them with the daemons.
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
import pwd

import pytest

from diprocd.master import nodes_file_path
from diprocd.ledger import read_view as read_status, status_path as status_file_path
from helpers import (BIN, MARKER_VAR, free_port, kill_marked, marked_env,
                     pid_alive, read_json, start_daemon, wait_for, write_json)

USER = pwd.getpwuid(os.geteuid()).pw_name
IS_ROOT = os.geteuid() == 0
UTS_HOSTNAME = "dpd-uts-" + uuid.uuid4().hex[:6]
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def sleeper(name, marker, seconds="1000"):
    return {"name": name, "run": "/bin/sleep", "args": [seconds],
            "user": USER, "env": {MARKER_VAR: marker}}


class Node:
    def __init__(self, cluster, name, node_name=None, uts_hostname=None):
        self.cluster = cluster
        self.name = name
        self.dir = os.path.join(cluster.dir, "node-" + name)
        os.makedirs(self.dir)
        self.conf = os.path.join(self.dir, "worker.json")
        self.worker_pid_file = os.path.join(self.dir, "worker.pid")
        self.status = status_file_path(self.worker_pid_file)
        self.client_conf = os.path.join(self.dir, "client.json")
        self.client_log = os.path.join(self.dir, "client.log")
        self.worker_log = os.path.join(self.dir, "worker.log")
        write_json(self.conf, {"pid_file": self.worker_pid_file, "procs": []})
        write_json(self.client_conf, {
            "pid_file": os.path.join(self.dir, "client.pid"),
            "master_stats": cluster.stats, "master_updates": cluster.updates,
            "node_name": node_name or name, "conf_file": self.conf,
            "status_interval": 0.5})
        self.uts_hostname = uts_hostname
        self.worker = self.client = None

    def start(self):
        self.worker = start_daemon("dpd-workerd", self.cluster.marker,
                                   ["-f", "-v", self.conf], self.worker_log)
        if self.uts_hostname:
            # A client in its own UTS namespace: "%H" is that hostname.
            script = 'hostname "$1" && shift && exec "$@"'
            log = open(self.client_log, "ab")
            self.client = subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", script, "sh",
                 self.uts_hostname, sys.executable,
                 os.path.join(BIN, "dpd-clientd"), "-f", "-v",
                 self.client_conf],
                env=marked_env(self.cluster.marker), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
            log.close()
        else:
            self.client = start_daemon("dpd-clientd", self.cluster.marker,
                                       ["-f", "-v", self.client_conf],
                                       self.client_log)
        self.started = time.time()

    def running(self):
        """{process name: pid} of the processes running on this node."""
        status = read_status(self.status) or {"procs": {}}
        return {name: entry["pid"] for name, entry in status["procs"].items()
                if entry.get("state") == "running" and entry.get("pid")
                and pid_alive(entry["pid"])}

    def wait_running(self, names, timeout=10):
        names = set(names)
        return wait_for(lambda: set(self.running()) == names and
                        self.running(), timeout=timeout,
                        what="node %s running exactly %s (has %s)"
                        % (self.name, sorted(names), sorted(self.running())))

    def conf_bytes(self):
        with open(self.conf, "rb") as handle:
            return handle.read()

    def client_log_text(self):
        with open(self.client_log) as handle:
            return handle.read()


class Cluster:
    def __init__(self, directory, marker):
        self.dir = directory
        self.marker = marker
        self.stats = "tcp://127.0.0.1:%d" % free_port()
        self.updates = "tcp://127.0.0.1:%d" % free_port()
        self.master_conf = os.path.join(directory, "master.json")
        self.master_log = os.path.join(directory, "master.log")
        self.master_pid_file = os.path.join(directory, "master.pid")
        self.nodes = {}
        self.master = None
        self.lists = {}

    def write_master(self, lists=None):
        if lists is not None:
            self.lists = lists
        write_json(self.master_conf, {
            "pid_file": self.master_pid_file, "log_file": self.master_log,
            "master_stats": self.stats, "master_updates": self.updates,
            "heartbeat": 1, "silent_after": 3, "nodes": self.lists})

    def start_master(self):
        self.master = start_daemon("dpd-masterd", self.marker,
                                   ["-f", "-v", self.master_conf],
                                   self.master_log)
        self.master_started = time.monotonic()

    def stop_master(self):
        self.master.send_signal(signal.SIGTERM)
        assert self.master.wait(timeout=10) == 0
        assert not os.path.exists(self.master_pid_file)

    def master_log_text(self):
        with open(self.master_log) as handle:
            return handle.read()

    def add_node(self, name, **kwargs):
        node = Node(self, name, **kwargs)
        self.nodes[name] = node
        return node

    def master_view(self):
        try:
            return read_json(nodes_file_path(self.master_pid_file))
        except (OSError, ValueError):
            return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = "dpdtest-" + uuid.uuid4().hex[:12]
    cluster = Cluster(str(tmp_path_factory.mktemp("cluster")), marker)
    lists = {
        "node1": [sleeper("n1.a", marker), sleeper("n1.b", marker)],
        "node10": [sleeper("n10.a", marker)],
        "node2": [sleeper("n2.a", marker)],
        "late": [sleeper("late.a", marker)],
    }
    cluster.add_node("node1")
    cluster.add_node("node10")
    cluster.add_node("node2")
    if IS_ROOT and _can_unshare_uts():
        lists[UTS_HOSTNAME] = [sleeper("uts.a", marker)]
        cluster.add_node("uts", node_name="%H", uts_hostname=UTS_HOSTNAME)
    cluster.write_master(lists)
    # One node's client starts before the master, the others just after.
    cluster.nodes["node2"].start()
    cluster.start_master()
    for name, node in cluster.nodes.items():
        if node.client is None:
            node.start()
    yield cluster
    kill_marked(marker)


def _can_unshare_uts():
    return subprocess.run(["unshare", "--uts", "true"],
                          capture_output=True).returncode == 0


def names(procs):
    return [p["name"] for p in procs]


def test_each_node_runs_exactly_its_processes(cluster):
    for node in cluster.nodes.values():
        expected = cluster.lists[node.uts_hostname or node.name]
        node.wait_running(names(expected))
        assert read_json(node.conf)["procs"] == expected


def test_percent_h_is_the_hostname_in_the_client_uts_namespace(cluster):
    if "uts" not in cluster.nodes:
        pytest.skip("needs root and unshare --uts")
    node = cluster.nodes["uts"]
    node.wait_running(["uts.a"])
    assert 'node "%s"' % UTS_HOSTNAME in node.client_log_text()


def test_status_flows_back_to_the_master(cluster):
    def all_seen():
        view = cluster.master_view()
        if not view:
            return False
        for node in cluster.nodes.values():
            entry = view["nodes"].get(node.uts_hostname or node.name)
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
    node1.wait_running(["n1.a", "n1.b"])
    before = {name: (node.conf_bytes(), node.running())
              for name, node in cluster.nodes.items()}
    lists = dict(cluster.lists)
    lists["node10"] = lists["node10"] + [sleeper("n10.b", cluster.marker)]
    cluster.write_master(lists)
    node10.wait_running(["n10.a", "n10.b"])
    assert node10.running()["n10.a"] == before["node10"][1]["n10.a"]
    for name, node in cluster.nodes.items():
        if name != "node10":
            assert node.conf_bytes() == before[name][0], name
            assert node.running() == before[name][1], name


def test_an_invalid_master_file_changes_nothing(cluster):
    before = {name: (node.conf_bytes(), node.running())
              for name, node in cluster.nodes.items()}
    good_lists = cluster.lists
    with open(cluster.master_conf, "w") as handle:  # in-place, broken
        handle.write('{"nodes": {"node1": [')
    wait_for(lambda: "invalid master file" in cluster.master_log_text(),
             timeout=5, what="the master to log the invalid file")
    bad = dict(good_lists, node1=[{"name": "x", "run": "relative"}])
    cluster.write_master(bad)
    wait_for(lambda: 'process "x": field "run"' in cluster.master_log_text(),
             timeout=5, what="the master to log the bad process")
    # Two heartbeats later, nothing has moved anywhere.
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        for name, node in cluster.nodes.items():
            assert node.conf_bytes() == before[name][0], name
        time.sleep(0.1)
    for name, node in cluster.nodes.items():
        assert node.running() == before[name][1], name
    cluster.write_master(good_lists)
    assert cluster.master.poll() is None


def test_a_removed_node_has_its_processes_stopped(cluster):
    node2 = cluster.nodes["node2"]
    pids = list(node2.running().values())
    assert pids
    lists = dict(cluster.lists)
    del lists["node2"]
    cluster.write_master(lists)
    wait_for(lambda: read_json(node2.conf)["procs"] == [], timeout=5,
             what="node2's worker file to be emptied")
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=15,
             what="node2's processes to stop")
    assert 'node "node2" removed' in cluster.master_log_text()
    # The others are untouched.
    cluster.nodes["node1"].wait_running(["n1.a", "n1.b"], timeout=1)


def test_a_client_started_late_gets_its_list_within_a_second(cluster):
    wait_for(lambda: time.monotonic() - cluster.master_started >= 10,
             timeout=15, interval=0.1, what="the master to be up for 10 s")
    node = cluster.add_node("late")
    node.start()
    node.wait_running(["late.a"])
    lines = node.client_log_text().splitlines()

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
    before = {name: (node.conf_bytes(), os.stat(node.conf).st_mtime_ns,
                     node.running())
              for name, node in cluster.nodes.items()}
    old_epoch = cluster.master_view()["epoch"]
    cluster.stop_master()
    cluster.start_master()

    def all_in_sync_with_new_master():
        view = cluster.master_view()
        if not view or view["epoch"] == old_epoch:
            return False
        return all(view["nodes"].get(n.uts_hostname or n.name, {})
                   .get("in_sync") for n in cluster.nodes.values()
                   if n.name != "node2")
    wait_for(all_in_sync_with_new_master, timeout=10,
             what="every node to hold the new master's lists")
    for name, node in cluster.nodes.items():
        conf_bytes, mtime, running = before[name]
        assert node.conf_bytes() == conf_bytes, name
        assert os.stat(node.conf).st_mtime_ns == mtime, name
        assert node.running() == running, name


def test_daemons_stop_cleanly(cluster):
    cluster.stop_master()
    for node in cluster.nodes.values():
        node.client.send_signal(signal.SIGTERM)
        assert node.client.wait(timeout=10) == 0
