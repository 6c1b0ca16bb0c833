"""dpd-masterd and dpd-clientd: configuration, the master's node lists and
the client's handling of updates, without sockets (fast), plus the daemons'
command-line behaviour (real processes)."""

import errno
import json
import logging
import os
import socket
import stat

import pytest

from diprocd import client as client_mod
from diprocd import config as config_mod
from diprocd import master as master_mod
from diprocd import protocol
from diprocd.errors import ConfigError
from diprocd.fileio import atomic_write
from diprocd.watch import FileWatch
from helpers import (client_doc, master_doc, read_bytes, run_command,
                     wait_for, write_json)

PROC = {"name": "web.1", "run": "/bin/sleep", "args": ["60"], "user": "root"}


# -- master configuration ------------------------------------------------------

def test_master_config_valid(tmp_path):
    path = str(tmp_path / "master.json")
    write_json(path, master_doc(tmp_path, {"node1": [PROC], "node10": []},
                                heartbeat=0.5))
    config = config_mod.load_master_config(path)
    assert config.nodes == {"node1": [PROC], "node10": []}
    assert config.heartbeat == 0.5
    assert config.silent_after == config_mod.DEFAULT_SILENT_AFTER


def test_master_config_reports_every_problem(tmp_path):
    path = str(tmp_path / "master.json")
    doc = master_doc(tmp_path, {
        "node1": [{"name": "a", "run": "sleep"}],
        "node2": [{"name": "b", "run": "/bin/b", "user": "no-such-user"},
                  {"name": "b", "run": "/bin/b"}],
        "node3": "not a list"}, heartbeat=-1, bogus=1)
    doc["master_updates"] = "localhost:80"
    write_json(path, doc)
    with pytest.raises(ConfigError) as info:
        config_mod.load_master_config(path)
    text = str(info.value)
    assert 'node "node1": process "a": field "run": must be an absolute' in text
    assert 'node "node2": process "b": field "name": duplicate' in text
    assert 'node "node3"' in text
    assert '"master_updates": must be a ZeroMQ endpoint' in text
    assert '"heartbeat"' in text
    # Users are the node's business: an unknown one is no error here.
    assert "no-such-user" not in text
    assert all(p.startswith(path) for p in info.value.problems)


def big_list(body_bytes):
    """One process whose list encodes to about ``body_bytes`` bytes."""
    return [dict(PROC, args=["x" * body_bytes])]


def test_master_config_refuses_a_list_a_client_would_drop(tmp_path):
    path = str(tmp_path / "master.json")
    # Just over the protocol's bound: every client would drop it, forever.
    write_json(path, master_doc(tmp_path, {
        "node1": [PROC], "node2": big_list(protocol.MAX_MESSAGE_BYTES)}))
    with pytest.raises(ConfigError) as info:
        config_mod.load_master_config(path)
    [problem] = info.value.problems
    assert problem.startswith('%s: node "node2": its list encodes to' % path)
    assert "%d a client accepts" % protocol.MAX_MESSAGE_BYTES in problem
    # A list a little under the bound is accepted, and a client accepts it
    # whatever the epoch and sequence it comes with.
    write_json(path, master_doc(tmp_path, {
        "node2": big_list(protocol.MAX_MESSAGE_BYTES - 1024)}))
    config = config_mod.load_master_config(path)
    update = protocol.Update("node2", "e" * protocol.MAX_EPOCH_CHARS,
                             10 ** 15, config.nodes["node2"], config.heartbeat)
    decoded = protocol.decode_update(protocol.encode_update(update), "node2")
    assert decoded.procs == config.nodes["node2"]


def test_master_check_command(tmp_path):
    path = str(tmp_path / "master.json")
    write_json(path, master_doc(tmp_path, {"node1": [PROC]}))
    result = run_command("dpd-masterd", ["--check", path])
    assert result.returncode == 0, result.stderr
    write_json(path, master_doc(tmp_path, {"node1": [{"run": "/bin/true"}]}))
    result = run_command("dpd-masterd", ["--check", path])
    assert result.returncode == 1
    assert 'node "node1": process #1: field "name"' in result.stderr


def test_master_invalid_at_start_exits_1(tmp_path):
    path = str(tmp_path / "master.json")
    with open(path, "w") as handle:
        handle.write("{not json")
    result = run_command("dpd-masterd", ["-f", path])
    assert result.returncode == 1
    assert "not JSON" in result.stderr


# -- the master's node lists ---------------------------------------------------

def test_only_changed_nodes_get_a_new_sequence():
    lists = master_mod.NodeLists("e1")
    changed, removed = lists.apply({"node1": [PROC], "node10": []})
    assert sorted(changed) == ["node1", "node10"] and removed == []
    assert lists.seqs == {"node1": 1, "node10": 1}
    other = dict(PROC, args=["61"])
    changed, removed = lists.apply({"node1": [PROC], "node10": [other]})
    assert changed == ["node10"] and removed == []
    assert lists.seqs == {"node1": 1, "node10": 2}
    # Same content again: nothing changes.
    assert lists.apply({"node1": [PROC], "node10": [other]}) == ([], [])


def test_removed_node_gets_an_empty_list_and_keeps_it():
    lists = master_mod.NodeLists("e1")
    lists.apply({"node1": [PROC], "node2": [PROC]})
    changed, removed = lists.apply({"node1": [PROC]})
    assert changed == [] and removed == ["node2"]
    update = lists.update("node2")
    assert (update.procs, update.seq) == ([], 2)
    # It stays published (empty) at every heartbeat, and is not "removed"
    # again by the next reload.
    assert "node2" in lists.nodes()
    assert lists.apply({"node1": [PROC]}) == ([], [])
    # Coming back: a new sequence with its list.
    assert lists.apply({"node1": [PROC], "node2": [PROC]}) == (["node2"], [])
    assert lists.update("node2").seq == 3


def test_unknown_node_saying_hello_gets_an_empty_list():
    lists = master_mod.NodeLists("e1")
    lists.apply({"node1": [PROC]})
    assert lists.ensure("stranger") is True
    assert lists.ensure("stranger") is False
    assert lists.update("stranger").procs == []
    assert lists.ensure("node1") is False


class FakePub:
    def __init__(self):
        self.sent = []

    def send_multipart(self, frames, copy=True):
        self.sent.append(frames)


def make_master(tmp_path, nodes, clock=None):
    path = str(tmp_path / "master.json")
    write_json(path, master_doc(tmp_path, nodes))
    config = config_mod.load_master_config(path)
    master = master_mod.Master(config, logging.getLogger("test-master"),
                               clock=clock or (lambda: 100.0))
    master.pub = FakePub()
    master.lists.apply(config.nodes)
    return master, path


def test_master_reload_publishes_changed_nodes_only(tmp_path, caplog):
    master, path = make_master(tmp_path, {"node1": [PROC], "node10": [PROC],
                                          "node2": [PROC]})
    doc = json.load(open(path))
    doc["nodes"]["node10"] = []
    del doc["nodes"]["node2"]
    write_json(path, doc)
    with caplog.at_level(logging.INFO):
        assert master.reload("test")
    sent = {f[0]: protocol.decode_update(f, f[0][:-1].decode())
            for f in master.pub.sent}
    assert set(sent) == {b"node10\0", b"node2\0"}
    assert sent[b"node10\0"].seq == 2 and sent[b"node2\0"].procs == []
    assert 'node "node2" removed from the master file' in caplog.text


def test_master_invalid_reload_changes_nothing(tmp_path, caplog):
    master, path = make_master(tmp_path, {"node1": [PROC]})
    good = json.load(open(path))
    with open(path, "w") as handle:
        handle.write('{"nodes": ')
    assert not master.reload("test")
    assert master.pub.sent == []
    assert master.lists.lists == {"node1": [PROC]}
    write_json(path, dict(good, nodes={"node1": [{"name": "x"}]}))
    assert not master.reload("test")
    assert master.pub.sent == []
    assert master.lists.lists == {"node1": [PROC]}
    assert 'process "x": field "run": required' in caplog.text


def test_master_answers_hello_at_once_and_tracks_silence(tmp_path, caplog):
    now = [100.0]
    master, _ = make_master(tmp_path, {"node1": [PROC]}, clock=lambda: now[0])
    hello = protocol.Report(protocol.KIND_HELLO, "node1")
    master.on_report(hello)
    assert len(master.pub.sent) == 1
    assert protocol.decode_update(master.pub.sent[0], "node1").procs == [PROC]
    status = {"procs": {"web.1": {"state": "running", "pid": 5}}}
    master.on_report(protocol.Report(protocol.KIND_STATUS, "node1",
                                     master.lists.epoch, 1, status))
    doc = master.nodes_document()
    assert doc["nodes"]["node1"]["status"] == status
    assert doc["nodes"]["node1"]["in_sync"] is True
    now[0] += master.config.silent_after + 1
    with caplog.at_level(logging.INFO):
        master._check_silence(now[0])
        assert 'node "node1" fell silent' in caplog.text
        master.on_report(protocol.Report(protocol.KIND_STATUS, "node1"))
        assert 'node "node1" is back' in caplog.text
    # A status without content keeps the last one known.
    assert master.nodes_document()["nodes"]["node1"]["status"] == status


def test_master_keeps_a_bounded_number_of_unknown_nodes(tmp_path):
    master, path = make_master(tmp_path, {"node1": [PROC]})
    flood = 1500  # hellos from names the master file does not know
    for i in range(flood):
        master.on_report(protocol.Report(protocol.KIND_HELLO, "ghost-%d" % i))
    unknown = set(master.seen) - {"node1"}
    assert len(unknown) < flood
    cap = master_mod.MAX_UNKNOWN_NODES
    assert unknown == {"ghost-%d" % i for i in range(cap)}  # the first ones
    assert len(master.pub.sent) == cap  # each admitted hello answered once
    assert set(master.lists.seqs) == unknown | {"node1"}
    assert len(master.nodes_document()["nodes"]) == cap
    # One more stranger: dropped, not answered, not remembered.
    master.pub.sent.clear()
    master.on_report(protocol.Report(protocol.KIND_HELLO, "ghost-late"))
    assert master.pub.sent == [] and "ghost-late" not in master.seen
    # An unknown node already admitted is still served.
    master.on_report(protocol.Report(protocol.KIND_HELLO, "ghost-0"))
    assert [f[0] for f in master.pub.sent] == [b"ghost-0\0"]
    # Configured nodes are never refused, whether they were in the master
    # file from the start or added after the cap was reached.
    master.pub.sent.clear()
    master.on_report(protocol.Report(protocol.KIND_HELLO, "node1"))
    [answer] = master.pub.sent
    assert protocol.decode_update(answer, "node1").procs == [PROC]
    doc = json.load(open(path))
    doc["nodes"]["node2"] = [PROC]
    write_json(path, doc)
    assert master.reload("test")
    master.pub.sent.clear()
    master.on_report(protocol.Report(protocol.KIND_HELLO, "node2"))
    assert "node2" in master.seen
    sent = master.pub.sent
    assert len(sent) == 1
    assert protocol.decode_update(sent[0], "node2").procs == [PROC]
    master.pub.sent.clear()
    master.publish_all()
    assert len(master.pub.sent) == cap + 2


# -- client configuration --------------------------------------------------------

def test_client_config_and_hostname(tmp_path):
    path = str(tmp_path / "client.json")
    write_json(path, client_doc(tmp_path, node_name="n-%H"))
    config = config_mod.load_client_config(path)
    assert config.node_name == "n-" + socket.gethostname()
    assert config.status_interval == config_mod.DEFAULT_STATUS_INTERVAL
    assert any("does not exist yet" in w for w in config.warnings)
    assert config_mod.resolve_node_name("100%%") == "100%"


def test_client_config_problems(tmp_path):
    path = str(tmp_path / "client.json")
    write_json(path, client_doc(tmp_path, node_name=5, conf_file="w.json",
                                status_interval="often"))
    with pytest.raises(ConfigError) as info:
        config_mod.load_client_config(path)
    text = str(info.value)
    assert '"node_name": must be a string' in text
    assert '"conf_file": must be an absolute path' in text
    assert '"status_interval"' in text


# -- the client's handling of updates (no sockets) -----------------------------

WORKER = {"pid_file": "/run/dpd-test/w.pid", "log_file": "/tmp/w.log",
          "extra": {"kept": True}, "procs": []}


@pytest.fixture
def node(tmp_path):
    conf = tmp_path / "worker.json"
    with open(conf, "w") as handle:
        json.dump(WORKER, handle)
    os.chmod(conf, 0o640)
    path = str(tmp_path / "client.json")
    write_json(path, client_doc(tmp_path))
    now = [1000.0]
    client = client_mod.Client(config_mod.load_client_config(path),
                               logging.getLogger("test-client"),
                               clock=lambda: now[0])
    client.now = now
    return client, str(conf)


def frames(seq, procs, epoch="e1", node="node1"):
    return protocol.encode_update(protocol.Update(node, epoch, seq, procs, 1))


def test_client_rewrites_keeping_other_keys_mode_0600(node):
    """It carries the processes' secrets: 0600 (the file was 0640)."""
    client, conf = node
    client.on_frames(frames(1, [PROC]))
    doc = json.load(open(conf))
    assert doc["procs"] == [PROC]
    assert {k: doc[k] for k in WORKER if k != "procs"} == {
        k: v for k, v in WORKER.items() if k != "procs"}
    assert list(doc) == list(WORKER)  # key order kept too
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert (client.applied_epoch, client.applied_seq) == ("e1", 1)


def test_client_keeps_a_stricter_mode_of_the_worker_file(node):
    client, conf = node
    os.chmod(conf, 0o400)
    client.on_frames(frames(1, [PROC]))
    assert json.load(open(conf))["procs"] == [PROC]
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o400


def test_client_does_not_rewrite_an_equal_list(node):
    client, conf = node
    client.on_frames(frames(1, [PROC]))
    before = os.stat(conf)
    # A republish, and a new epoch (master restart) with the same list.
    client.on_frames(frames(1, [PROC]))
    client.on_frames(frames(1, [PROC], epoch="e2"))
    after = os.stat(conf)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino,
                                                   after.st_mtime_ns)
    assert client.applied_epoch == "e2"


def test_client_ignores_stale_updates(node):
    client, conf = node
    client.on_frames(frames(5, [PROC]))
    content = read_bytes(conf)
    client.on_frames(frames(4, []))
    assert read_bytes(conf) == content
    # Another epoch is applied whatever its sequence.
    client.on_frames(frames(1, [], epoch="e2"))
    assert json.load(open(conf))["procs"] == []


def test_client_republish_repairs_a_hand_edited_file(node):
    client, conf = node
    client.on_frames(frames(1, [PROC]))
    with open(conf, "w") as handle:
        json.dump(dict(WORKER, procs=[]), handle)
    client.on_frames(frames(1, [PROC]))
    assert json.load(open(conf))["procs"] == [PROC]


@pytest.mark.parametrize("bad", [
    frames(1, [PROC], node="node10"),
    [b"node1\0", b"procs", b"{garbage"],
    [b"node1\0", b"procs", b"x" * (protocol.MAX_MESSAGE_BYTES + 1)],
    frames(1, [{"name": "a", "run": "relative/path"}]),
    frames(1, [dict(PROC, user="no-such-user-here")]),
    frames(1, [dict(PROC, pid_file=WORKER["pid_file"])]),
    frames(1, [PROC, PROC]),
])
def test_client_drops_bad_messages(node, bad):
    client, conf = node
    content = read_bytes(conf)
    client.on_frames(bad)
    assert read_bytes(conf) == content
    assert client.applied_seq is None and client.pending is None
    assert client.drops.count == 1  # and the master hears the count
    report = protocol.decode_report(protocol.encode_report(protocol.Report(
        protocol.KIND_STATUS, "node1", dropped=client.drops.count)))
    assert report.dropped == 1


def test_a_flood_of_junk_is_counted_and_logged_briefly(tmp_path, caplog):
    """A stranger on the stats port: every message dropped and counted, the
    log not flooded (10 lines per 10 s, then a summary)."""
    now = [100.0]
    master, _ = make_master(tmp_path, {"node1": [PROC]}, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            master.on_frames([b"hello", b"x" * (i % 7), b"junk"])
        now[0] += 11
        master.on_frames([b"junk"])
    assert master.drops.count == 1001
    assert master.nodes_document()["dropped_reports"] == 1001
    lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 12, [r.getMessage() for r in lines]
    assert "dropped 990 more malformed reports" in lines[10].getMessage()


def test_client_failed_write_keeps_old_file_and_retries(node, monkeypatch):
    client, conf = node
    content = read_bytes(conf)
    real_write = client_mod.atomic_write

    def full_disk(path, data, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client_mod, "atomic_write", full_disk)
    client.on_frames(frames(1, [PROC]))
    assert read_bytes(conf) == content
    assert client.pending is not None and client.applied_seq is None
    assert client.loop.pending("retry") == client.now[0] + client_mod.RETRY_INTERVAL
    monkeypatch.setattr(client_mod, "atomic_write", real_write)
    assert client.apply(client.pending)
    assert json.load(open(conf))["procs"] == [PROC]
    assert client.pending is None and client.applied_seq == 1


def test_client_missing_worker_file_is_retried(node):
    client, conf = node
    os.unlink(conf)
    client.on_frames(frames(1, [PROC]))
    assert not os.path.exists(conf)
    assert client.pending is not None


def symlinked(tmp_path, name, content):
    """``tmp_path/lib/name`` -> ``tmp_path/etc/name`` (config management
    style); return (link, target)."""
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "lib").mkdir(exist_ok=True)
    target = str(tmp_path / "etc" / name)
    link = str(tmp_path / "lib" / name)
    with open(target, "w") as handle:
        handle.write(content)
    os.symlink(target, link)
    return link, target


def test_atomic_write_through_a_symlink_replaces_the_target(tmp_path):
    link, target = symlinked(tmp_path, "data.json", "old")
    os.chmod(target, 0o640)
    atomic_write(link, "new")
    assert os.path.islink(link) and os.readlink(link) == target
    assert read_bytes(target) == b"new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path / "lib")) == ["data.json"]
    assert sorted(os.listdir(tmp_path / "etc")) == ["data.json"]


def test_client_writes_a_symlinked_worker_file_through_the_link(tmp_path):
    link, target = symlinked(tmp_path, "worker.json", json.dumps(WORKER))
    path = str(tmp_path / "client.json")
    write_json(path, client_doc(tmp_path, conf_file=link))
    client = client_mod.Client(config_mod.load_client_config(path),
                               logging.getLogger("test-client"),
                               clock=lambda: 1000.0)
    client.on_frames(frames(1, [PROC]))
    assert os.path.islink(link) and os.readlink(link) == target
    assert json.load(open(target))["procs"] == [PROC]
    assert client.applied_seq == 1


def test_file_watch_sees_edits_of_a_symlinked_file_target(tmp_path):
    link, target = symlinked(tmp_path, "master.json", "{}")
    watch = FileWatch(link)
    try:
        if watch.fileno() is None:
            pytest.skip("no inotify here")
        assert not watch.read_events()
        # In place, where the link points.
        with open(target, "w") as handle:
            handle.write('{"a": 1}')
        wait_for(watch.read_events, timeout=2,
                 what="the in-place edit of the target")
        # An editor's save (write a temporary file, rename it over) there.
        write_json(target, {"a": 2})
        wait_for(watch.read_events, timeout=2,
                 what="the atomic rename over the target")
        # Something else in the target's folder is no news.
        with open(str(tmp_path / "etc" / "other.json"), "w") as handle:
            handle.write("{}")
        assert not watch.read_events()
        # The link itself replaced: still seen.
        os.symlink(target, link + ".new")
        os.rename(link + ".new", link)
        wait_for(watch.read_events, timeout=2, what="the link replaced")
    finally:
        watch.close()
    # The stat watch (no inotify) follows the link as well.
    watch = FileWatch(link, use_inotify=False)
    with open(target, "w") as handle:
        handle.write('{"a": 33}')
    assert watch.changed()


def test_client_check_command(tmp_path):
    path = str(tmp_path / "client.json")
    write_json(path, client_doc(tmp_path))
    result = run_command("dpd-clientd", ["--check", path])
    assert result.returncode == 0, result.stderr
    write_json(path, client_doc(tmp_path, master_stats="nowhere"))
    result = run_command("dpd-clientd", ["--check", path])
    assert result.returncode == 1 and "master_stats" in result.stderr


def test_a_reply_counts_only_from_the_node_the_command_went_to(tmp_path):
    master, _ = make_master(tmp_path, {"node1": [PROC], "node2": []})
    answered = []
    master.steering._answer = lambda identity, reply: answered.append(
        (identity, reply))
    master.steering.pending["c1"] = (b"peer", "node1")
    forged = protocol.Report(protocol.KIND_REPLY, "node2", reply_id="c1",
                             reply={"ok": True, "old_pids": {}})
    master.on_report(forged)
    assert answered == [] and "c1" in master.steering.pending
    genuine = protocol.Report(protocol.KIND_REPLY, "node1", reply_id="c1",
                              reply={"ok": True})
    master.on_report(genuine)
    assert answered == [(b"peer", {"ok": True})]


def test_behind_a_backlog_the_client_turns_its_loop(node):
    """Fifty big lists queued on a real SUB socket: one call takes what
    fits in RECEIVE_BUDGET (each is checked and applied: a check and a
    write), not the fifty, so signals and timers get their turn within a
    list's time, not fifty lists' time; the next calls take the rest."""
    import zmq
    client, conf = node
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    sub = context.socket(zmq.SUB)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, protocol.topic("node1"))
        sub.connect("tcp://127.0.0.1:%d" % port)
        # The slow joiner: publish a first list until one arrives.
        wait_for(lambda: pub.send_multipart(frames(1, [])) or sub.poll(50),
                 what="the subscription to reach the publisher")
        big = [dict(PROC, name="p%d" % i) for i in range(1000)]
        for seq in range(2, 52):
            pub.send_multipart(frames(seq, big[:-1] if seq % 2 else big))
        wait_for(lambda: sub.poll(0), what="the backlog")
        client.sub = sub
        applied = []
        real_apply = client.apply
        client.apply = lambda update: applied.append(update.seq) or \
            real_apply(update)
        client._receive_updates()
        assert 0 < len(applied) < 50, applied
        wait_for(lambda: client._receive_updates() or client.applied_seq == 51,
                 what="the rest of the backlog, in later turns")
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        context.term()
    assert json.load(open(conf))["procs"] == big[:-1]
    assert sorted(set(applied)) == applied and applied[-1] == 51


# -- the beat and the repairs (no sockets) ------------------------------------------

def status_report(node, epoch, seq, kind=protocol.KIND_STATUS):
    return protocol.Report(kind, node, epoch, seq, status=None, interval=30)


def lists_sent(master):
    return [protocol.decode_update(f, f[0][:-1].decode()) for f in
            master.pub.sent if not protocol.is_beat(f)]


def test_the_heartbeat_sends_one_beat_and_no_list(tmp_path):
    """1000 nodes: one small message per heartbeat, not 1000 lists."""
    master, _ = make_master(tmp_path, {"node%d" % i: [PROC]
                                       for i in range(1000)})
    master._heartbeat()
    [beat] = master.pub.sent
    decoded = protocol.decode_beat(beat)
    assert (decoded.epoch, decoded.heartbeat) == (master.lists.epoch,
                                                  master.config.heartbeat)
    assert len(beat[2]) < 200
    assert master.loop.pending("heartbeat") == 100.0 + master.config.heartbeat


def test_a_live_node_gets_its_list_again_until_it_confirms(tmp_path):
    now = [100.0]
    master, path = make_master(tmp_path, {"node1": [PROC], "node2": [PROC]},
                               clock=lambda: now[0])
    epoch = master.lists.epoch
    master.on_report(status_report("node1", epoch, 1))  # live, in sync
    doc = json.load(open(path))
    doc["nodes"] = {"node1": [], "node2": []}
    write_json(path, doc)
    master.pub.sent.clear()
    assert master.reload("test")
    assert [(u.node, u.seq) for u in lists_sent(master)] == [("node1", 2),
                                                             ("node2", 2)]
    # node2 never reported: nothing awaited from it. node1 is: its list
    # goes again after REPAIR_FIRST, then after twice as long.
    assert master.loop.pending("repair") == now[0] + master_mod.REPAIR_FIRST
    for delay in (master_mod.REPAIR_FIRST, 2 * master_mod.REPAIR_FIRST):
        master.pub.sent.clear()
        now[0] += delay
        master._repair()
        assert [(u.node, u.seq) for u in lists_sent(master)] == [("node1", 2)]
    # A report of an older sequence while awaited sends nothing more; the
    # report of seq 2 ends it.
    master.pub.sent.clear()
    master.on_report(status_report("node1", epoch, 1))
    assert lists_sent(master) == []
    master.on_report(status_report("node1", epoch, 2))
    now[0] += 100
    master._repair()
    assert lists_sent(master) == [] and "node1" not in master.awaited
    assert master.loop.pending("repair") is None


def test_a_report_out_of_date_brings_the_list_at_once(tmp_path):
    """A node that reports another epoch (it missed the master's restart)
    or an older sequence gets its list at once; a silent node is not
    awaited any more."""
    now = [100.0]
    master, _ = make_master(tmp_path, {"node1": [PROC]}, clock=lambda: now[0])
    master.on_report(status_report("node1", "another-epoch", 7))
    [update] = lists_sent(master)
    assert (update.epoch, update.seq) == (master.lists.epoch, 1)
    assert "node1" in master.awaited
    now[0] += master.config.silent_after + 1
    master._check_silence(now[0])
    master.pub.sent.clear()
    master._repair()
    assert lists_sent(master) == [] and "node1" not in master.awaited


def test_the_repairs_back_off_to_their_max():
    awaited = master_mod.Awaited()
    awaited.expect("n", 0.0)
    now, delays = 0.0, []
    for _ in range(12):
        now = awaited.next_due()
        before = now
        assert awaited.take_due(now) == ["n"]
        delays.append(awaited.next_due() - before)
    assert delays[0] == 2 * master_mod.REPAIR_FIRST
    assert max(delays) == master_mod.REPAIR_MAX == delays[-1]
    awaited.confirmed("n")
    assert awaited.next_due() is None


def beat_frames(epoch="e1", heartbeat=1):
    return protocol.encode_beat(protocol.Beat(epoch, heartbeat))


def test_client_says_hello_when_a_beat_names_another_epoch(node):
    client, conf = node
    now = client.now[0]
    assert client._needs_hello(now)  # nothing heard yet
    client.on_frames(frames(1, [PROC]))
    client.on_frames(beat_frames("e1"))
    assert not client._needs_hello(now)
    # The master restarted (an epoch we hold no list of): ask at once.
    client.on_frames(beat_frames("e2"))
    assert client._needs_hello(now)
    client.on_frames(frames(1, [PROC], epoch="e2"))
    assert not client._needs_hello(now)
    # A junk beat is dropped and counted, and changes nothing.
    drops = client.drops.count
    client.on_frames([protocol.BEAT_TOPIC, b"beat", b'{"v": 1}'])
    assert client.drops.count == drops + 1 and not client._needs_hello(now)


def test_client_beat_repairs_a_hand_edited_file(node):
    client, conf = node
    client.on_frames(frames(1, [PROC]))
    client.on_frames(beat_frames())
    before = os.stat(conf)
    client.on_frames(beat_frames())  # unchanged file: not rewritten
    after = os.stat(conf)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino,
                                                   after.st_mtime_ns)
    with open(conf, "w") as handle:
        json.dump(dict(WORKER, procs=[]), handle)
    client.on_frames(beat_frames())
    assert json.load(open(conf))["procs"] == [PROC]
