"""dpd-masterd: read the master file, publish each node's process list.

The master binds a PUB socket (``master_updates``) on which it publishes
every node's list (see ``protocol`` for the frames) and a PULL socket
(``master_stats``) on which clients say hello and push their worker's
status. It publishes:

- every node's list at start-up, each with sequence 1 of a fresh epoch;
- a node's list again, with the next sequence, when the master file
  changes that node's list (a removed node gets an empty list);
- a node's list at once when that node's client says hello;
- every node's list every ``heartbeat`` seconds (same sequence), which
  repairs whatever a subscriber missed.

The master file is watched with inotify on its folder (an editor's atomic
rename and an in-place write are both seen within milliseconds), with a
cheap stat check as a safety net. An invalid file changes nothing: every
error is logged and the last good lists stay published.

The latest status of every node is kept with the time it was seen and
written to ``<pid file base>.nodes.json``; nodes that fall silent for
``silent_after`` seconds are logged.
"""

import dataclasses
import signal
import time

import simplejson as json

from diprocd import protocol
from diprocd.config import (check_abs_path, check_endpoint, check_keys,
                            check_seconds, read_json_file, validate_procs)
from diprocd.daemon import SignalPipe, beside_pid_file
from diprocd.errors import ConfigError, ProtocolError
from diprocd.fileio import atomic_write
from diprocd.watch import FileWatch

MASTER_KEYS = ("pid_file", "log_file", "master_stats", "master_updates",
               "nodes", "heartbeat", "silent_after")
DEFAULT_HEARTBEAT = 3.0
DEFAULT_SILENT_AFTER = 15.0
# Reload this long after the first change event: an in-place write may come
# in several chunks; an atomic rename is complete at once.
RELOAD_SETTLE = 0.01
NODES_FILE_INTERVAL = 1.0
SILENCE_CHECK_INTERVAL = 1.0
# Anyone who reaches the stats socket can name a node: keep at most this many
# nodes that are not in the master file.
MAX_UNKNOWN_NODES = 1024



@dataclasses.dataclass
class MasterConfig:
    path: str
    pid_file: str
    log_file: str
    master_stats: str
    master_updates: str
    nodes: dict  # node name -> raw process list (validated JSON)
    heartbeat: float = DEFAULT_HEARTBEAT
    silent_after: float = DEFAULT_SILENT_AFTER
    warnings: list = dataclasses.field(default_factory=list)


def load_master_config(path):
    """Read and validate the master CONFIG; raise ConfigError with every
    problem (naming file, node, process and field) or return MasterConfig."""
    obj = read_json_file(path)
    problems, warnings = [], []
    check_keys(obj, path, ("pid_file", "master_stats", "master_updates",
                           "nodes"), MASTER_KEYS, problems, warnings)
    pid_file = check_abs_path(obj, "pid_file", path, problems)
    log_file = check_abs_path(obj, "log_file", path, problems, required=False)
    stats = check_endpoint(obj, "master_stats", path, problems)
    updates = check_endpoint(obj, "master_updates", path, problems)
    if stats and stats == updates:
        problems.append('%s: keys "master_stats" and "master_updates" must '
                        'differ' % path)
    heartbeat = check_seconds(obj, "heartbeat", path, DEFAULT_HEARTBEAT,
                              problems)
    silent_after = check_seconds(obj, "silent_after", path,
                                 DEFAULT_SILENT_AFTER, problems, low=0.1)
    nodes = {}
    raw_nodes = obj.get("nodes", {})
    if not isinstance(raw_nodes, dict):
        problems.append('%s: key "nodes": must be an object {node name: '
                        '[process, ...]}' % path)
        raw_nodes = {}
    for node, procs in raw_nodes.items():
        where = '%s: node "%s"' % (path, node)
        try:
            protocol.check_node_name(node)
        except ProtocolError as err:
            problems.append("%s: %s" % (where, err))
            continue
        # Users are the node's business: the client checks them there.
        _, node_problems, node_warnings = validate_procs(
            procs, where, pid_dir=None, check_users=False)
        problems += node_problems
        warnings += node_warnings
        # Clients drop a message over the protocol's bound: refuse it here.
        size = len(protocol.encode_update(protocol.Update(
            node, "e" * protocol.MAX_EPOCH_CHARS, 2 ** 53, procs, heartbeat))[2])
        if size > protocol.MAX_MESSAGE_BYTES:
            problems.append("%s: its list encodes to %d bytes, more than the "
                            "%d a client accepts" % (where, size,
                                                     protocol.MAX_MESSAGE_BYTES))
        nodes[node] = procs
    if problems:
        raise ConfigError(problems)
    return MasterConfig(path, pid_file, log_file, stats, updates, nodes,
                        heartbeat, silent_after, warnings)


class NodeLists:
    """Each node's current list and sequence number within one epoch.

    ``apply(nodes)`` takes a new {node: list} mapping and returns the names
    whose list changed (each got the next sequence number) and the names
    removed (each now holds an empty list, kept so that its client is told
    again at every heartbeat)."""

    def __init__(self, epoch):
        self.epoch = epoch
        self.lists = {}
        self.seqs = {}
        self.configured = set()

    def apply(self, nodes):
        changed, removed = [], []
        for node, procs in nodes.items():
            if self.lists.get(node) != procs or node not in self.seqs:
                self._set(node, procs)
                changed.append(node)
        for node in sorted(self.configured - set(nodes)):
            if self.lists.get(node):
                self._set(node, [])
                removed.append(node)
        self.configured = set(nodes)
        return changed, removed

    def ensure(self, node):
        """A node we never configured (its client said hello): it runs
        nothing. Return True when it was unknown."""
        if node in self.seqs:
            return False
        self._set(node, [])
        return True

    def _set(self, node, procs):
        self.lists[node] = procs
        self.seqs[node] = self.seqs.get(node, 0) + 1

    def update(self, node, heartbeat=None):
        return protocol.Update(node, self.epoch, self.seqs[node],
                               self.lists[node], heartbeat)

    def nodes(self):
        return sorted(self.seqs)


@dataclasses.dataclass
class NodeSeen:
    """What the master last heard from one node."""
    time: float  # wall clock, for people
    monotonic: float  # for the silence check
    kind: str
    epoch: str = None
    seq: int = None
    status: dict = None
    silent: bool = False


def nodes_file_path(pid_file):
    """``/run/dpd-masterd.pid`` -> ``/run/dpd-masterd.nodes.json``."""
    return beside_pid_file(pid_file, ".nodes.json")


class Master:
    """The master's event loop (one thread, one zmq Poller)."""

    def __init__(self, config, log, clock=time.monotonic):
        self.config = config
        self.log = log
        self._clock = clock
        self.lists = NodeLists(protocol.new_epoch())
        self.seen = {}
        self.nodes_file = nodes_file_path(config.pid_file)
        self._signals = None
        self._watch = None
        self._running = False
        self._reload_due = None
        self._nodes_dirty = False
        self._encoded = {}  # node -> ((epoch, seq, heartbeat), frames)

    # -- life cycle --------------------------------------------------------

    def run(self):
        import zmq  # only after daemonizing

        self._signals = SignalPipe((signal.SIGTERM, signal.SIGINT,
                                    signal.SIGHUP))
        context = zmq.Context()
        try:
            try:
                self._bind(context, self.config)
            except zmq.ZMQError as err:
                self.log.error("cannot bind: %s", err)
                return 1
            self._watch = FileWatch(self.config.path)
            return self._loop(zmq)
        finally:
            if self._watch:
                self._watch.close()
            for sock in (getattr(self, "pub", None), getattr(self, "pull", None)):
                if sock is not None:
                    sock.close(linger=0)
            context.term()
            self._signals.close()

    def _bind(self, context, config, bound=None):
        """Bind a socket for each endpoint of ``config`` that ``bound`` (the
        configuration in force) does not already serve; close the replaced
        sockets only once every new bind worked."""
        import zmq
        wanted = (("pub", zmq.PUB, config.master_updates,
                   bound and bound.master_updates),
                  ("pull", zmq.PULL, config.master_stats,
                   bound and bound.master_stats))
        new = {}
        try:
            for attr, kind, endpoint, current in wanted:
                if endpoint == current:
                    continue
                sock = new[attr] = context.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                if kind == zmq.PULL:
                    sock.setsockopt(zmq.MAXMSGSIZE,
                                    2 * protocol.MAX_MESSAGE_BYTES)
                sock.bind(endpoint)
        except zmq.ZMQError:
            for sock in new.values():
                sock.close(linger=0)
            raise
        for attr, sock in new.items():
            old = getattr(self, attr, None)
            setattr(self, attr, sock)
            if old is not None:
                old.close(linger=0)

    def _loop(self, zmq):
        log = self.log
        self.lists.apply(self.config.nodes)
        log.info("master up: epoch %s, %d nodes, updates on %s, stats on %s",
                 self.lists.epoch, len(self.config.nodes),
                 self.config.master_updates, self.config.master_stats)
        self.publish_all()
        now = self._clock()
        next_heartbeat = now + self.config.heartbeat
        next_silence_check = now + SILENCE_CHECK_INTERVAL
        next_nodes_file = now
        self._running = True
        while self._running:
            poller = zmq.Poller()
            poller.register(self.pull, zmq.POLLIN)
            poller.register(self._signals.fileno(), zmq.POLLIN)
            if self._watch.fileno() is not None:
                poller.register(self._watch.fileno(), zmq.POLLIN)
            now = self._clock()
            due = [next_heartbeat, next_silence_check]
            if self._reload_due is not None:
                due.append(self._reload_due)
            if self._nodes_dirty:
                due.append(next_nodes_file)
            if self._watch.poll_interval:
                due.append(now + self._watch.poll_interval)
            timeout_ms = max(0, int((min(due) - now) * 1000) + 1)
            events = dict(poller.poll(timeout_ms))
            if self._signals.fileno() in events:
                self._handle_signals()
            if self.pull in events:
                self._receive_reports(zmq)
            now = self._clock()
            if self._file_changed(events) and self._reload_due is None:
                self._reload_due = now + RELOAD_SETTLE
            if self._reload_due is not None and now >= self._reload_due:
                self._reload_due = None
                self.reload("file changed")
            # A reload may have shortened the heartbeat: never wait longer
            # than the one in force.
            next_heartbeat = min(next_heartbeat, now + self.config.heartbeat)
            if now >= next_heartbeat:
                self.publish_all()
                next_heartbeat = now + self.config.heartbeat
            if now >= next_silence_check:
                self._check_silence(now)
                next_silence_check = now + SILENCE_CHECK_INTERVAL
            if self._nodes_dirty and now >= next_nodes_file:
                self._write_nodes_file()
                next_nodes_file = now + NODES_FILE_INTERVAL
        log.info("master down")
        return 0

    def _file_changed(self, events):
        if self._watch.fileno() is None:
            return self._watch.changed()
        return self._watch.fileno() in events and self._watch.read_events()

    def _handle_signals(self):
        for signum in self._signals.drain():
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.info("got %s: exiting", signal.Signals(signum).name)
                self._running = False
            elif signum == signal.SIGHUP:
                self.reload("SIGHUP")

    # -- configuration ---------------------------------------------------------

    def reload(self, why):
        """Re-read the master file; publish the nodes whose list changed."""
        try:
            config = load_master_config(self.config.path)
        except ConfigError as err:
            self.log.error("%s: invalid master file, keeping the last good "
                           "lists:", why)
            for problem in err.problems:
                self.log.error("  %s", problem)
            return False
        for warning in config.warnings:
            self.log.warning(warning)
        if (config.master_updates, config.master_stats) != (
                self.config.master_updates, self.config.master_stats):
            try:
                self._bind(self.pub.context, config, self.config)
                self.log.info("now publishing on %s, stats on %s",
                              config.master_updates, config.master_stats)
            except Exception as err:  # zmq.ZMQError
                self.log.error("cannot bind the new endpoints (%s): keeping "
                               "the last good configuration", err)
                return False
        for key in ("pid_file", "log_file"):
            if getattr(config, key) != getattr(self.config, key):
                self.log.warning('key "%s" changed: takes effect at the next '
                                 "start", key)
                setattr(config, key, getattr(self.config, key))
        self.config = config
        changed, removed = self.lists.apply(config.nodes)
        for node in removed:
            self.log.warning('node "%s" removed from the master file: it is '
                             "sent an empty list (its processes stop)", node)
        for node in changed:
            self.log.info('node "%s": new list (seq %d, %d processes)', node,
                          self.lists.seqs[node], len(self.lists.lists[node]))
            self.publish(node)
        for node in removed:
            self.publish(node)
        if not changed and not removed:
            self.log.debug("%s: no node's list changed", why)
        return True

    # -- publishing ------------------------------------------------------------

    def publish(self, node):
        # Encoded once per (sequence, heartbeat): the heartbeat republishes
        # every node, and most lists never change.
        key = (self.lists.epoch, self.lists.seqs[node], self.config.heartbeat)
        cached = self._encoded.get(node)
        if cached is None or cached[0] != key:
            cached = (key, protocol.encode_update(
                self.lists.update(node, self.config.heartbeat)))
            self._encoded[node] = cached
        self.pub.send_multipart(cached[1], copy=False)

    def publish_all(self):
        for node in self.lists.nodes():
            self.publish(node)

    # -- reports from clients ------------------------------------------------------

    def _receive_reports(self, zmq):
        for _ in range(1000):  # bounded: let timers and signals run
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                report = protocol.decode_report(frames)
            except ProtocolError as err:
                self.log.warning("dropped a malformed report: %s", err)
                continue
            self.on_report(report)

    def on_report(self, report):
        now = self._clock()
        node = report.node
        previous = self.seen.get(node)
        if previous is None and node not in self.lists.configured and len(
                set(self.seen) - self.lists.configured) >= MAX_UNKNOWN_NODES:
            self.log.debug('report from unknown node "%s" dropped: already '
                           "%d unknown nodes", node, MAX_UNKNOWN_NODES)
            return
        if previous is not None and previous.silent:
            self.log.info('node "%s" is back after %.0f s of silence', node,
                          now - previous.monotonic)
        elif previous is None:
            self.log.info('node "%s" reported (%s)', node,
                          report.kind.decode())
        seen = NodeSeen(time.time(), now, report.kind.decode(), report.epoch,
                        report.seq, report.status)
        if report.status is None and previous is not None:
            seen.status = previous.status
        self.seen[node] = seen
        self._nodes_dirty = True
        if report.is_hello:
            if self.lists.ensure(node):
                self.log.warning('unknown node "%s" said hello: it is not in '
                                 "the master file, it gets an empty list",
                                 node)
            self.log.debug('hello from "%s": sending its list (seq %d)', node,
                           self.lists.seqs[node])
            self.publish(node)

    def _check_silence(self, now):
        for node, seen in self.seen.items():
            if not seen.silent and now - seen.monotonic > \
                    self.config.silent_after:
                seen.silent = True
                self._nodes_dirty = True
                self.log.warning('node "%s" fell silent: nothing heard for '
                                 "%.0f s", node, now - seen.monotonic)

    def nodes_document(self):
        nodes = {}
        for node, seen in sorted(self.seen.items()):
            nodes[node] = {
                "last_seen": seen.time, "silent": seen.silent,
                "applied": {"epoch": seen.epoch, "seq": seen.seq},
                "in_sync": (seen.epoch == self.lists.epoch
                            and seen.seq == self.lists.seqs.get(node)),
                "status": seen.status}
        return {"epoch": self.lists.epoch, "written": time.time(),
                "nodes": nodes}

    def _write_nodes_file(self):
        self._nodes_dirty = False
        try:
            atomic_write(self.nodes_file, json.dumps(self.nodes_document()),
                         fsync=False)
        except OSError as err:
            self.log.warning("cannot write %s: %s", self.nodes_file, err)


# -- loop helpers (the client uses them too) ----------------------------------
