"""End to end fuzzing with the real daemons: generated broken input fed to a
running worker, master and client changes nothing running and kills
nothing. (The in-process half is tests/test_fuzz.py, whose strategies these
reuse.)"""

import os

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diprocd import config, protocol
from diprocd.errors import ConfigError
from helpers import Master, Node, read_bytes, wait_for
from test_fuzz import HOSTILE, JSON, PROCS, dumps, top_level

E2E = settings(max_examples=25, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))


def refused(loader, tmp_path, data):
    """True when ``loader`` refuses ``data`` (the daemons must then keep
    their last good file; a valid one they would rightly apply)."""
    path = str(tmp_path / "candidate.json")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        loader(path)
    except ConfigError:
        return True
    return False


def write_raw(path, data):
    tmp = path + ".fuzz"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.rename(tmp, path)


def test_broken_worker_files_change_nothing(tmp_path, marker):
    node = Node(tmp_path / "node", marker)
    node.write([node.proc("keep", "/bin/sleep", "9101")])
    node.start()
    pid = node.wait_running("keep")
    fed = []

    @E2E
    @given(doc=top_level(list(config.WORKER_KEYS)), procs=PROCS,
           raw=st.binary(max_size=64))
    def feed(doc, procs, raw):
        if isinstance(doc, dict):
            doc["pid_file"] = node.pid_file
            doc["procs"] = procs
        for data in (dumps(doc), raw):
            if not refused(config.load_worker_config, tmp_path, data):
                continue
            before = node.log().count("is invalid")
            write_raw(node.config_path, data)
            wait_for(lambda: node.log().count("is invalid") > before,
                     what="the worker to refuse the file")
            assert node.daemon.poll() is None, node.log()[-3000:]
            assert node.running() == {"keep": pid}
            fed.append(data)
    feed()
    assert len(fed) >= 10
    assert node.instances("9101") == [pid]
    node.stop()


def test_broken_master_files_change_nothing(tmp_path, marker):
    node = Node(tmp_path / "node1", marker)
    master = Master(tmp_path, marker, heartbeat=0.5,
                    nodes={"node1": [node.proc("keep", "/bin/sleep", "9102")]})
    master.start()
    node.join(master)
    try:
        pid = node.wait_running("keep", timeout=15)
        good = read_bytes(master.config_path)
        fed = []

        @E2E
        @given(doc=top_level(list(config.MASTER_KEYS)),
               nodes=st.dictionaries(st.sampled_from(["node1", "node2"])
                                     | st.text(max_size=4), PROCS,
                                     max_size=2))
        def feed(doc, nodes):
            if isinstance(doc, dict):
                for key in ("pid_file", "master_stats", "master_updates"):
                    doc.setdefault(key, master.doc[key])
                doc["nodes"] = nodes
            data = dumps(doc)
            if not refused(config.load_master_config, tmp_path, data):
                return
            before = master.log().count("invalid master file")
            write_raw(master.config_path, data)
            wait_for(lambda: master.log().count("invalid master file")
                     > before, what="the master to refuse the file")
            assert master.daemon.poll() is None, master.log()[-3000:]
            fed.append(data)
        feed()
        assert len(fed) >= 10
        # Two heartbeats later the node still runs exactly what it ran.
        write_raw(master.config_path, good)
        node.wait_only_running(["keep"])
        assert node.running() == {"keep": pid}
        assert node.client.poll() is None and node.daemon.poll() is None
    finally:
        node.close()
        master.stop()


def test_junk_on_the_wire_changes_nothing(tmp_path, marker):
    """A stranger publishing to a client and pushing to a master: every
    message dropped, both alive, the worker file untouched."""
    master = Master(tmp_path, marker, heartbeat=0.5, nodes={"node1": []})
    master.start()
    node = Node(tmp_path / "node1", marker)
    node.write([])
    context = zmq.Context()
    stranger_pub = context.socket(zmq.PUB)
    port = stranger_pub.bind_to_random_port("tcp://127.0.0.1")
    node.write_client(master.stats, "tcp://127.0.0.1:%d" % port)
    node.start_client()
    push = context.socket(zmq.PUSH)
    push.connect(master.stats)
    original = node.conf_bytes()
    try:
        wait_for(lambda: "listening to" in node.client_log(),
                 what="the client up")

        @E2E
        @given(frames=st.lists(st.binary(max_size=80), min_size=1,
                               max_size=4),
               body=JSON | HOSTILE,
               kind=st.sampled_from([b"procs", b"hello", b"status", b"x"]))
        def feed(frames, body, kind):
            encoded = dumps(body)
            for message in (frames, [b"node1\0", kind, encoded],
                            [kind, b"node1\0", encoded]):
                stranger_pub.send_multipart(message)
                push.send_multipart(message)
        feed()
        # Both still serve: the master answers a real hello at once.
        hello = protocol.encode_report(protocol.Report(protocol.KIND_HELLO,
                                                       "node1"))
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("node1"))
        sub.connect(master.updates)
        wait_for(lambda: push.send_multipart(hello) or sub.poll(100),
                 what="the master's answer to a hello")
        assert master.daemon.poll() is None and node.client.poll() is None
        assert node.conf_bytes() == original
        assert "dropped a" in node.client_log()
        assert "dropped a malformed report" in master.log()
        sub.close(linger=0)
    finally:
        stranger_pub.close(linger=0)
        push.close(linger=0)
        context.term()
        node.close()
        master.stop()
