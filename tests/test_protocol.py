"""Unit tests of the wire format and the staleness rule (no sockets)."""

import json

import pytest

from diprocd import protocol
from diprocd.errors import ProtocolError

PROCS = [{"name": "web.1", "run": "/bin/sleep", "args": ["60"]}]


def update_frames(node="node1", epoch="e1", seq=3, procs=PROCS, **extra):
    body = {"v": 1, "node": node, "epoch": epoch, "seq": seq, "procs": procs}
    body.update(extra)
    return [node.encode() + b"\0", b"procs", json.dumps(body).encode()]


def test_update_round_trip():
    update = protocol.Update("node1", "e1", 7, PROCS, heartbeat=2.5)
    frames = protocol.encode_update(update)
    assert frames[0] == b"node1\0"
    got = protocol.decode_update(frames, "node1")
    assert (got.node, got.epoch, got.seq, got.procs, got.heartbeat) == (
        "node1", "e1", 7, PROCS, 2.5)


def test_topic_is_not_a_prefix_of_a_longer_name():
    # ZeroMQ filters by prefix: node1's subscription must not match node10.
    assert not protocol.topic("node10").startswith(protocol.topic("node1"))
    assert protocol.topic("node1") == b"node1\0"


def test_foreign_node_frame_is_rejected():
    frames = protocol.encode_update(protocol.Update("node10", "e", 1, []))
    with pytest.raises(ProtocolError, match="foreign"):
        protocol.decode_update(frames, "node1")


def test_body_naming_another_node_is_rejected():
    frames = update_frames()
    frames[2] = json.dumps({"v": 1, "node": "node10", "epoch": "e", "seq": 1,
                            "procs": []}).encode()
    with pytest.raises(ProtocolError, match="body names node"):
        protocol.decode_update(frames, "node1")


@pytest.mark.parametrize("frames, why", [
    ([b"node1\0", b"procs"], "expected 3 frames"),
    ([b"node1\0", b"bogus", b"{}"], "unknown message kind"),
    ([b"node1\0", b"procs", b"not json"], "not JSON"),
    ([b"node1\0", b"procs", b"\xff\xfe"], "not UTF-8"),
    ([b"node1\0", b"procs", b"[1, 2]"], "JSON object"),
    ([b"node1\0", b"procs", b'{"v": 2, "node": "node1"}'], "version"),
    ([b"node1", b"procs", b"{}"], "foreign"),
])
def test_malformed_updates_are_rejected(frames, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.decode_update(frames, "node1")


@pytest.mark.parametrize("field, value, why", [
    ("seq", -1, "seq"),
    ("seq", "3", "seq"),
    ("seq", True, "seq"),
    ("epoch", "", "epoch"),
    ("epoch", 5, "epoch"),
    ("epoch", "x" * 65, "epoch"),
    ("procs", {"a": 1}, "procs"),
    ("heartbeat", -1, "heartbeat"),
])
def test_bad_fields_are_rejected(field, value, why):
    frames = update_frames(**{field: value})
    with pytest.raises(ProtocolError, match=why):
        protocol.decode_update(frames, "node1")


def test_oversized_update_is_rejected():
    big = [{"name": "p", "run": "/bin/true",
            "args": ["x" * protocol.MAX_MESSAGE_BYTES]}]
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode_update(update_frames(procs=big), "node1")


def test_report_round_trip():
    status = {"procs": {"web.1": {"state": "running", "pid": 42}}}
    for kind in (protocol.KIND_HELLO, protocol.KIND_STATUS):
        report = protocol.Report(kind, "node10", "e1", 4, status)
        got = protocol.decode_report(protocol.encode_report(report))
        assert (got.kind, got.node, got.epoch, got.seq, got.status) == (
            kind, "node10", "e1", 4, status)
    hello = protocol.decode_report(protocol.encode_report(
        protocol.Report(protocol.KIND_HELLO, "n", None, None, None)))
    assert hello.is_hello and hello.epoch is None and hello.seq is None


@pytest.mark.parametrize("frames, why", [
    ([b"hello", b"n\0"], "expected 3 frames"),
    ([b"hi", b"n\0", b"{}"], "unknown report kind"),
    ([b"hello", b"n", b"{}"], "NUL-terminated"),
    ([b"hello", b"\xff\0", b"{}"], "UTF-8"),
    ([b"hello", b"n\0", b'{"v": 1, "node": "m"}'], "body names node"),
    ([b"status", b"n\0", b'{"v": 1, "node": "n", "status": [1]}'], "status"),
])
def test_malformed_reports_are_rejected(frames, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.decode_report(frames)


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 256, None])
def test_bad_node_names(name):
    with pytest.raises(ProtocolError):
        protocol.check_node_name(name)


def test_staleness_rule():
    # Nothing applied yet: nothing is stale.
    assert not protocol.is_stale(None, None, "e1", 0)
    # Same epoch: only a lower sequence is stale; the same one is a
    # republish (checked against the file, not dropped).
    assert protocol.is_stale("e1", 5, "e1", 4)
    assert not protocol.is_stale("e1", 5, "e1", 5)
    assert not protocol.is_stale("e1", 5, "e1", 6)
    # Another epoch (the master restarted) is never stale, even with a
    # lower sequence.
    assert not protocol.is_stale("e1", 5, "e2", 1)


def test_epochs_differ():
    assert protocol.new_epoch() != protocol.new_epoch()
    assert len(protocol.new_epoch()) <= protocol.MAX_EPOCH_CHARS


# -- the beat ----------------------------------------------------------------------

def test_beat_round_trip_and_topic():
    frames = protocol.encode_beat(protocol.Beat("e1", 2.5))
    assert frames[0] == protocol.BEAT_TOPIC and protocol.is_beat(frames)
    beat = protocol.decode_beat(frames)
    assert (beat.epoch, beat.heartbeat) == ("e1", 2.5)
    # No node's topic starts with the beat's: a node's SUB never gets it
    # unless it subscribes to it, and the beat never passes for a list.
    for name in ("a", "node1", "\x01", "é"):
        assert not protocol.topic(name).startswith(protocol.BEAT_TOPIC)
    assert not protocol.is_beat(protocol.encode_update(
        protocol.Update("node1", "e1", 1, PROCS)))


@pytest.mark.parametrize("frames, why", [
    ([protocol.BEAT_TOPIC, b"beat"], "expected 3 frames"),
    ([protocol.BEAT_TOPIC, b"procs", b"{}"], "not a beat"),
    ([protocol.BEAT_TOPIC, b"beat", b"{garbage"], "JSON"),
    ([protocol.BEAT_TOPIC, b"beat", b'{"v": 2, "epoch": "e", '
      b'"heartbeat": 1}'], "version"),
    ([protocol.BEAT_TOPIC, b"beat", b'{"v": 1, "heartbeat": 1}'], "epoch"),
    ([protocol.BEAT_TOPIC, b"beat", b'{"v": 1, "epoch": "e"}'], "heartbeat"),
    ([protocol.BEAT_TOPIC, b"beat", b'{"v": 1, "epoch": "e", '
      b'"heartbeat": true}'], "heartbeat"),
    ([protocol.BEAT_TOPIC, b"beat",
      b"x" * (protocol.MAX_MESSAGE_BYTES + 1)], "exceeds"),
])
def test_malformed_beats_are_rejected(frames, why):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_beat(frames)
    assert why in str(info.value)


def test_a_backoff_with_a_next_start_out_of_range_is_shown_without_it():
    # A node's report is the node's word: a time localtime cannot take
    # must not break dpdctl status for the whole fleet.
    from diprocd import status
    for due in (1e300, 10 ** 30, -5.0, float("inf")):
        text = status.note({"state": "backoff", "next_start": due,
                            "error": "boom"}, 1000.0)
        assert "boom" in text and "next start" not in text
