"""End to end: what must not damage a node's worker file. A fake publisher
sending malformed and foreign messages, and a target folder that is full or
read-only (a small tmpfs in a private mount namespace, as root)."""

import json
import os
import signal
import socket
import subprocess

import pytest
import zmq

from diprocd import protocol
from diprocd.kernel import is_alive
from helpers import (Master, Node, client_doc, endpoint, marked_pids,
                     master_doc, read_bytes, read_json, read_text,
                     run_command, start_daemon, stop_daemon, wait_for,
                     worker_doc, write_json)

IS_ROOT = os.geteuid() == 0
PROC = {"name": "a", "run": "/bin/sleep", "args": ["1000"], "user": "root"}


def start_master(tmp_path, marker, nodes, heartbeat=1):
    master = Master(tmp_path, marker, nodes, heartbeat=heartbeat)
    master.start()
    return master


def start_node(tmp_path, marker, stats, updates):
    """A dpd-clientd for node1 on an empty worker file (no worker)."""
    node = Node(tmp_path, marker)
    node.write([])
    node.write_client(stats, updates)
    node.start_client()
    return node


def stop(*daemons):
    for daemon in daemons:
        assert stop_daemon(daemon) == 0


def test_malformed_messages_leave_the_worker_file_unchanged(tmp_path,
                                                            marker):
    stats, updates = endpoint(), endpoint()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pull = context.socket(zmq.PULL)
    pub.bind(updates)
    pull.bind(stats)
    node = start_node(tmp_path, marker, stats, updates)
    conf, client = node.config_path, node.client
    original = read_bytes(conf)

    def body(**fields):
        doc = {"v": 1, "node": "node1", "epoch": "fake", "seq": 1,
               "procs": [PROC]}
        doc.update(fields)
        return json.dumps(doc).encode()

    bad = [
        [b"node1\0", b"procs", b"{garbage"],
        [b"node1\0", b"procs", b"x" * (protocol.MAX_MESSAGE_BYTES + 1)],
        [b"node1\0", b"procs", body(node="node10")],
        [b"node1\0", b"procs", body(v=7)],
        [b"node1\0", b"procs", body(seq="one")],
        [b"node1\0", b"procs", body(procs=[{"name": "a", "run": "rel"}])],
        [b"node1\0", b"procs", body(procs=[dict(PROC, user="no-such-u")])],
        [b"node1\0", b"procs"],
        [b"node1\0", b"procs", b"\xff\xfe"],
        # Never delivered: another node's topic, and our name unterminated.
        [b"node10\0", b"procs", body(node="node10")],
        [b"node1", b"procs", body()],
        [b"node1x\0", b"procs", body(node="node1x")],
    ]
    expected = ["body: not JSON", "body: not UTF-8", "exceeds", "body names node",
                "unsupported protocol version", '"seq"',
                'field "run": must be an absolute path',
                'unknown user "no-such-u"', "expected 3 frames"]
    try:
        def all_dropped():
            for frames in bad:  # PUB drops until the client has joined
                pub.send_multipart(frames)
            return all(reason in node.client_log() for reason in expected)
        # 30 s: past 10 drops in 10 s the client logs a summary instead, so
        # a reason first delivered in a later round may wait a window.
        wait_for(all_dropped, timeout=30, interval=0.05,
                 what="the client to drop every malformed message")
        assert client.poll() is None
        assert read_bytes(conf) == original
        assert "foreign" not in node.client_log()  # filtered by the subscription
        # The channel itself works: a good message is applied.
        good = [b"node1\0", b"procs", body(epoch="fake2")]
        wait_for(lambda: pub.send_multipart(good) or
                 read_json(conf)["procs"] == [PROC], timeout=5,
                 what="the good message to be applied")
        # Hellos came in on the stats socket.
        assert pull.poll(2000)
        report = protocol.decode_report(pull.recv_multipart())
        assert report.node == "node1"
        stop(client)
    finally:
        pub.close(linger=0)
        pull.close(linger=0)
        context.term()


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount namespace, tmpfs)")
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_full_or_read_only_target_keeps_the_old_file(tmp_path, marker, fault):
    master = start_master(tmp_path, marker, {"node1": [PROC]})
    target = str(tmp_path / "target")
    os.mkdir(target)
    seed = str(tmp_path / "seed.json")
    write_json(seed, worker_doc(tmp_path, pid_file="/run/dpd-fault-test/w.pid",
                                log_file="/tmp/w.log"))
    original = read_bytes(seed)
    conf = os.path.join(target, "worker.json")
    # Outside the target: the client reads it under the tmpfs.
    client_conf = str(tmp_path / "client.json")
    write_json(client_conf, client_doc(
        tmp_path, master_stats=master.stats, master_updates=master.updates,
        conf_file=conf, status_interval=0.5))
    if fault == "full":
        # Fill the tmpfs to the last page: writing the new file must fail.
        setup = ('dd if=/dev/zero of="$D/filler" bs=4k >/dev/null 2>&1; '
                 'dd if=/dev/zero of="$D/filler2" bs=1 >/dev/null 2>&1; ')
    else:
        setup = 'mount -o remount,ro "$D" && '
    script = ('mount -t tmpfs -o size=256k,mode=0755 tmpfs "$D" && '
              'cp -p "$SEED" "$D/worker.json" && ' + setup +
              'exec "$@"')
    log_path = str(tmp_path / "client.log")
    client = start_daemon(
        "dpd-clientd", marker, ["-f", "-v", client_conf], log_path,
        extra_env={"D": target, "SEED": seed},
        wrapper=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 script, "sh"])
    # The test sees the client's tmpfs through /proc/<pid>/root.
    inside = "/proc/%d/root%s" % (client.pid, target)
    try:
        wait_for(lambda: "cannot write %s" % conf in read_text(log_path),
                 timeout=10, what="the client to fail writing")
        # Retried, and failing each time, the old file stays intact.
        wait_for(lambda: read_text(log_path).count("still: cannot write") >= 2,
                 timeout=10, what="two retries")
        assert read_bytes(os.path.join(inside, "worker.json")) == original
        leftovers = [n for n in os.listdir(inside)
                     if n not in ("worker.json", "filler", "filler2")]
        assert leftovers == []
        # Repair the folder: the next retry writes the list.
        if fault == "full":
            os.unlink(os.path.join(inside, "filler"))
        else:
            subprocess.run(["nsenter", "-t", str(client.pid), "-m", "mount",
                            "-o", "remount,rw", target], check=True)
        wait_for(lambda: read_json(os.path.join(inside, "worker.json"))
                 ["procs"] == [PROC], timeout=10,
                 what="the retried write to succeed")
        doc = read_json(os.path.join(inside, "worker.json"))
        assert doc["log_file"] == "/tmp/w.log"
        stop(client, master.daemon)
    finally:
        for proc in (client, master.daemon):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(IS_ROOT, reason="root ignores folder permissions; the "
                    "read-only tmpfs variant covers root")
def test_unwritable_folder_keeps_the_old_file(tmp_path, marker):
    master = start_master(tmp_path, marker,
                          {"node1": [dict(PROC, user=None)]})
    target = tmp_path / "target"
    target.mkdir()
    conf = str(target / "worker.json")
    write_json(conf, worker_doc(tmp_path))
    original = read_bytes(conf)
    os.chmod(str(target), 0o555)
    # The client's own files outside the read-only folder.
    node = Node(tmp_path, marker)
    node.write_client(master.stats, master.updates, conf_file=conf)
    client = node.start_client()
    try:
        wait_for(lambda: "cannot write" in node.client_log(), timeout=10,
                 what="the client to fail writing")
        assert read_bytes(conf) == original
        os.chmod(str(target), 0o755)
        wait_for(lambda: read_json(conf)["procs"] != [], timeout=10,
                 what="the retried write")
    finally:
        os.chmod(str(target), 0o755)
        for daemon in (client, master.daemon):
            stop_daemon(daemon)


def test_sighup_rereads_the_configs_and_second_instances_exit_0(tmp_path,
                                                                marker):
    master = start_master(
        tmp_path, marker, {"node1": [PROC], "node2": [dict(PROC, name="b")]})
    node = start_node(tmp_path, marker, master.stats, master.updates)
    conf, client = node.config_path, node.client
    client_conf, master_conf = node.client_config_path, master.config_path
    try:
        wait_for(lambda: read_json(conf)["procs"] == [PROC], timeout=10,
                 what="node1's list")
        # Second instances: "already running", exit 0, nothing touched.
        for command, path in (("dpd-masterd", master_conf),
                              ("dpd-clientd", client_conf)):
            result = run_command(command, ["-f", path], marker)
            assert result.returncode == 0
            assert "already running" in result.stdout
        # The client becomes node2 on SIGHUP.
        doc = read_json(client_conf)
        write_json(client_conf, dict(doc, node_name="node2"))
        client.send_signal(signal.SIGHUP)
        wait_for(lambda: [p["name"] for p in read_json(conf)["procs"]]
                 == ["b"], timeout=10, what="node2's list after SIGHUP")
        # An invalid client file on SIGHUP: logged, the last good one kept.
        with open(client_conf, "w") as handle:
            handle.write("{")
        client.send_signal(signal.SIGHUP)
        wait_for(lambda: "invalid client file" in node.client_log(), timeout=5,
                 what="the client to log its invalid file")
        # The master's SIGHUP with an invalid file: same.
        good = read_json(master_conf)
        with open(master_conf + ".new", "w") as handle:
            handle.write('{"nodes": 1}')
        os.rename(master_conf + ".new", master_conf)
        master.daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: master.log().count("invalid master file") >= 1,
                 timeout=5, what="master errors")
        write_json(master_conf, good)
        assert client.poll() is None and master.daemon.poll() is None
        assert [p["name"] for p in read_json(conf)["procs"]] == ["b"]
    finally:
        for daemon in (client, master.daemon):
            assert stop_daemon(daemon) == 0


def listening(port):
    """True while something listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def master_nodes(master):
    """The nodes in the master's nodes file, or {}."""
    return (master.view() or {}).get("nodes", {})


def test_changing_only_master_stats_then_a_list_reaches_the_node(tmp_path,
                                                                  marker):
    master = start_master(tmp_path, marker, {"node1": [PROC]})
    stats, updates = master.stats, master.updates
    node = start_node(tmp_path, marker, stats, updates)
    conf, client = node.config_path, node.client
    try:
        wait_for(lambda: read_json(conf)["procs"] == [PROC], timeout=10,
                 what="node1's first list")
        # Only the stats endpoint moves: the PUB socket stays as it is.
        new_stats = endpoint()
        master.write(master_stats=new_stats)
        wait_for(lambda: "stats on " + new_stats in master.log() or
                 "cannot bind" in master.log(), timeout=5,
                 what="the master to reload")
        # Later, a list change: published on the same endpoint, applied.
        proc2 = dict(PROC, args=["2000"])
        master.write({"node1": [proc2]})
        wait_for(lambda: read_json(conf)["procs"] == [proc2], timeout=5,
                 what="the changed list to reach node1")
        assert "cannot bind" not in master.log()
        assert "now publishing on %s, stats on %s" % (updates, new_stats) \
            in master.log()
        old_port = int(stats.rsplit(":", 1)[1])
        wait_for(lambda: not listening(old_port), timeout=5,
                 what="the old stats socket to be closed")
        # The client follows on SIGHUP: the master hears it on the new
        # stats socket, holding the new list.
        node.write_client(new_stats, updates)
        client.send_signal(signal.SIGHUP)
        wait_for(lambda: master_nodes(master).get("node1", {}).get(
            "applied", {}).get("seq") == 2, timeout=5,
            what="node1's status on the new stats socket")
        assert master_nodes(master)["node1"]["in_sync"] is True
    finally:
        stop(client, master.daemon)


def test_a_restarted_master_with_a_changed_list_is_heard_at_once(tmp_path,
                                                                 marker):
    # A long heartbeat: neither the master's republish nor the client's
    # silence (2.5 heartbeats) may be what brings the new list.
    master = start_master(tmp_path, marker, {"node1": [PROC]}, heartbeat=30)
    node = start_node(tmp_path, marker, master.stats, master.updates)
    conf, client = node.config_path, node.client
    try:
        wait_for(lambda: read_json(conf)["procs"] == [PROC], timeout=10,
                 what="node1's first list")
        stop(master.daemon)
        # The client reconnects only once the new master has published its
        # start-up lists, as a real fleet does: it must ask for its list.
        client.send_signal(signal.SIGSTOP)
        proc2 = dict(PROC, args=["2000"])
        master.write({"node1": [proc2]})
        master.start()
        wait_for(lambda: master.log().count("master up") == 2,
                 timeout=5, what="the master to start again")
        # SIGHUP is answered from its loop: the start-up lists are out.
        master.daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no node's list changed" in master.log(),
                 timeout=5, what="the master's loop")
        client.send_signal(signal.SIGCONT)
        wait_for(lambda: read_json(conf)["procs"] == [proc2], timeout=5,
                 what="the restarted master's list to reach node1")
        assert client.poll() is None
    finally:
        client.send_signal(signal.SIGCONT)
        stop(client, master.daemon)


def test_a_detached_master_given_a_relative_path_rereads_it(tmp_path,
                                                            marker):
    """Daemonizing chdirs to /: "master.json" must still mean the file in
    the folder the master was started from."""
    log = str(tmp_path / "master.log")
    doc = master_doc(tmp_path, {"node1": [PROC]}, log_file=log, heartbeat=0.2)
    pid_file, updates = doc["pid_file"], doc["master_updates"]
    write_json(str(tmp_path / "master.json"), doc)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("node1"))
    sub.setsockopt(zmq.SUBSCRIBE, protocol.BEAT_TOPIC)
    sub.connect(updates)
    heard, beats = [], []

    def hears(procs):
        while sub.poll(0):
            frames = sub.recv_multipart()
            if protocol.is_beat(frames):
                beats.append(protocol.decode_beat(frames))
            else:
                heard.append(protocol.decode_update(frames, "node1"))
        return procs is None and beats or heard and heard[-1].procs == procs

    try:
        result = run_command("dpd-masterd", ["-v", "master.json"], marker,
                             cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        pid = int(wait_for(lambda: os.path.exists(pid_file) and
                           read_text(pid_file).strip(), timeout=5,
                           what="the detached master's pid"))
        assert pid in marked_pids(marker)
        wait_for(lambda: hears(None), timeout=5, what="the first beat")
        # An edit is noticed (the master watches the right folder, and
        # read it there at its start: seq 2)...
        proc2 = dict(PROC, args=["2000"])
        write_json(str(tmp_path / "master.json"),
                   dict(doc, nodes={"node1": [proc2]}))
        wait_for(lambda: hears([proc2]), timeout=5, what="the edited list")
        assert heard[-1].seq == 2
        # ... and SIGHUP re-reads the same file.
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no node's list changed" in read_text(log),
                 timeout=5, what="the SIGHUP reload")
        assert "invalid master file" not in read_text(log)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not is_alive(pid), timeout=10,
                 what="the master to exit")
        assert not os.path.exists(pid_file)  # a clean exit
    finally:
        sub.close(linger=0)
        context.term()
