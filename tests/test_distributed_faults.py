"""End to end: what must not damage a node's worker file. A fake publisher
sending malformed and foreign messages, and a target folder that is full or
read-only (a small tmpfs in a private mount namespace, as root)."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import zmq

from diprocd import protocol
from diprocd.master import nodes_file_path
from helpers import (BIN, free_port, marked_env, marked_pids, pid_alive,
                     read_json, run_command, start_daemon, wait_for,
                     write_json)

IS_ROOT = os.geteuid() == 0
PROC = {"name": "a", "run": "/bin/sleep", "args": ["1000"], "user": "root"}


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def text(path):
    with open(path) as handle:
        return handle.read()


def client_files(tmp_path, conf_file, stats, updates, node_name="node1"):
    path = str(tmp_path / "client.json")
    write_json(path, {"pid_file": str(tmp_path / "client.pid"),
                      "master_stats": stats, "master_updates": updates,
                      "node_name": node_name, "conf_file": conf_file,
                      "status_interval": 0.5})
    return path


def test_malformed_messages_leave_the_worker_file_unchanged(tmp_path,
                                                            marker):
    stats = "tcp://127.0.0.1:%d" % free_port()
    updates = "tcp://127.0.0.1:%d" % free_port()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pull = context.socket(zmq.PULL)
    pub.bind(updates)
    pull.bind(stats)
    conf = str(tmp_path / "worker.json")
    write_json(conf, {"pid_file": str(tmp_path / "w.pid"), "procs": []})
    original = read_bytes(conf)
    log = str(tmp_path / "client.log")
    client = start_daemon("dpd-clientd", marker,
                          ["-f", "-v", client_files(tmp_path, conf, stats,
                                                    updates)], log)

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
            return all(reason in text(log) for reason in expected)
        wait_for(all_dropped, timeout=10, interval=0.05,
                 what="the client to drop every malformed message")
        assert client.poll() is None
        assert read_bytes(conf) == original
        assert "foreign" not in text(log)  # filtered by the subscription
        # The channel itself works: a good message is applied.
        good = [b"node1\0", b"procs", body(epoch="fake2")]
        wait_for(lambda: pub.send_multipart(good) or
                 read_json(conf)["procs"] == [PROC], timeout=5,
                 what="the good message to be applied")
        # Hellos came in on the stats socket.
        assert pull.poll(2000)
        report = protocol.decode_report(pull.recv_multipart())
        assert report.node == "node1"
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=10) == 0
    finally:
        pub.close(linger=0)
        pull.close(linger=0)
        context.term()


def start_master(tmp_path, marker, nodes, heartbeat=1):
    stats = "tcp://127.0.0.1:%d" % free_port()
    updates = "tcp://127.0.0.1:%d" % free_port()
    path = str(tmp_path / "master.json")
    doc = {"pid_file": str(tmp_path / "master.pid"), "master_stats": stats,
           "master_updates": updates, "heartbeat": heartbeat, "nodes": nodes}
    write_json(path, doc)
    master = start_daemon("dpd-masterd", marker, ["-f", "-v", path],
                          str(tmp_path / "master.log"))
    return master, stats, updates


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount namespace, tmpfs)")
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_full_or_read_only_target_keeps_the_old_file(tmp_path, marker, fault):
    master, stats, updates = start_master(tmp_path, marker,
                                          {"node1": [PROC]})
    target = str(tmp_path / "target")
    os.mkdir(target)
    seed = str(tmp_path / "seed.json")
    write_json(seed, {"pid_file": "/run/dpd-fault-test/w.pid",
                      "log_file": "/tmp/w.log", "procs": []})
    original = read_bytes(seed)
    conf = os.path.join(target, "worker.json")
    client_conf = client_files(tmp_path, conf, stats, updates)
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
    log = open(log_path, "ab")
    client = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         script, "sh", sys.executable, os.path.join(BIN, "dpd-clientd"),
         "-f", "-v", client_conf],
        env=marked_env(marker, {"D": target, "SEED": seed}), stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    log.close()
    # The test sees the client's tmpfs through /proc/<pid>/root.
    inside = "/proc/%d/root%s" % (client.pid, target)
    try:
        wait_for(lambda: "cannot write %s" % conf in text(log_path),
                 timeout=10, what="the client to fail writing")
        # Retried, and failing each time, the old file stays intact.
        wait_for(lambda: text(log_path).count("still: cannot write") >= 2,
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
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=10) == 0
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=10) == 0
    finally:
        for proc in (client, master):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(IS_ROOT, reason="root ignores folder permissions; the "
                    "read-only tmpfs variant covers root")
def test_unwritable_folder_keeps_the_old_file(tmp_path, marker):
    master, stats, updates = start_master(tmp_path, marker,
                                          {"node1": [dict(PROC, user=None)]})
    target = tmp_path / "target"
    target.mkdir()
    conf = str(target / "worker.json")
    write_json(conf, {"pid_file": str(tmp_path / "w.pid"), "procs": []})
    original = read_bytes(conf)
    os.chmod(str(target), 0o555)
    log = str(tmp_path / "client.log")
    client = start_daemon("dpd-clientd", marker,
                          ["-f", "-v", client_files(tmp_path, conf, stats,
                                                    updates)], log)
    try:
        wait_for(lambda: "cannot write" in text(log), timeout=10,
                 what="the client to fail writing")
        assert read_bytes(conf) == original
        os.chmod(str(target), 0o755)
        wait_for(lambda: read_json(conf)["procs"] != [], timeout=10,
                 what="the retried write")
    finally:
        os.chmod(str(target), 0o755)
        for proc in (client, master):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def test_sighup_rereads_the_configs_and_second_instances_exit_0(tmp_path,
                                                                marker):
    master, stats, updates = start_master(
        tmp_path, marker, {"node1": [PROC], "node2": [dict(PROC, name="b")]})
    conf = str(tmp_path / "worker.json")
    write_json(conf, {"pid_file": str(tmp_path / "w.pid"), "procs": []})
    client_conf = client_files(tmp_path, conf, stats, updates)
    log = str(tmp_path / "client.log")
    client = start_daemon("dpd-clientd", marker, ["-f", "-v", client_conf],
                          log)
    master_conf = str(tmp_path / "master.json")
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
        wait_for(lambda: "invalid client file" in text(log), timeout=5,
                 what="the client to log its invalid file")
        # The master's SIGHUP with an invalid file: same.
        master_doc = read_json(master_conf)
        with open(master_conf + ".new", "w") as handle:
            handle.write('{"nodes": 1}')
        os.rename(master_conf + ".new", master_conf)
        master.send_signal(signal.SIGHUP)
        wait_for(lambda: text(str(tmp_path / "master.log")).count(
            "invalid master file") >= 1, timeout=5, what="master errors")
        write_json(master_conf, master_doc)
        assert client.poll() is None and master.poll() is None
        assert [p["name"] for p in read_json(conf)["procs"]] == ["b"]
    finally:
        for proc in (client, master):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def start_node(tmp_path, marker, stats, updates):
    """A dpd-clientd for node1 on an empty worker file; (client, conf)."""
    conf = str(tmp_path / "worker.json")
    write_json(conf, {"pid_file": str(tmp_path / "w.pid"), "procs": []})
    client = start_daemon("dpd-clientd", marker,
                          ["-f", "-v", client_files(tmp_path, conf, stats,
                                                    updates)],
                          str(tmp_path / "client.log"))
    return client, conf


def stop(*procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=10) == 0


def listening(port):
    """True while something listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def read_nodes_file(path):
    try:
        return read_json(path)["nodes"]
    except (OSError, ValueError):
        return {}


def test_changing_only_master_stats_then_a_list_reaches_the_node(tmp_path,
                                                                  marker):
    master, stats, updates = start_master(tmp_path, marker,
                                          {"node1": [PROC]})
    client, conf = start_node(tmp_path, marker, stats, updates)
    master_conf = str(tmp_path / "master.json")
    master_log = str(tmp_path / "master.log")
    try:
        wait_for(lambda: read_json(conf)["procs"] == [PROC], timeout=10,
                 what="node1's first list")
        # Only the stats endpoint moves: the PUB socket stays as it is.
        doc = read_json(master_conf)
        new_stats = "tcp://127.0.0.1:%d" % free_port()
        doc["master_stats"] = new_stats
        write_json(master_conf, doc)
        wait_for(lambda: "stats on " + new_stats in text(master_log) or
                 "cannot bind" in text(master_log), timeout=5,
                 what="the master to reload")
        # Later, a list change: published on the same endpoint, applied.
        proc2 = dict(PROC, args=["2000"])
        doc["nodes"] = {"node1": [proc2]}
        write_json(master_conf, doc)
        wait_for(lambda: read_json(conf)["procs"] == [proc2], timeout=5,
                 what="the changed list to reach node1")
        assert "cannot bind" not in text(master_log)
        assert "now publishing on %s, stats on %s" % (updates, new_stats) \
            in text(master_log)
        old_port = int(stats.rsplit(":", 1)[1])
        wait_for(lambda: not listening(old_port), timeout=5,
                 what="the old stats socket to be closed")
        # The client follows on SIGHUP: the master hears it on the new
        # stats socket, holding the new list.
        client_conf = str(tmp_path / "client.json")
        write_json(client_conf, dict(read_json(client_conf),
                                     master_stats=new_stats))
        client.send_signal(signal.SIGHUP)
        nodes_file = nodes_file_path(str(tmp_path / "master.pid"))
        wait_for(lambda: read_nodes_file(nodes_file).get("node1", {}).get(
            "applied", {}).get("seq") == 2, timeout=5,
            what="node1's status on the new stats socket")
        assert read_nodes_file(nodes_file)["node1"]["in_sync"] is True
    finally:
        stop(client, master)


def test_a_restarted_master_with_a_changed_list_is_heard_at_once(tmp_path,
                                                                 marker):
    # A long heartbeat: neither the master's republish nor the client's
    # silence (2.5 heartbeats) may be what brings the new list.
    master, stats, updates = start_master(tmp_path, marker,
                                          {"node1": [PROC]}, heartbeat=30)
    client, conf = start_node(tmp_path, marker, stats, updates)
    master_conf = str(tmp_path / "master.json")
    master_log = str(tmp_path / "master.log")
    try:
        wait_for(lambda: read_json(conf)["procs"] == [PROC], timeout=10,
                 what="node1's first list")
        stop(master)
        # The client reconnects only once the new master has published its
        # start-up lists, as a real fleet does: it must ask for its list.
        client.send_signal(signal.SIGSTOP)
        proc2 = dict(PROC, args=["2000"])
        write_json(master_conf, dict(read_json(master_conf),
                                     nodes={"node1": [proc2]}))
        master = start_daemon("dpd-masterd", marker,
                              ["-f", "-v", master_conf], master_log)
        wait_for(lambda: text(master_log).count("master up") == 2,
                 timeout=5, what="the master to start again")
        # SIGHUP is answered from its loop: the start-up lists are out.
        master.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no node's list changed" in text(master_log),
                 timeout=5, what="the master's loop")
        client.send_signal(signal.SIGCONT)
        wait_for(lambda: read_json(conf)["procs"] == [proc2], timeout=5,
                 what="the restarted master's list to reach node1")
        assert client.poll() is None
    finally:
        client.send_signal(signal.SIGCONT)
        stop(client, master)


def test_a_detached_master_given_a_relative_path_rereads_it(tmp_path,
                                                            marker):
    """Daemonizing chdirs to /: "master.json" must still mean the file in
    the folder the master was started from."""
    updates = "tcp://127.0.0.1:%d" % free_port()
    pid_file = str(tmp_path / "master.pid")
    log = str(tmp_path / "master.log")
    doc = {"pid_file": pid_file, "log_file": log, "heartbeat": 0.2,
           "master_stats": "tcp://127.0.0.1:%d" % free_port(),
           "master_updates": updates, "nodes": {"node1": [PROC]}}
    write_json(str(tmp_path / "master.json"), doc)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("node1"))
    sub.connect(updates)
    heard = []

    def hears(procs):
        while sub.poll(0):
            heard.append(protocol.decode_update(sub.recv_multipart(),
                                                "node1"))
        return heard and heard[-1].procs == procs

    try:
        result = run_command("dpd-masterd", ["-v", "master.json"], marker,
                             cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        pid = int(wait_for(lambda: os.path.exists(pid_file) and
                           text(pid_file).strip(), timeout=5,
                           what="the detached master's pid"))
        assert pid in marked_pids(marker)
        wait_for(lambda: hears([PROC]), timeout=5, what="the first list")
        # An edit is noticed (the master watches the right folder)...
        proc2 = dict(PROC, args=["2000"])
        write_json(str(tmp_path / "master.json"),
                   dict(doc, nodes={"node1": [proc2]}))
        wait_for(lambda: hears([proc2]), timeout=5, what="the edited list")
        assert heard[-1].seq == 2
        # ... and SIGHUP re-reads the same file.
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no node's list changed" in text(log),
                 timeout=5, what="the SIGHUP reload")
        assert "invalid master file" not in text(log)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), timeout=10,
                 what="the master to exit")
        assert not os.path.exists(pid_file)  # a clean exit
    finally:
        sub.close(linger=0)
        context.term()
