"""The master/client wire format: framing, encode/decode, epochs, sequences.

No sockets here: this module turns Python values into ZeroMQ multipart
frames (lists of bytes) and back, and decides whether an update is stale.

Updates, master -> clients, on the PUB socket: a node's list when it
changes, when the node's client says hello, and when the node's reports
show it does not hold the current one (a repair)::

    [b"<node>\\0", b"procs", body]
    body = {"v": 1, "node": "<node>", "epoch": "<epoch>", "seq": N,
            "heartbeat": seconds, "procs": [process, ...]}

The first frame is the node name terminated by a NUL byte. ZeroMQ
subscriptions match prefixes, so a client of ``node1`` subscribes to
``b"node1\\0"``, which ``b"node10\\0"`` does not start with; the client
checks the frame, and the node inside the body, again on receipt.

The beat, master -> every client, every ``heartbeat`` seconds: one small
message, the same for all, on a topic no node's can start with (a node
name is not empty and has no NUL), never sealed (it names no node and
carries no list)::

    [b"\\0", b"beat", {"v": 1, "epoch": "<epoch>", "heartbeat": seconds}]

It says the master is there and which epoch it runs: a client that heard
no list of that epoch asks for its list (hello).

Reports, client -> master, on the PUSH/PULL stats socket::

    [b"hello" | b"status", b"<node>\\0", body]
    body = {"v": 1, "node": "<node>", "epoch": ..., "seq": ...,
            "status": {worker status document} or null}

``hello`` asks the master for the node's list at once (a client sends it
when it connects, when a beat names an epoch it holds no list of, and
whenever it has heard nothing for a while); ``status`` is the periodic
heartbeat carrying the worker's status view, sent at once too after each
list received. ``epoch`` and ``seq`` say what the client has applied
(the master republishes a node's list while they are not its current
ones); optional ``dropped`` (messages it dropped), ``rejected`` (why it
refused the list it holds back, or null) and ``interval`` (its status
interval, for the master's liveness rule).

Operator commands (``dpdctl`` through the master) travel to a node on the
PUB socket and its worker's answer comes back on the stats socket::

    [b"<node>\0", b"control", {"v": 1, "node": ..., "id": ID,
                               "request": {control request}}]
    [b"reply", b"<node>\0", {"v": 1, "node": ..., "id": ID,
                             "reply": {control reply}}]

The epoch is new at each master start; the sequence number is per node and
grows only when that node's list changes. Within one epoch a client ignores
an update older than what it applied (``is_stale``); a different epoch is
always accepted, since a restarted master is the authority (its clock may
even have gone back, so epochs are not compared for order).
"""

import os
import time

import simplejson as json

from diprocd import jsonin
from diprocd.errors import ProtocolError

VERSION = 1

KIND_PROCS = b"procs"
KIND_HELLO = b"hello"
KIND_STATUS = b"status"
KIND_CONTROL = b"control"
KIND_REPLY = b"reply"
KIND_BEAT = b"beat"
# The beat's topic: every client subscribes to it besides its node's. No
# node's topic starts with it (a node name is not empty and has no NUL).
BEAT_TOPIC = b"\0"
REPORT_KINDS = (KIND_HELLO, KIND_STATUS, KIND_REPLY)
MAX_ID_CHARS = 64

# Bounds on what a peer may send us: a node's process list, or a status.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_NODE_NAME_BYTES = 255
MAX_EPOCH_CHARS = 64


def new_epoch():
    """A fresh epoch: start time in ns and random bits, as hex text."""
    return "%x-%s" % (time.time_ns(), os.urandom(4).hex())


def check_node_name(name):
    """Raise ProtocolError unless ``name`` can be a node name."""
    if not isinstance(name, str) or not name:
        raise ProtocolError("node name must be a non-empty string")
    if "\0" in name:
        raise ProtocolError("node name must not contain NUL")
    if len(name.encode("utf-8")) > MAX_NODE_NAME_BYTES:
        raise ProtocolError("node name longer than %d bytes"
                            % MAX_NODE_NAME_BYTES)
    return name


def topic(node):
    """The subscription prefix of ``node``: its name, NUL-terminated."""
    return check_node_name(node).encode("utf-8") + b"\0"


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# -- updates (master -> client) ------------------------------------------------

class Update:
    """One node's process list as published by the master."""

    __slots__ = ("node", "epoch", "seq", "heartbeat", "procs")

    def __init__(self, node, epoch, seq, procs, heartbeat=None):
        self.node = node
        self.epoch = epoch
        self.seq = seq
        self.procs = procs
        self.heartbeat = heartbeat

    def __repr__(self):
        return "Update(%r, epoch=%r, seq=%r, %d procs)" % (
            self.node, self.epoch, self.seq, len(self.procs))


def encode_update(update):
    """Update -> list of frames."""
    body = {"v": VERSION, "node": update.node, "epoch": update.epoch,
            "seq": update.seq, "procs": update.procs}
    if update.heartbeat is not None:
        body["heartbeat"] = update.heartbeat
    return [topic(update.node), KIND_PROCS, _dumps(body)]


def decode_update(frames, expected_node):
    """Frames -> Update, or raise ProtocolError saying what is wrong.

    The node frame must be exactly ``expected_node`` NUL-terminated and the
    body must name the same node: a prefix match is not enough."""
    if len(frames) != 3:
        raise ProtocolError("expected 3 frames, got %d" % len(frames))
    node_frame, kind, body = frames
    if node_frame != topic(expected_node):
        raise ProtocolError("foreign node frame %r (we are %r)"
                            % (bytes(node_frame[:80]), expected_node))
    if kind != KIND_PROCS:
        raise ProtocolError("unknown message kind %r" % bytes(kind[:40]))
    obj = _decode_body(body, expected_node)
    epoch, seq = _check_epoch_seq(obj, required=True)
    procs = obj.get("procs")
    if not isinstance(procs, list):
        raise ProtocolError('"procs" must be a list')
    heartbeat = _check_heartbeat(obj.get("heartbeat"), required=False)
    return Update(expected_node, epoch, seq, procs, heartbeat)


# -- the beat (master -> every client) ----------------------------------------

class Beat:
    """The master's beat: its epoch and heartbeat."""

    __slots__ = ("epoch", "heartbeat")

    def __init__(self, epoch, heartbeat):
        self.epoch = epoch
        self.heartbeat = heartbeat

    def __repr__(self):
        return "Beat(epoch=%r, heartbeat=%r)" % (self.epoch, self.heartbeat)


def encode_beat(beat):
    """Beat -> list of frames."""
    return [BEAT_TOPIC, KIND_BEAT, _dumps({
        "v": VERSION, "epoch": beat.epoch, "heartbeat": beat.heartbeat})]


def is_beat(frames):
    """True when ``frames`` are on the beat's topic (whatever they hold)."""
    return len(frames) >= 1 and bytes(frames[0]) == BEAT_TOPIC


def decode_beat(frames):
    """Frames -> Beat, or raise ProtocolError saying what is wrong."""
    if len(frames) != 3:
        raise ProtocolError("expected 3 frames, got %d" % len(frames))
    topic_frame, kind, body = frames
    if bytes(topic_frame) != BEAT_TOPIC or bytes(kind) != KIND_BEAT:
        raise ProtocolError("not a beat (kind %r)" % bytes(kind[:40]))
    obj = _decode_object(body)
    epoch = obj.get("epoch")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
        raise ProtocolError('"epoch" must be a string of 1 to %d characters'
                            % MAX_EPOCH_CHARS)
    return Beat(epoch, _check_heartbeat(obj.get("heartbeat"), required=True))


# -- reports (client -> master) ------------------------------------------------

class Report:
    """A client's hello or status heartbeat."""

    __slots__ = ("kind", "node", "epoch", "seq", "status", "dropped",
                 "rejected", "interval", "reply_id", "reply")

    def __init__(self, kind, node, epoch=None, seq=None, status=None,
                 dropped=None, rejected=None, interval=None, reply_id=None,
                 reply=None):
        self.kind = kind
        self.node = node
        self.epoch = epoch
        self.seq = seq
        self.status = status
        self.dropped = dropped  # messages the client dropped so far
        self.rejected = rejected  # why it refused its list, or None
        self.interval = interval  # its status interval
        self.reply_id = reply_id  # KIND_REPLY: the command answered
        self.reply = reply

    @property
    def is_hello(self):
        return self.kind == KIND_HELLO

    def __repr__(self):
        return "Report(%r, %r, epoch=%r, seq=%r)" % (
            self.kind, self.node, self.epoch, self.seq)


def encode_report(report):
    """Report -> list of frames."""
    if report.kind not in REPORT_KINDS:
        raise ValueError("unknown report kind %r" % report.kind)
    body = {"v": VERSION, "node": report.node, "epoch": report.epoch,
            "seq": report.seq, "status": report.status}
    for key in ("dropped", "rejected", "interval", "reply"):
        if getattr(report, key) is not None:
            body[key] = getattr(report, key)
    if report.reply_id is not None:
        body["id"] = report.reply_id
    return [report.kind, topic(report.node), _dumps(body)]


def decode_report(frames):
    """Frames -> Report, or raise ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError("expected 3 frames, got %d" % len(frames))
    kind, node_frame, body = (bytes(f) for f in frames)
    if kind not in REPORT_KINDS:
        raise ProtocolError("unknown report kind %r" % kind[:40])
    if not node_frame.endswith(b"\0"):
        raise ProtocolError("node frame is not NUL-terminated")
    try:
        node = check_node_name(node_frame[:-1].decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("node frame is not UTF-8")
    obj = _decode_body(body, node)
    epoch, seq = _check_epoch_seq(obj, required=False)
    status = obj.get("status")
    if status is not None and not isinstance(status, dict):
        raise ProtocolError('"status" must be an object or null')
    dropped = obj.get("dropped")
    if dropped is not None and (isinstance(dropped, bool) or not isinstance(
            dropped, int) or dropped < 0):
        raise ProtocolError('"dropped" must be a non-negative integer')
    rejected = obj.get("rejected")
    if rejected is not None and not isinstance(rejected, str):
        raise ProtocolError('"rejected" must be a string or null')
    interval = obj.get("interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(
            interval, (int, float)) or not 0 < interval <= 86400):
        raise ProtocolError('"interval" must be a number of seconds')
    reply_id, reply = None, None
    if kind == KIND_REPLY:
        reply_id = _check_id(obj.get("id"))
        reply = obj.get("reply")
        if not isinstance(reply, dict):
            raise ProtocolError('"reply" must be an object')
    return Report(kind, node, epoch, seq, status, dropped, rejected,
                  interval, reply_id, reply)


# -- operator commands (master -> client) -----------------------------------------

def encode_control(node, command_id, request):
    body = {"v": VERSION, "node": node, "id": command_id, "request": request}
    return [topic(node), KIND_CONTROL, _dumps(body)]


def decode_control(frames, expected_node):
    """Frames -> (id, request dict), or raise ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError("expected 3 frames, got %d" % len(frames))
    node_frame, kind, body = frames
    if node_frame != topic(expected_node) or kind != KIND_CONTROL:
        raise ProtocolError("not a control message for %r" % expected_node)
    obj = _decode_body(body, expected_node)
    request = obj.get("request")
    if not isinstance(request, dict):
        raise ProtocolError('"request" must be an object')
    return _check_id(obj.get("id")), request


def _check_id(value):
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ProtocolError('"id" must be a string of 1 to %d characters'
                            % MAX_ID_CHARS)
    return value


# -- shared checks ---------------------------------------------------------------

def _decode_object(body):
    """The JSON object of a body, of our protocol's version."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message of %d bytes exceeds the %d bytes limit"
                            % (len(body), MAX_MESSAGE_BYTES))
    obj = jsonin.loads(body, "body", ProtocolError, MAX_MESSAGE_BYTES)
    if not isinstance(obj, dict):
        raise ProtocolError("body must be a JSON object")
    if obj.get("v") != VERSION:
        raise ProtocolError("unsupported protocol version %r" % obj.get("v"))
    return obj


def _decode_body(body, node):
    """The JSON object of a body, which must name ``node`` (as its frame
    does)."""
    obj = _decode_object(body)
    if obj.get("node") != node:
        raise ProtocolError("body names node %r, frame names %r"
                            % (obj.get("node"), node))
    return obj


def _check_heartbeat(heartbeat, required):
    if heartbeat is None and not required:
        return None
    if isinstance(heartbeat, bool) or not isinstance(
            heartbeat, (int, float)) or not 0 < heartbeat <= 86400:
        raise ProtocolError('"heartbeat" must be a positive number')
    return heartbeat


def _check_epoch_seq(obj, required):
    epoch, seq = obj.get("epoch"), obj.get("seq")
    if epoch is None and seq is None and not required:
        return None, None
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
        raise ProtocolError('"epoch" must be a string of 1 to %d characters'
                            % MAX_EPOCH_CHARS)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError('"seq" must be a non-negative integer')
    return epoch, seq


# -- the staleness rule ------------------------------------------------------------

def is_stale(applied_epoch, applied_seq, epoch, seq):
    """True when an update (epoch, seq) is older than what was applied.

    Only a lower sequence number of the same epoch is stale. The same
    sequence is a republish (an answer to a hello, a repair): not stale,
    the client checks it against its file, which repairs a missed or
    failed write. Another
    epoch is never stale: the master restarted and is the authority."""
    if applied_epoch is None or epoch != applied_epoch:
        return False
    return seq < applied_seq
