"""dpd-masterd: read the master file, publish each node's process list.

The master binds a PUB socket (``master_updates``) on which it publishes
every node's list (see ``protocol`` for the frames) and a PULL socket
(``master_stats``) on which clients say hello and push their worker's
status. It publishes:

- every node's list at start-up, each with sequence 1 of a fresh epoch;
- a node's list again, with the next sequence, when the master file
  changes that node's list (a removed node gets an empty list);
- a node's list at once when that node's client says hello;
- a node's list again (same sequence) when a live node (one that reports,
  not silent) has not confirmed it: no report of that epoch and sequence
  within REPAIR_FIRST seconds of sending it, then after twice as long, up
  to REPAIR_MAX (``Awaited``); and at once when a report of a live node
  shows another epoch or sequence while none is awaited;
- one beat every ``heartbeat`` seconds, to every client: the epoch, no
  list (``protocol.Beat``). A client that heard no list of that epoch says
  hello, one that hears nothing for a while too; together with the hello
  at each (re)connection and the repairs above, that brings any node that
  missed a message its list within a second, without sending every list
  at every heartbeat.

The master file is watched with inotify on its folder (an editor's atomic
rename and an in-place write are both seen within milliseconds), with a
cheap stat check as a safety net. An invalid file changes nothing: every
error is logged and the last good lists stay published.

The latest status of every node is kept with the time it was seen and
written to ``<pid file base>.nodes.json``; nodes that fall silent for
``silent_after`` seconds are logged.

With ``http_listen``, the master also serves, from its own loop (``httpd``:
no thread), Prometheus metrics on /metrics, the dashboard on / and the
fleet on /status.json (``metrics``, ``dashboard``).
"""

import dataclasses
import os
import signal
import time

import simplejson as json

from diprocd import bus, control, dashboard, fleet, gate, httpd, kernel, \
    keys, metrics, protocol
from diprocd.config import load_master_config, split_host_port
from diprocd.daemon import beside_pid_file, carry_over
from diprocd.errors import ConfigError, ProtocolError
from diprocd.fileio import atomic_write
from diprocd.loop import Loop

NODES_FILE_INTERVAL = 1.0
SILENCE_CHECK_INTERVAL = 1.0
# Anyone who reaches the stats socket can name a node: keep at most this many
# nodes that are not in the master file.
MAX_UNKNOWN_NODES = 1024
# Reports handled in one go before timers and signals get their turn.
RECEIVE_BATCH = 1000
# How long dpdctl's command waits for the node's answer.
CONTROL_TIMEOUT = 5.0
# A live node confirms a list sent to it (its client reports at once after
# each list received): sent again after this long without, then after
# twice as long each time, up to REPAIR_MAX (a node that refuses its list
# is asked again that rarely).
REPAIR_FIRST = 0.5
REPAIR_MAX = 30.0
# A reload names this many changed (and removed) nodes in the log, then
# counts the others.
LOGGED_NODES = 10


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

    def in_sync(self, node, epoch, seq):
        """True when (epoch, seq) is what ``node`` should hold."""
        return epoch == self.epoch and seq == self.seqs.get(node)

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


class Awaited:
    """The nodes whose confirmation of their list the master awaits, each
    with when to send it again and the delay after that (doubling from
    REPAIR_FIRST to REPAIR_MAX)."""

    def __init__(self):
        self.due = {}  # node -> (when, delay)

    def expect(self, node, now):
        """A list just sent to ``node``: await it from the first delay."""
        self.due[node] = (now + REPAIR_FIRST, REPAIR_FIRST)
        return now + REPAIR_FIRST

    def confirmed(self, node):
        self.due.pop(node, None)

    def __contains__(self, node):
        return node in self.due

    def take_due(self, now):
        """The nodes due now, each awaited again after twice its delay."""
        nodes = [node for node, (when, _) in self.due.items() if when <= now]
        for node in nodes:
            delay = min(REPAIR_MAX, self.due[node][1] * 2)
            self.due[node] = (now + delay, delay)
        return nodes

    def next_due(self):
        return min((when for when, _ in self.due.values()), default=None)


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
    dropped: int = None  # messages the node's client dropped
    rejected: str = None  # why its client refused the list, or None
    interval: float = None  # how often its client reports


class Steering:
    """dpdctl's requests on the master's control socket: the fleet's
    status from what the master heard, its own reload, and every other
    command relayed to the node's client (which asks its worker) with the
    answer routed back, or an error naming why not (unknown node, down,
    no answer within CONTROL_TIMEOUT)."""

    def __init__(self, master):
        self.master = master
        self.pending = {}  # command id -> the dpdctl peer's identity

    def on_request(self, frames):
        if len(frames) < 3:
            return
        identity = frames[0]
        try:
            request = control.decode_request(bytes(frames[-1]))
        except ProtocolError as err:
            return self._answer(identity, {"ok": False, "error": str(err)})
        node = request.get("node")
        if node is None and request["cmd"] == "status":
            return self._answer(identity, self.status())
        if node is None and request["cmd"] == "reload":
            ok = self.master.reload("dpdctl reload")
            return self._answer(identity, {"ok": ok} if ok else {
                "ok": False, "error": "the master file is invalid: kept the "
                "last good lists (see the master's log)"})
        if not isinstance(node, str) or node not in self.known():
            return self._answer(identity, {"ok": False, "error":
                                           'unknown node "%s"' % node})
        master = self.master
        state = fleet.liveness(master.seen.get(node),
                               node in master.lists.configured,
                               master._clock(), master.config.silent_after)
        if state == fleet.NEVER_SEEN:
            return self._answer(identity, {"ok": False, "error":
                                           'node "%s" was never seen' % node})
        if state == fleet.DOWN:
            quiet = master._clock() - master.seen[node].monotonic
            return self._answer(identity, {"ok": False, "error":
                                           'node "%s" is down (nothing heard '
                                           "for %.0f s)" % (node, quiet)})
        command_id = os.urandom(8).hex()
        relayed = {k: v for k, v in request.items() if k not in ("v", "node")}
        if not master.send_to_node(node, protocol.encode_control(
                node, command_id, relayed)):
            return self._answer(identity, {"ok": False, "error":
                                           'node "%s" has no CURVE key: '
                                           "nothing is sent to it" % node})
        self.pending[command_id] = (identity, node)
        master.loop.call_later(("control", command_id), CONTROL_TIMEOUT,
                               lambda: self._expire(command_id, node))

    def on_reply(self, report):
        """A node's answer, taken only from the node the command went to."""
        pending = self.pending.get(report.reply_id)
        if pending is None or pending[1] != report.node:
            return
        del self.pending[report.reply_id]
        self.master.loop.cancel(("control", report.reply_id))
        self._answer(pending[0], report.reply)

    def _expire(self, command_id, node):
        pending = self.pending.pop(command_id, None)
        if pending is not None:
            self._answer(pending[0], {"ok": False, "error": 'node "%s" did not '
                                    "answer within %.0f s" % (
                                        node, CONTROL_TIMEOUT)})

    def known(self):
        return set(self.master.lists.configured) | set(self.master.seen)

    def status(self):
        master = self.master
        now = master._clock()
        nodes = {name: fleet.node_status(
            name, master.seen.get(name), name in master.lists.configured, now,
            master.config.silent_after, master.lists.epoch,
            master.lists.seqs.get(name)) for name in sorted(self.known())}
        return {"ok": True, "epoch": master.lists.epoch, "nodes": nodes,
                "warnings": master.config.exposure()}

    def _answer(self, identity, reply):
        self.master.control.send_multipart(
            [identity, b"", json.dumps(reply).encode("utf-8")])


def _unlink_ipc(endpoint):
    if endpoint and endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://"):])
        except OSError:
            pass


def _curve_summary(curve):
    if curve is None:
        return "no CURVE"
    return "CURVE: %d node keys in %s%s" % (
        len(curve.clients.keys), curve.clients.folder,
        "" if curve.operators is None else ", %d operator keys in %s" % (
            len(curve.operators.keys), curve.operators.folder))


def _key_changes(old, new):
    """What a reload changed in the allowed keys, for the log."""
    lines = []
    if old is None or new is None:
        return lines
    for what, before, after in (
            ("node", old.clients, new.clients),
            ("operator", old.operators, new.operators)):
        before = before.keys if before else {}
        after = after.keys if after else {}
        for name in sorted(set(after) - set(before)):
            lines.append('%s key "%s" allowed' % (what, name))
        for name in sorted(set(before) - set(after)):
            lines.append('%s key "%s" removed: refused from now on'
                         % (what, name))
        for name in sorted(set(before) & set(after)):
            if before[name] != after[name]:
                lines.append('%s key "%s" replaced' % (what, name))
    return lines


def _own_key(config):
    return None if config.curve is None else config.curve.pair


def _check_sender(report, key_owner):
    """With CURVE, a node's key reports for that node only."""
    if key_owner != report.node:
        raise ProtocolError('a report for node "%s" sent with %s' % (
            report.node, 'the key of node "%s"' % key_owner if key_owner
            else "a key no longer allowed"))


def nodes_file_path(pid_file):
    """``/run/dpd-masterd.pid`` -> ``/run/dpd-masterd.nodes.json``."""
    return beside_pid_file(pid_file, ".nodes.json")


class Master:
    """The master's decisions, on the shared ``loop.Loop``: what to publish
    and when, and what it heard from each node."""

    def __init__(self, config, log, clock=time.monotonic, pid_lock=None):
        self.config = config
        self.pid_lock = pid_lock
        self.log = log
        self._clock = clock
        self.lists = NodeLists(protocol.new_epoch())
        self.seen = {}
        self.nodes_file = nodes_file_path(config.pid_file)
        self.loop = Loop(bus.ZmqPoller(), clock=clock, log=log)
        self.pub = self.pull = self.control = None
        self.steering = Steering(self)
        self._nodes_written = None
        self.drops = bus.Drops(log, clock, "malformed report", self.loop)
        # With CURVE: well-formed, but sent with another node's key.
        self.refusals = bus.Drops(log, clock, "report", self.loop,
                                  verb="refused")
        self._encoded = {}  # node -> ((epoch, seq, heartbeat, key), frames)
        self.awaited = Awaited()
        self.gate = gate.Gate(lambda: self.config.curve, log, clock)
        self._sealer = None
        self.counts = {"publishes": 0, "reports": 0, "beats": 0}
        self.http = None  # the httpd.Server of http_listen

    # -- life cycle --------------------------------------------------------

    def run(self):
        zmq = bus.zmq_module()
        loop = self.loop
        # Two connections per node (updates and stats): thousands of nodes
        # need more descriptors than the usual soft limit of 1024.
        kernel.raise_open_files_limit()
        context = zmq.Context()
        try:
            if self.config.curve is not None:
                self.gate.start(context, loop)
                self._sealer = keys.Sealer(self.config.curve.pair.secret)
            try:
                self._bind(context, self.config)
            except (zmq.ZMQError, OSError) as err:
                self.log.error("cannot bind: %s", err)
                return 1
            if self.config.http_listen and not self._serve_http():
                return 1
            loop.handle_signals({signal.SIGTERM: self._exit_signal,
                                 signal.SIGINT: self._exit_signal,
                                 signal.SIGHUP: lambda _: self.reload("SIGHUP")})
            loop.watch_file(self.config.path,
                            lambda: self.reload("file changed"))
            self.lists.apply(self.config.nodes)
            self.log.info("master up: epoch %s, %d nodes, updates on %s, "
                          "stats on %s, %s", self.lists.epoch,
                          len(self.config.nodes), self.config.master_updates,
                          self.config.master_stats, _curve_summary(
                              self.config.curve))
            self.publish_all()
            self._heartbeat()
            self._silence_check()
            if self.config.on_disk_differs():  # written while we started
                self.reload("file changed while starting")
            loop.run()
            self.log.info("master down")
            return 0
        finally:
            self.gate.close(loop)
            if self.http is not None:
                self.http.close()
            loop.close()
            for sock in (self.pub, self.pull, self.control):
                if sock is not None:
                    sock.close(linger=0)
            if self.control is not None:
                # A stale socket file would make dpdctl wait for an answer.
                _unlink_ipc(self.config.master_control)
            context.term()

    def _serve_http(self):
        """Listen on http_listen: metrics, dashboard, status.json."""
        try:
            registry = metrics.registry(self)
        except ImportError as err:
            self.log.error('"http_listen" needs prometheus_client '
                           "(python3-prometheus-client): %s", err)
            return False
        try:
            sock = httpd.listen(*split_host_port(self.config.http_listen))
        except OSError as err:
            self.log.error("cannot listen on %s: %s", self.config.http_listen,
                           err)
            return False
        self.http = httpd.Server(sock, self.loop, {
            "/metrics": lambda: metrics.exposition(registry),
            "/": dashboard.page,
            "/status.json": lambda: ("application/json", json.dumps(
                metrics.fleet_view(self)).encode("utf-8"))}, self.log)
        self.log.info("metrics on http://%s/metrics, dashboard on http://%s/",
                      self.config.http_listen, self.config.http_listen)
        return True

    def _exit_signal(self, signum):
        self.log.info("got %s: exiting", signal.Signals(signum).name)
        self.loop.stop()

    def _bind(self, context, config, bound=None):
        """Bind a socket for each endpoint of ``config`` that ``bound`` (the
        configuration in force) does not already serve; close the replaced
        sockets only once every new bind worked."""
        zmq = bus.zmq_module()
        wanted = (("pub", zmq.PUB, config.master_updates,
                   bound and bound.master_updates),
                  ("pull", zmq.PULL, config.master_stats,
                   bound and bound.master_stats),
                  ("control", zmq.ROUTER, config.master_control,
                   bound and bound.master_control))
        new = {}
        try:
            for attr, kind, endpoint, current in wanted:
                if endpoint == current:
                    continue
                sock = new[attr] = bus.socket(context, kind,
                                              receives=kind != zmq.PUB)
                self._secure(sock, config, attr)
                sock.bind(endpoint)
                if endpoint.startswith("ipc://") and kind == zmq.ROUTER:
                    # Who may steer the cluster: the socket file's rights.
                    os.chmod(endpoint[len("ipc://"):], 0o660)
        except (zmq.ZMQError, OSError):
            for sock in new.values():
                sock.close(linger=0)
            raise
        for attr, sock in new.items():
            old = getattr(self, attr, None)
            setattr(self, attr, sock)
            if attr != "pub":
                if old is not None:
                    self.loop.remove_reader(old)
                self.loop.add_reader(sock, self._receive_reports
                                     if attr == "pull" else self._on_control)
            if old is not None:
                old.close(linger=0)
                if attr == "control" and bound is not None:
                    _unlink_ipc(bound.master_control)

    def _secure(self, sock, config, attr):
        """CURVE server on the nodes' sockets; on dpdctl's unless ipc
        (there the socket file's rights say who may steer)."""
        if config.curve is None:
            return
        if attr != "control":
            keys.apply_to_socket(sock, bus.zmq_module(), config.curve.pair,
                                 domain=gate.NODES)
        elif not config.master_control.startswith("ipc://"):
            keys.apply_to_socket(sock, bus.zmq_module(), config.curve.pair,
                                 domain=gate.OPERATORS)

    def _heartbeat(self):
        """The beat, every ``heartbeat`` seconds: one small message for every
        client, whatever the number of nodes."""
        self.pub.send_multipart(protocol.encode_beat(protocol.Beat(
            self.lists.epoch, self.config.heartbeat)))
        self.counts["beats"] += 1
        self.loop.call_later("heartbeat", self.config.heartbeat,
                             self._heartbeat)

    def _silence_check(self):
        self._check_silence(self._clock())
        self.loop.call_later("silence", SILENCE_CHECK_INTERVAL,
                             self._silence_check)

    def _nodes_changed(self):
        """Write the nodes file soon, at most once a second."""
        if self.loop.pending("nodes file") is not None:
            return
        when = self._clock() if self._nodes_written is None else max(
            self._clock(), self._nodes_written + NODES_FILE_INTERVAL)
        self.loop.call_at("nodes file", when, self._write_nodes_file)

    # -- configuration ---------------------------------------------------------

    def reload(self, why):
        """Re-read the master file; publish the nodes whose list changed."""
        try:
            config = load_master_config(self.config.path,
                                        self.config.owners)
        except ConfigError as err:
            self.log.error("%s: invalid master file, keeping the last good "
                           "lists:", why)
            for problem in err.problems:
                self.log.error("  %s", problem)
            return False
        for warning in config.warnings:
            self.log.warning(warning)
        if _own_key(config) != _own_key(self.config):
            self.log.error("%s: the master's CURVE key (curve_secret_key) "
                           "changes only at a restart (every node must get "
                           "the new public key): kept the last good "
                           "configuration", why)
            return False
        if (config.master_updates, config.master_stats,
                config.master_control) != (
                self.config.master_updates, self.config.master_stats,
                self.config.master_control):
            try:
                self._bind(self.pub.context, config, self.config)
                self.log.info("now publishing on %s, stats on %s, control "
                              "on %s", config.master_updates,
                              config.master_stats, config.master_control)
            except Exception as err:  # zmq.ZMQError
                self.log.error("cannot bind the new endpoints (%s): keeping "
                               "the last good configuration", err)
                return False
        if config.http_listen != self.config.http_listen:
            self.log.warning('%s: "http_listen" changes at a restart only: '
                             "still %s", why, self.config.http_listen or "off")
            config = config.replace(http_listen=self.config.http_listen)
        config = carry_over(self.config, config, self.pid_lock, self.log)
        for line in _key_changes(self.config.curve, config.curve):
            self.log.info("%s: %s", why, line)
        if config.pid_file != self.config.pid_file:
            self._move_nodes_file(nodes_file_path(config.pid_file))
        self.config = config
        # A shorter heartbeat takes effect at once.
        due = self.loop.pending("heartbeat")
        if due is not None and due > self._clock() + config.heartbeat:
            self.loop.call_later("heartbeat", config.heartbeat,
                                 self._heartbeat)
        changed, removed = self.lists.apply(config.nodes)
        for node in changed + removed:  # sent first, logged after
            self.publish(node)
        self._log_changes(why, changed, removed)
        return True

    def _log_changes(self, why, changed, removed):
        """A line per node changed or removed, for the first LOGGED_NODES
        of each, then one line counting the others (a save changing
        thousands of nodes must not take a line, and time, for each)."""
        for node in removed[:LOGGED_NODES]:
            self.log.warning('node "%s" removed from the master file: it is '
                             "sent an empty list (its processes stop)", node)
        if len(removed) > LOGGED_NODES:
            self.log.warning("%s: %d more nodes removed from the master file "
                             "(%d in all)", why, len(removed) - LOGGED_NODES,
                             len(removed))
        for node in changed[:LOGGED_NODES]:
            self.log.info('node "%s": new list (seq %d, %d processes)', node,
                          self.lists.seqs[node], len(self.lists.lists[node]))
        if len(changed) > LOGGED_NODES:
            self.log.info("%s: %d more nodes got a new list (%d in all)", why,
                          len(changed) - LOGGED_NODES, len(changed))
        if not changed and not removed:
            self.log.debug("%s: no node's list changed", why)

    # -- publishing ------------------------------------------------------------

    def _node_key(self, node):
        """With CURVE, the public key a node's messages are sealed to
        (None: it has none, nothing is sent); without, b""."""
        curve = self.config.curve
        return b"" if curve is None else curve.clients.keys.get(node)

    def _sealed(self, frames, node_key):
        if node_key:
            frames[2] = self._sealer.seal(node_key, frames[2])
        return frames

    def send_to_node(self, node, frames):
        """Publish a message for ``node`` (sealed to its key with CURVE);
        False when it has no key."""
        node_key = self._node_key(node)
        if node_key is None:
            return False
        self.pub.send_multipart(self._sealed(frames, node_key))
        return True

    def publish(self, node):
        """Send ``node`` its list and, when it is live, await its
        confirmation (``Awaited``)."""
        if self._send_list(node) and self._live(node):
            when = self.awaited.expect(node, self._clock())
            due = self.loop.pending("repair")
            if due is None or when < due:
                self.loop.call_at("repair", when, self._repair)

    def _send_list(self, node):
        # Encoded (and sealed) once per (sequence, heartbeat, key): a hello
        # or a repair sends the same bytes again.
        node_key = self._node_key(node)
        if node_key is None:
            return False
        key = (self.lists.epoch, self.lists.seqs[node], self.config.heartbeat,
               node_key)
        cached = self._encoded.get(node)
        if cached is None or cached[0] != key:
            cached = (key, self._sealed(protocol.encode_update(
                self.lists.update(node, self.config.heartbeat)), node_key))
            self._encoded[node] = cached
        self.pub.send_multipart(cached[1], copy=False)
        self.counts["publishes"] += 1
        return True

    def publish_all(self):
        for node in self.lists.nodes():
            self.publish(node)

    def _live(self, node):
        """A node that reports (and has not fallen silent): one whose
        confirmation of its list is awaited."""
        seen = self.seen.get(node)
        return seen is not None and not seen.silent

    def _repair(self):
        """Send again each list whose confirmation is overdue, while its
        node is live and does not hold it."""
        for node in self.awaited.take_due(self._clock()):
            seen = self.seen.get(node)
            if not self._live(node) or node not in self.lists.seqs or \
                    self.lists.in_sync(node, seen.epoch, seen.seq):
                self.awaited.confirmed(node)
            elif self._send_list(node):
                self.log.debug('node "%s" has not confirmed seq %d: sent '
                               "again", node, self.lists.seqs[node])
            else:
                self.awaited.confirmed(node)  # its key was removed
        due = self.awaited.next_due()
        if due is None:
            self.loop.cancel("repair")
        else:
            self.loop.call_at("repair", due, self._repair)

    # -- reports from clients ------------------------------------------------------

    def _receive_reports(self):
        bus.receive_all(self.pull, self.on_frames, RECEIVE_BATCH,
                        copy=self.config.curve is None)

    def on_frames(self, frames):
        try:
            report = protocol.decode_report(frames)
        except ProtocolError as err:
            self.drops.drop(err)
            return
        curve = self.config.curve
        if curve is not None:
            try:
                _check_sender(report, curve.clients.name_of(
                    bus.sender_id(frames[0])))
            except ProtocolError as err:
                self.refusals.drop(err)
                return
        self.on_report(report)

    def _on_control(self):
        curve = self.config.curve
        if curve is None or self.config.master_control.startswith("ipc://"):
            bus.receive_all(self.control, self.steering.on_request,
                            RECEIVE_BATCH)
        else:
            bus.receive_all(self.control, self._operator_request,
                            RECEIVE_BATCH, copy=False)

    def _operator_request(self, frames):
        """A request on the tcp control socket: taken only while its key is
        still an operator's (ZAP checked it at the handshake only, and a
        key removed since must not steer on a connection made before)."""
        operators = self.config.curve.operators
        if operators is None or operators.name_of(
                bus.sender_id(frames[-1])) is None:
            self.refusals.drop("a dpdctl request sent with an operator key "
                               "no longer allowed")
            return
        self.steering.on_request([bytes(frame) for frame in frames])

    def on_report(self, report):
        self.counts["reports"] += 1
        if report.kind == protocol.KIND_REPLY:
            self.steering.on_reply(report)
            return
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
        seen.dropped = report.dropped
        seen.rejected, seen.interval = report.rejected, report.interval
        self.seen[node] = seen
        self._nodes_changed()
        in_sync = self.lists.in_sync(node, report.epoch, report.seq)
        if in_sync:
            self.awaited.confirmed(node)
        if report.is_hello:
            if self.lists.ensure(node):
                self.log.warning('unknown node "%s" said hello: it is not in '
                                 "the master file, it gets an empty list",
                                 node)
            self.log.debug('hello from "%s": sending its list (seq %d)', node,
                           self.lists.seqs[node])
            self.publish(node)
        elif not in_sync and node not in self.awaited and \
                node in self.lists.seqs:
            self.log.info('node "%s" holds seq %s of epoch %s, not seq %d: '
                          "sending its list again", node, report.seq,
                          report.epoch, self.lists.seqs[node])
            self.publish(node)

    def _check_silence(self, now):
        for node, seen in self.seen.items():
            if not seen.silent and now - seen.monotonic > \
                    self.config.silent_after:
                seen.silent = True
                self._nodes_changed()
                self.log.warning('node "%s" fell silent: nothing heard for '
                                 "%.0f s", node, now - seen.monotonic)

    def nodes_document(self):
        nodes = {}
        for node, seen in sorted(self.seen.items()):
            nodes[node] = {
                "last_seen": seen.time, "silent": seen.silent,
                "applied": {"epoch": seen.epoch, "seq": seen.seq},
                "in_sync": self.lists.in_sync(node, seen.epoch, seen.seq),
                "status": seen.status, "dropped_updates": seen.dropped}
        return {"epoch": self.lists.epoch, "written": time.time(),
                "dropped_reports": self.drops.count + self.refusals.count,
                "nodes": nodes}

    def _move_nodes_file(self, path):
        try:
            os.unlink(self.nodes_file)
        except OSError:
            pass
        self.nodes_file = path
        self._nodes_changed()

    def _write_nodes_file(self):
        self._nodes_written = self._clock()
        try:
            atomic_write(self.nodes_file, json.dumps(self.nodes_document()),
                         mode=0o644, fsync=False, follow_symlinks=False)
        except OSError as err:
            self.log.warning("cannot write %s: %s", self.nodes_file, err)
