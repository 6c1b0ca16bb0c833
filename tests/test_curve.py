"""CURVE: a real master and real nodes on 127.0.0.1 with key files made by
``dpdctl keygen``; who gets a list, who may report, who may steer, and
what a node can read of another node's list."""

import os
import shutil
import signal
import time

import pytest
import simplejson as json
import zmq

from diprocd import ctl, keys, protocol
from diprocd.errors import ConfigError, ProtocolError
from helpers import (Master, Node, holds_within, read_text, run_command,
                     wait_for, write_json)

SECRET = "SMTP_PASSWD=curve-secret-4242"
NOTHING_WITHIN = 5.0  # "a refused node gets nothing in 5 s"


def keygen(folder, name):
    """``dpdctl keygen NAME --dir folder``; the (public, secret) paths."""
    os.makedirs(folder, exist_ok=True)
    assert ctl.main(["keygen", name, "--dir", str(folder)]) == 0
    return (os.path.join(folder, name + ".key"),
            os.path.join(folder, name + ".key_secret"))


class Keys:
    """Key pairs under ``folder``/keys and the master's clients folder."""

    def __init__(self, folder, *names):
        self.dir = os.path.join(str(folder), "keys")
        self.clients = os.path.join(str(folder), "clients")
        os.makedirs(self.clients)
        self.pairs = {name: keygen(self.dir, name)
                      for name in ("master",) + names}

    def allow(self, name):
        shutil.copy(self.pairs[name][0], self.clients)

    def deny(self, name):
        os.unlink(os.path.join(self.clients, name + ".key"))

    def public(self, name):
        return self.pairs[name][0]

    def secret(self, name):
        return self.pairs[name][1]

    def master_settings(self):
        return {"curve_secret_key": self.secret("master"),
                "curve_clients_dir": self.clients}

    def client_settings(self, name, master="master"):
        return {"curve_secret_key": self.secret(name),
                "curve_master_key": self.public(master)}

    def pair(self, name):
        return keys.read_key_file(self.secret(name), name, secret=True)


@pytest.fixture
def secured(tmp_path, marker):
    """A master with CURVE; node1 and node2 allowed, node3 in the master
    file but its key not allowed; node1 and node2 joined."""
    ring = Keys(tmp_path, "node1", "node2", "node3")
    ring.allow("node1")
    ring.allow("node2")
    nodes = {name: Node(tmp_path / name, marker, name)
             for name in ("node1", "node2", "node3")}
    master = Master(tmp_path, marker, heartbeat=0.5, nodes={
        "node1": [nodes["node1"].proc("a", "/bin/sleep", "8301",
                                      env={"SMTP_PASSWD": SECRET})],
        "node2": [nodes["node2"].proc("b", "/bin/sleep", "8302",
                                      env={"SMTP_PASSWD": SECRET})],
        "node3": [nodes["node3"].proc("c", "/bin/sleep", "8303")]},
        **ring.master_settings())
    master.start()
    for name in ("node1", "node2"):
        nodes[name].join(master, **ring.client_settings(name))
    yield master, nodes, ring
    for node in nodes.values():
        node.close()
    master.stop()


def master_sees(master, node):
    view = master.view() or {"nodes": {}}
    return view["nodes"].get(node)


def test_allowed_nodes_get_their_lists(secured):
    master, nodes, _ = secured
    nodes["node1"].wait_only_running(["a"])
    nodes["node2"].wait_only_running(["b"])
    wait_for(lambda: master_sees(master, "node1") and master_sees(
        master, "node1")["in_sync"], what="node1 in sync at the master")
    assert "CURVE" in nodes["node1"].client_log()


def test_a_node_whose_key_is_not_allowed_gets_nothing(secured):
    master, nodes, ring = secured
    node3 = nodes["node3"]
    node3.join(master, **ring.client_settings("node3"))
    assert not holds_within(lambda: node3.running(), NOTHING_WITHIN)
    assert master_sees(master, "node3") is None  # its hello never counted
    wait_for(lambda: "refused a connection: a node key %s is not in %s" % (
        ring.pair("node3").public.decode(), ring.clients) in master.log(),
        what="the refusal in the master's log")


def test_a_client_given_a_wrong_master_key_gets_nothing(secured, tmp_path):
    master, nodes, ring = secured
    impostor_public, _ = keygen(tmp_path / "other", "master")
    node3 = nodes["node3"]
    ring.allow("node3")
    master.write()  # reload with node3's key allowed
    os.kill(master.daemon.pid, signal.SIGHUP)
    node3.write([])
    node3.start()
    node3.write_client(master.stats, master.updates,
                       curve_secret_key=ring.secret("node3"),
                       curve_master_key=impostor_public)
    node3.start_client()
    assert not holds_within(lambda: node3.running(), NOTHING_WITHIN)
    assert master_sees(master, "node3") is None
    assert node3.client_log().count("the handshake with the master at %s "
                                    "failed (is %s the master's public key?)"
                                    % (master.updates, impostor_public)) == 1


def test_a_key_added_then_removed_takes_effect_on_reload(secured):
    master, nodes, ring = secured
    node1, node3 = nodes["node1"], nodes["node3"]
    pid_a = node1.wait_only_running(["a"])["a"]
    node3.join(master, **ring.client_settings("node3"))
    assert not holds_within(lambda: node3.running(), 1.0)
    ring.allow("node3")
    result = run_command("dpdctl", ["--master", master.config_path,
                                    "reload"], master.marker)
    assert result.returncode == 0, result.stderr
    node3.wait_only_running(["c"], timeout=15)
    assert node1.running() == {"a": pid_a}  # nobody else disturbed
    assert 'dpdctl reload: node key "node3" allowed' in master.log()
    # Removed: its reports are not recorded any more and a new list does
    # not reach it, though its connection was made before.
    ring.deny("node3")
    os.kill(master.daemon.pid, signal.SIGHUP)
    wait_for(lambda: 'refused a report: a report for node "node3" sent with '
             "a key no longer allowed" in master.log(),
             what="node3's reports refused")
    assert 'SIGHUP: node key "node3" removed: refused from now on' in \
        master.log()
    dropped_at = time.time()
    wait_for(lambda: (master.view() or {}).get("written", 0) > dropped_at + 1,
             what="the nodes file written after the drop")
    seen = master_sees(master, "node3")["last_seen"]
    master.write(nodes=dict(master.nodes, node3=[
        node3.proc("c2", "/bin/sleep", "8304")]))
    assert not holds_within(lambda: "c2" in node3.running(), 3.0)
    assert master_sees(master, "node3")["last_seen"] == seen
    # ... and its next connection is refused.
    node3.client.kill()
    node3.client.wait()
    node3.start_client()
    assert not holds_within(lambda: "c2" in node3.running(), 2.0)
    assert node1.running() == {"a": pid_a}


def connected(kind, ring, name, endpoint, subscribe=None):
    """A raw socket with ``name``'s keys, connected to the master."""
    context = zmq.Context.instance()
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    keys.apply_to_socket(sock, zmq, ring.pair(name),
                         server_key=ring.pair("master").public)
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    sock.connect(endpoint)
    return sock


def test_a_node_cannot_report_under_another_nodes_name(secured):
    master, nodes, ring = secured
    wait_for(lambda: master_sees(master, "node2"), what="node2 reported")
    nodes["node2"].client.kill()  # its own reports stop
    nodes["node2"].client.wait()
    forged = protocol.encode_report(protocol.Report(
        protocol.KIND_STATUS, "node2", status={"procs": {"forged": {}}}))
    push = connected(zmq.PUSH, ring, "node1", master.stats)
    try:
        for _ in range(20):
            push.send_multipart(forged)
        wait_for(lambda: 'a report for node "node2" sent with the key of '
                 'node "node1"' in master.log(), what="the forgery dropped")
    finally:
        push.close()
    status = master_sees(master, "node2")["status"] or {}
    assert "forged" not in json.dumps(status)


def test_an_allowed_node_cannot_read_another_nodes_list(secured):
    master, nodes, ring = secured
    sub = connected(zmq.SUB, ring, "node1", master.updates, subscribe=b"")
    opener = keys.Opener(ring.pair("node1").secret,
                         ring.pair("master").public)
    try:
        def node2_message():
            while sub.poll(100):
                frames = sub.recv_multipart()
                if frames[0] == protocol.topic("node2"):
                    return frames
            return None
        frames = wait_for(node2_message, what="node2's list on the wire")
    finally:
        sub.close()
    assert SECRET.encode() not in b"".join(frames)
    with pytest.raises(ProtocolError):
        opener.open(frames[2])
    # node1's own key opens node2's?  No; node2's opens it.
    own = keys.Opener(ring.pair("node2").secret, ring.pair("master").public)
    assert SECRET.encode() in own.open(frames[2])


# -- dpdctl over tcp ---------------------------------------------------------------

def test_dpdctl_over_tcp_takes_operator_keys_only(tmp_path, marker):
    ring = Keys(tmp_path, "node1", "alice", "mallory")
    operators = tmp_path / "operators"
    operators.mkdir()
    shutil.copy(ring.public("alice"), operators)
    control = "tcp://127.0.0.1:%d" % __import__("helpers").free_port()
    master = Master(tmp_path, marker, nodes={"node1": []},
                    master_control=control,
                    curve_operators_dir=str(operators),
                    **ring.master_settings())
    master.start()
    try:
        def dpdctl(*args):
            return run_command("dpdctl", ["--connect", control] + list(args)
                               + ["status", "--json"], marker)
        result = wait_for(lambda: (lambda r: r.returncode in (0, 1) and r)(
            dpdctl("--key", ring.secret("alice"), "--master-key",
                   ring.public("master"))), timeout=15,
            what="dpdctl status as alice")
        assert "node1" in json.loads(result.stdout)["nodes"]
        # On the master, its public key comes from the master file.
        result = run_command("dpdctl", ["--master", master.config_path,
                                        "--key", ring.secret("alice"),
                                        "status"], marker)
        assert result.returncode in (0, 1), result.stderr
        refused = dpdctl("--key", ring.secret("mallory"), "--master-key",
                         ring.public("master"))
        assert refused.returncode == ctl.EXIT_UNREACHABLE
        assert "curve_operators_dir" in refused.stderr
        nokey = dpdctl("--master-key", ring.public("master"))
        assert nokey.returncode == ctl.EXIT_UNREACHABLE
        assert "--key" in nokey.stderr
        wait_for(lambda: "an operator key %s is not in" % ring.pair(
            "mallory").public.decode() in master.log(),
            what="mallory refused in the master's log")
    finally:
        master.stop()


def test_a_tcp_control_endpoint_without_curve_is_refused(tmp_path, marker):
    master = Master(tmp_path, marker, nodes={},
                    master_control="tcp://127.0.0.1:%d"
                    % __import__("helpers").free_port())
    master.write()
    result = run_command("dpd-masterd", ["--check", master.config_path])
    assert result.returncode == 1
    assert 'key "master_control"' in result.stderr + result.stdout
    assert "curve_operators_dir" in result.stderr + result.stdout


# -- keygen ---------------------------------------------------------------------------

def test_keygen_writes_a_pair_in_zmq_auth_format_and_never_overwrites(
        tmp_path):
    public, secret = keygen(tmp_path, "node7")
    assert os.stat(public).st_mode & 0o777 == 0o644
    assert os.stat(secret).st_mode & 0o777 == 0o600
    import zmq.auth
    pub_key, none = zmq.auth.load_certificate(public)
    assert none is None
    assert zmq.auth.load_certificate(secret)[0] == pub_key
    assert keys.read_key_file(secret, "x", secret=True).public == pub_key
    before = open(secret, "rb").read()
    result = run_command("dpdctl", ["keygen", "node7", "--dir",
                                    str(tmp_path)])
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert open(secret, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["node7.key", "node7.key_secret"]


# -- warnings without CURVE -------------------------------------------------------

def test_without_curve_a_network_endpoint_is_warned_about(tmp_path, marker):
    master = Master(tmp_path, marker, nodes={},
                    master_stats="tcp://*:%d" % __import__("helpers")
                    .free_port())
    master.write()
    result = run_command("dpd-masterd", ["--check", master.config_path])
    assert "unauthenticated and readable" in result.stderr + result.stdout
    assert master.stats in result.stderr + result.stdout
    client = tmp_path / "client.json"
    write_json(str(client), {
        "pid_file": str(tmp_path / "c.pid"), "node_name": "n",
        "conf_file": str(tmp_path / "w.json"),
        "master_stats": "tcp://192.0.2.1:5001",
        "master_updates": "tcp://127.0.0.1:5002"})
    result = run_command("dpd-clientd", ["--check", str(client)])
    out = result.stderr + result.stdout
    assert "tcp://192.0.2.1:5001 is unauthenticated" in out
    assert "127.0.0.1:5002" not in out.split("unauthenticated")[0]


def test_is_local_endpoint():
    from diprocd.config import is_local_endpoint
    for local in ("ipc:///run/x", "inproc://x", "tcp://127.0.0.1:1",
                  "tcp://127.3.4.5:1", "tcp://[::1]:1", "tcp://localhost:1",
                  "tcp://lo:1", "tcp://[0:0:0:0:0:0:0:1]:1"):
        assert is_local_endpoint(local), local
    for exposed in ("tcp://*:1", "tcp://0.0.0.0:1", "tcp://10.0.0.1:1",
                    "tcp://master.example:1", "tcp://[::]:1", "ws://x:1"):
        assert not is_local_endpoint(exposed), exposed


def test_master_status_carries_the_warning(tmp_path, marker):
    """dpdctl status shows it: the master binds tcp://*: in a network
    namespace of this test's own (nothing else reaches it), dpdctl asks
    over the ipc control socket, which the namespace does not hide."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a network namespace)")
    from helpers import free_port, start_daemon
    master = Master(tmp_path, marker, nodes={},
                    master_stats="tcp://*:%d" % free_port())
    master.write()
    master.daemon = start_daemon(
        "dpd-masterd", marker, ["-f", "-v", master.config_path],
        master.log_path, wrapper=["unshare", "--net", "--"])
    try:
        def status():
            r = run_command("dpdctl", ["--master", master.config_path,
                                       "status"], marker)
            return r.returncode != ctl.EXIT_UNREACHABLE and r
        result = wait_for(status, what="dpdctl status")
        assert "warning: without CURVE, traffic on %s is unauthenticated" % (
            master.stats) in result.stderr
        assert "unauthenticated and readable" in read_text(master.log_path)
    finally:
        master.stop()


def test_a_key_that_is_not_z85_is_a_config_error(tmp_path):
    path = tmp_path / "bad.key_secret"
    path.write_text('curve\n    public-key = "%s"\n    secret-key = "%s"\n'
                    % ("#" * 40, "#" * 40))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is not a Z85 key"):
        keys.read_key_file(str(path), "key", secret=True)


def test_the_masters_own_key_changes_only_at_a_restart(secured, tmp_path):
    master, nodes, ring = secured
    pid_a = nodes["node1"].wait_only_running(["a"])["a"]
    _, other_secret = keygen(tmp_path / "other", "master")
    master.write(curve_secret_key=other_secret, nodes=dict(
        master.nodes, node1=master.nodes["node1"] + [
            nodes["node1"].proc("a2", "/bin/sleep", "8305")]))
    wait_for(lambda: "changes only at a restart" in master.log(),
             what="the refused key change in the master's log")
    # The whole change is refused (the last good configuration is kept):
    # node1 keeps its list and its connection.
    assert not holds_within(lambda: "a2" in nodes["node1"].running(), 1.5)
    assert nodes["node1"].running() == {"a": pid_a}
    master.write(curve_secret_key=ring.secret("master"))
    nodes["node1"].wait_only_running(["a", "a2"])


@pytest.mark.parametrize("case", ["secret readable by others",
                                  "key writable by group",
                                  "folder writable by others",
                                  "link to a key in an unsafe folder"])
def test_unsafe_key_files_are_refused(tmp_path, case):
    public, secret = keygen(tmp_path / "k", "node1")
    folder = tmp_path / "clients"
    folder.mkdir()
    shutil.copy(public, folder)
    if case == "secret readable by others":
        os.chmod(secret, 0o604)
        with pytest.raises(ConfigError, match="readable by others"):
            keys.read_key_file(secret, '"curve_secret_key"', secret=True)
    elif case == "key writable by group":
        os.chmod(str(folder / "node1.key"), 0o664)
        ring, warnings = keys.read_keyring(str(folder), "clients")
        assert ring.keys == {}  # that one node is refused, with why
        assert "writable by group" in warnings[0]
    elif case == "folder writable by others":
        os.chmod(str(folder), 0o777)
        with pytest.raises(ConfigError, match="writable by others"):
            keys.read_keyring(str(folder), "clients")
    else:
        # The folder passes, so its files are checked alone, but a link is
        # checked where it leads, with every folder on the way.
        unsafe = tmp_path / "open"
        unsafe.mkdir()
        os.chmod(str(unsafe), 0o777)
        shutil.copy(public, unsafe / "node2.key")
        os.symlink(str(unsafe / "node2.key"), str(folder / "node2.key"))
        ring, warnings = keys.read_keyring(str(folder), "clients")
        assert set(ring.keys) == {"node1"}
        assert "node2.key" in warnings[0] and "writable by others" in \
            warnings[0]


def test_dpdctl_keys_with_worker_are_a_usage_error(tmp_path):
    result = run_command("dpdctl", ["--worker", str(tmp_path / "w.json"),
                                    "--key", str(tmp_path / "k"), "status"])
    assert result.returncode == ctl.EXIT_USAGE
    assert "not --worker" in result.stderr


def test_an_operator_key_removed_is_refused_on_an_open_connection(
        tmp_path, marker):
    """ZAP checks a key at the handshake only: a connection made before
    the key's removal must not steer after it."""
    from helpers import free_port
    ring = Keys(tmp_path, "alice")
    operators = tmp_path / "operators"
    operators.mkdir()
    shutil.copy(ring.public("alice"), operators)
    control = "tcp://127.0.0.1:%d" % free_port()
    master = Master(tmp_path, marker, nodes={"node1": []},
                    master_control=control,
                    curve_operators_dir=str(operators),
                    **ring.master_settings())
    master.start()
    req = connected(zmq.REQ, ring, "alice", control)
    try:
        def ask():
            req.send(json.dumps({"v": 1, "cmd": "status"}).encode())
            return req.poll(5000) and json.loads(req.recv())
        assert wait_for(ask, timeout=15, what="alice's status")["ok"]
        os.unlink(str(operators / "alice.key"))
        os.kill(master.daemon.pid, signal.SIGHUP)
        wait_for(lambda: 'operator key "alice" removed' in master.log(),
                 what="the removal in the master's log")
        req.send(json.dumps({"v": 1, "cmd": "status"}).encode())
        assert not req.poll(2000)  # no answer on the open connection
        assert "a dpdctl request sent with an operator key no longer " \
            "allowed" in master.log()
    finally:
        req.close()
        master.stop()


def test_a_key_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    path = str(tmp_path / "k.key_secret")
    os.mkfifo(path, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        keys.read_key_file(path, "key", secret=True)


def test_a_node_status_with_junk_entries_is_not_as_desired():
    from diprocd import fleet
    assert not fleet.as_desired({"liveness": fleet.UP, "in_sync": True,
                                 "procs": {"x": 1}})
