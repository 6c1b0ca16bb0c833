"""End to end: what must not damage a node's worker file. A fake publisher
sending malformed and foreign messages, and a target folder that is full or
read-only (a small tmpfs in a private mount namespace, as root)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import zmq

from diprocd import protocol
from helpers import (BIN, free_port, marked_env, read_json, run_command,
                     start_daemon, wait_for, write_json)

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
    expected = ["body is not JSON", "exceeds", "body names node",
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


def start_master(tmp_path, marker, nodes):
    stats = "tcp://127.0.0.1:%d" % free_port()
    updates = "tcp://127.0.0.1:%d" % free_port()
    path = str(tmp_path / "master.json")
    doc = {"pid_file": str(tmp_path / "master.pid"), "master_stats": stats,
           "master_updates": updates, "heartbeat": 1, "nodes": nodes}
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
