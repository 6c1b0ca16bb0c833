"""dpd-clientd: receive this node's process list, rewrite the worker's file.

The client connects a SUB socket to the master's ``master_updates``,
subscribed to its own node's NUL-terminated name and to the beat's topic
(``protocol.BEAT_TOPIC``) only, and a PUSH socket to ``master_stats``. It:

- says hello on the PUSH socket when it (re)connects, when the master's
  beat names an epoch it has heard no list of (the master restarted), and
  whenever it has heard nothing from the master for a while (2.5
  heartbeats); the master answers with this node's list at once. Until a
  hello has really gone out (the master may be down) it retries every
  0.2 s, then backs off to 2 s;
- checks every update (frames, node name again, epoch and sequence, size,
  JSON, and the process list with the worker's own validator on this
  machine, users included); a bad one is logged and dropped;
- ignores an update older than what it applied within the same epoch;
- rewrites ``conf_file`` only when the list differs from the file's
  ``procs``, atomically (``fileio.atomic_write``), keeping the file's other
  keys, mode 0600 (or the file's own where stricter); a failed write
  leaves the old file and is retried every ``RETRY_INTERVAL`` seconds;
- at each beat, looks whether ``conf_file`` changed since it wrote or
  checked it (a stat): if so, it checks it against the list it holds
  again, which repairs a hand edit;
- pushes a status heartbeat (node name, what it applied and the worker's
  status file) every ``status_interval`` seconds, at once when the
  worker's status file changes and after each list received (that report
  is how the master knows the list arrived: it sends it again otherwise).
"""

import os
import signal
import time

import simplejson as json

from diprocd import bus, control, keys, ledger, protocol
from diprocd.config import (load_client_config, read_json_file,
                            validate_worker_procs)
from diprocd.daemon import carry_over
from diprocd.errors import ConfigError, ProtocolError
from diprocd.fileio import (atomic_write, existing_mode,
                            remove_dead_writers_temps)
from diprocd.loop import Loop
from diprocd.status import live_views
from diprocd.watch import file_signature

# Before the master's first update tells us its heartbeat, assume this one.
ASSUMED_HEARTBEAT = 3.0
HELLO_RETRY = 0.2  # while the master is unreachable (nothing was sent)
HELLO_BACKOFF_MAX = 2.0  # while hellos go out but no answer comes
SILENCE_HEARTBEATS = 2.5
RETRY_INTERVAL = 1.0  # a failed write of the worker's file
STATUS_MIN_GAP = 0.1  # at most this often on status file changes
RELAY_TIMEOUT = 3.0  # the worker's answer to an operator's command
# A master that refused our CURVE key: ZeroMQ does not retry, we do, from
# this delay doubling up to the max (a key allowed later gets in).
REFUSED_RETRY = 1.0
REFUSED_RETRY_MAX = 30.0
# Updates handled in one go before timers and signals get their turn: at
# most this many, for at most this long.
RECEIVE_BATCH = 100
RECEIVE_BUDGET = 0.05


def check_update_procs(update, worker_doc, conf_file):
    """Validate an update's process list as the worker will, on this machine
    (users included). Return (problems, warnings)."""
    where = '%s: update for node "%s" (epoch %s, seq %d)' % (
        conf_file, update.node, update.epoch, update.seq)
    worker_pid = worker_doc.get("pid_file")
    if not isinstance(worker_pid, str):
        worker_pid = None
    _, problems, warnings = validate_worker_procs(update.procs, where,
                                                  worker_pid)
    return problems, warnings


class WorkerFile:
    """The worker's CONFIG as the client keeps it: read, and replaced
    atomically with a new list (its other keys kept; mode ``MODE``, or the
    file's own where it is stricter: it carries the processes' secrets). A
    failure is logged once, not at every retry, and so is the recovery."""

    MODE = 0o600

    def __init__(self, path, log):
        self.path = path
        self.log = log
        self._error = None  # the failure last logged
        self._pid_file = (object(), None)  # (file signature, its pid_file)

    def pid_file(self):
        """The worker's ``pid_file`` (absolute) or None; the file is read
        again only when it changed (a stat, not a parse, per status sent)."""
        signature = file_signature(self.path)
        if signature != self._pid_file[0]:
            value = (self.read(quiet=True) or {}).get("pid_file")
            self._pid_file = (signature, value if isinstance(value, str)
                              and os.path.isabs(value) else None)
        return self._pid_file[1]

    def read(self, quiet=False):
        """The file's JSON object, or None (logged unless ``quiet``)."""
        try:
            return read_json_file(self.path)
        except ConfigError as err:
            if not quiet:
                self._failed("cannot use the worker's file (not rewritten, "
                             "retried every %.0f s): %s" % (RETRY_INTERVAL,
                                                            err))
            return None

    def write(self, doc):
        """Replace the file with ``doc``; False (logged) when it cannot."""
        try:
            mode = existing_mode(self.path, self.MODE) & self.MODE
            atomic_write(self.path, json.dumps(doc, indent=2) + "\n",
                         mode=mode)
        except OSError as err:
            self._failed("cannot write %s (old file kept, retried every %.0f "
                         "s): %s" % (self.path, RETRY_INTERVAL,
                                     err.strerror or err))
            return False
        self.ok()
        return True

    def ok(self):
        """The file holds what it should: say so if it did not."""
        if self._error:
            self.log.info("%s can be updated again", self.path)
            self._error = None

    def _failed(self, message):
        if message != self._error:
            self._error = message
            self.log.error(message)
        else:
            self.log.debug("still: %s", message)


class Client:
    """The client's decisions, on the shared ``loop.Loop``: which update to
    apply, when to say hello and when to report."""

    def __init__(self, config, log, clock=time.monotonic, pid_lock=None):
        self.config = config
        self.pid_lock = pid_lock
        self.log = log
        self._clock = clock
        self.applied_epoch = None
        self.applied_seq = None
        self.held = None  # the Update applied last (the file holds it)
        self._held_signature = None  # the file's, when it last held it
        self._heard_epoch = None  # of the last list received
        self._master_epoch = None  # of the last beat or list heard
        self.pending = None  # an update whose write failed: retried
        self._rejected = None  # the problems last logged
        self.rejected = None  # why the list last received was refused
        self.worker_file = WorkerFile(config.conf_file, log)
        self._heartbeat = ASSUMED_HEARTBEAT
        self._last_heard = None
        self._hello_due = 0.0
        self._hello_backoff = HELLO_RETRY
        self._status_watch = None
        self._status_path = None
        self._last_status_sent = None
        self.loop = Loop(bus.ZmqPoller(), clock=clock, log=log)
        self.drops = bus.Drops(log, clock, "message", self.loop)
        self._context = None
        self.sub = self.push = self._monitor = None
        self._opener = None  # with CURVE: opens what the master sealed
        self._refused_retry = REFUSED_RETRY
        self._handshake_failing = False

    # -- life cycle --------------------------------------------------------

    def run(self):
        zmq = bus.zmq_module()
        loop = self.loop
        self._context = zmq.Context()
        try:
            loop.handle_signals({signal.SIGTERM: self._exit_signal,
                                 signal.SIGINT: self._exit_signal,
                                 signal.SIGHUP: lambda _: self.reload()})
            self._connect()
            for name in remove_dead_writers_temps(self.config.conf_file):
                self.log.info("removed %s, half written by a client that "
                              "was killed", name)
            self._watch_status(self.worker_file.pid_file())
            loop.every_turn(self._hello_turn)
            loop.call_at("status", self._clock(), self._send_status)
            loop.run()
            self.log.info("client down")
            return 0
        finally:
            self._close_sockets()
            loop.close()
            self._context.term()

    def _exit_signal(self, signum):
        self.log.info("got %s: exiting", signal.Signals(signum).name)
        self.loop.stop()

    def _connect(self):
        zmq = bus.zmq_module()
        self._close_sockets()
        self.loop.cancel("reconnect")
        curve = self.config.curve
        sub = bus.socket(self._context, zmq.SUB, receives=True)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(self.config.node_name))
        sub.setsockopt(zmq.SUBSCRIBE, protocol.BEAT_TOPIC)
        self._secure(sub)
        # A (re)connection to the master (it may have restarted with other
        # lists) is answered by a hello, not by waiting for its heartbeat.
        self._monitor = sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        sub.connect(self.config.master_updates)
        push = bus.socket(self._context, zmq.PUSH)
        # Queue nothing for a master that is not connected: a hello or a
        # status is only worth sending fresh.
        push.setsockopt(zmq.IMMEDIATE, 1)
        push.setsockopt(zmq.SNDHWM, 16)
        self._secure(push)
        push.connect(self.config.master_stats)
        self._opener = None if curve is None else keys.Opener(
            curve.pair.secret, curve.master_public)
        self.sub, self.push = sub, push
        self.loop.add_reader(sub, self._receive_updates)
        self.loop.add_reader(self._monitor, self._connected)
        self._last_heard = None
        self._hello_due = 0.0
        self._hello_backoff = HELLO_RETRY
        self.log.info('node "%s": listening to %s, reporting to %s%s',
                      self.config.node_name, self.config.master_updates,
                      self.config.master_stats,
                      "" if curve is None else " (CURVE, master key %s)"
                      % curve.master_key_file)

    def _secure(self, sock):
        curve = self.config.curve
        if curve is not None:
            keys.apply_to_socket(sock, bus.zmq_module(), curve.pair,
                                 server_key=curve.master_public)

    def _close_sockets(self):
        if self.sub is not None:
            self.loop.remove_reader(self.sub)
            self.loop.remove_reader(self._monitor)
            self.sub.disable_monitor()
            self._monitor.close(linger=0)
        for sock in (self.sub, self.push):
            if sock is not None:
                sock.close(linger=0)
        self.sub = self.push = self._monitor = None

    def _connected(self):
        from zmq.utils.monitor import recv_monitor_message
        zmq = bus.zmq_module()
        event = None
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return self._refused()
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            # ZeroMQ retries by itself; say it once until one succeeds.
            if not self._handshake_failing:
                self.log.warning(
                    "the handshake with the master at %s failed%s: retrying",
                    self.config.master_updates,
                    "" if self.config.curve is None else " (is %s the "
                    "master's public key?)" % self.config.curve.master_key_file)
            self._handshake_failing = True
            return None
        self._handshake_failing = False
        self._refused_retry = REFUSED_RETRY
        self._last_heard, self._hello_due = None, self._clock()
        self._hello_backoff = HELLO_RETRY

    def _refused(self):
        """The master refused our key: ZeroMQ gives up on that
        connection; connect again later (the key may be allowed by then)."""
        delay = self._refused_retry
        level = self.log.warning if delay == REFUSED_RETRY else self.log.debug
        level('the master at %s refused node "%s"\'s CURVE key (is %s.key in '
              "its curve_clients_dir?): trying again in %.0f s",
              self.config.master_updates, self.config.node_name,
              self.config.node_name, delay)
        self._refused_retry = min(delay * 2, REFUSED_RETRY_MAX)
        self.loop.call_later("reconnect", delay, self._connect)

    def reload(self):
        try:
            config = load_client_config(self.config.path,
                                        self.config.owners)
        except ConfigError as err:
            self.log.error("SIGHUP: invalid client file, keeping the last "
                           "good configuration:")
            for problem in err.problems:
                self.log.error("  %s", problem)
            return False
        for warning in config.warnings:
            self.log.warning(warning)
        config = carry_over(self.config, config, self.pid_lock, self.log)
        old = self.config
        self.config = config
        if config.conf_file != old.conf_file:
            self.worker_file = WorkerFile(config.conf_file, self.log)
        if config.connection() != old.connection():
            self.applied_epoch = self.applied_seq = None
            self.held = self._heard_epoch = self._master_epoch = None
            self.pending = None
            self.loop.cancel("retry")
            self._connect()
        self._watch_status(self.worker_file.pid_file())
        self.loop.call_at("status", self._clock(), self._send_status)
        self.log.info("SIGHUP: configuration re-read")
        return True

    # -- hello and silence ---------------------------------------------------

    def _silence_deadline(self, now):
        if self._last_heard is None:
            return now + 3600
        return self._last_heard + max(1.0, SILENCE_HEARTBEATS * self._heartbeat)

    def _needs_hello(self, now):
        """Nothing heard since we (re)connected, nothing for a while, or
        the master's epoch is not the one of the last list heard."""
        return self._last_heard is None or now >= self._silence_deadline(
            now) or self._master_epoch != self._heard_epoch

    def _hello_turn(self, now):
        """Before each wait: say hello when due; the next time to look."""
        if self._needs_hello(now) and now >= self._hello_due:
            self._send_hello(now)
        return self._hello_due if self._needs_hello(now) \
            else self._silence_deadline(now)

    def _send_hello(self, now):
        if self._last_heard is not None and \
                now >= self._silence_deadline(now):
            self.log.warning("heard nothing from the master for %.1f s: "
                             "saying hello again", now - self._last_heard)
            self._last_heard = None
            self._hello_backoff = HELLO_RETRY
        sent = self._push(protocol.KIND_HELLO, status=None)
        if sent:
            self.log.debug("hello sent")
            self._hello_due = now + self._hello_backoff
            self._hello_backoff = min(HELLO_BACKOFF_MAX,
                                      self._hello_backoff * 2)
        else:
            self._hello_due = now + HELLO_RETRY

    # -- status flow-back -----------------------------------------------------

    def _watch_status(self, pid_file):
        """Watch the status file beside the worker's ``pid_file``."""
        path = ledger.status_path(pid_file) if pid_file else None
        if path == self._status_path:
            return
        if self._status_watch:
            self.loop.unwatch_file(self._status_watch)
            self._status_watch = None
        self._status_path = path
        if path:
            self._status_watch = self.loop.watch_file(
                path, self._status_changed, settle=0)

    def _status_changed(self):
        """Report a change of the worker's status soon, at most every
        STATUS_MIN_GAP seconds."""
        when = max(self._clock(), (self._last_status_sent or 0)
                   + STATUS_MIN_GAP)
        due = self.loop.pending("status")
        if due is None or when < due:
            self.loop.call_at("status", when, self._send_status)

    def _send_status(self):
        now = self._clock()
        # The worker's files follow its CONFIG's pid_file: look again.
        self._watch_status(self.worker_file.pid_file())
        status = ledger.read_view(self._status_path) if self._status_path \
            else None
        if status is not None:
            # The view may be older than a death: a gone pid is not running.
            status["procs"] = live_views(status["procs"])
        if status is not None and len(json.dumps(status)) > \
                protocol.MAX_MESSAGE_BYTES // 2:
            self.log.warning("worker status larger than %d bytes: not sent",
                             protocol.MAX_MESSAGE_BYTES // 2)
            status = None
        self._push(protocol.KIND_STATUS, status)
        self._last_status_sent = now
        self.loop.call_later("status", self.config.status_interval,
                             self._send_status)

    def _relay(self, frames):
        """An operator's command from the master: ask the worker (its
        control socket beside its pid file), send the answer back."""
        try:
            command_id, request = protocol.decode_control(
                frames, self.config.node_name)
        except ProtocolError as err:
            self.drops.drop(err)
            return
        path = self._control_path()
        if path is None:
            reply = {"ok": False, "error": 'node "%s": the worker\'s file '
                     "names no pid_file" % self.config.node_name}
        else:
            try:
                reply = control.request(path, request, timeout=RELAY_TIMEOUT)
            except (OSError, ProtocolError) as err:
                reply = {"ok": False, "error": 'node "%s": cannot reach the '
                         "worker at %s: %s" % (
                             self.config.node_name, path,
                             getattr(err, "strerror", None) or err)}
        self._push(protocol.KIND_REPLY, None, reply_id=command_id,
                   reply=reply)

    def _control_path(self):
        pid_file = self.worker_file.pid_file()
        return control.control_path(pid_file) if pid_file else None

    def _push(self, kind, status, reply_id=None, reply=None):
        zmq = bus.zmq_module()
        report = protocol.Report(kind, self.config.node_name,
                                 self.applied_epoch, self.applied_seq, status,
                                 self.drops.count, self.rejected,
                                 self.config.status_interval, reply_id, reply)
        try:
            self.push.send_multipart(protocol.encode_report(report),
                                     zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # the master is not connected: nothing queued

    # -- updates ---------------------------------------------------------------

    def _receive_updates(self):
        """The waiting messages, each checked and applied in turn, for at
        most RECEIVE_BUDGET seconds (and RECEIVE_BATCH messages): behind a
        backlog of big lists (a 4000-process list: a validation, a write
        and an fsync) the loop must still turn for signals and timers."""
        bus.receive_all(self.sub, self.on_frames, RECEIVE_BATCH,
                        budget=RECEIVE_BUDGET)

    def on_frames(self, frames):
        """One message from the SUB socket: check it, apply it or drop it."""
        if protocol.is_beat(frames):
            return self._on_beat(frames)
        if self._opener is not None and len(frames) == 3:
            try:
                frames = [frames[0], frames[1], self._opener.open(frames[2])]
            except ProtocolError as err:
                self.drops.drop(err)
                return
        if len(frames) == 3 and bytes(frames[1]) == protocol.KIND_CONTROL:
            return self._relay(frames)
        try:
            update = protocol.decode_update(frames, self.config.node_name)
        except ProtocolError as err:
            self.drops.drop(err)
            return
        self._heard(update.epoch, update.heartbeat)
        self._hello_backoff = HELLO_RETRY
        if protocol.is_stale(self.applied_epoch, self.applied_seq,
                             update.epoch, update.seq):
            self.log.debug("ignored stale %r (applied seq %s)", update,
                           self.applied_seq)
            return
        self._heard_epoch = update.epoch
        self.apply(update)
        # Tell the master soon what we hold now (it sends the list again
        # until a report says so).
        self._status_changed()

    def _heard(self, epoch, heartbeat):
        if self._last_heard is None:
            self.log.info("heard the master (epoch %s)", epoch)
        self._last_heard = self._clock()
        self._master_epoch = epoch
        if heartbeat:
            self._heartbeat = heartbeat

    def _on_beat(self, frames):
        """The master's beat: it is there, and runs this epoch; a file
        changed since it held our list is checked again."""
        try:
            beat = protocol.decode_beat(frames)
        except ProtocolError as err:
            self.drops.drop(err)
            return
        if beat.epoch != self._master_epoch and self._master_epoch:
            self.log.info("the master's beat names epoch %s (we heard %s): "
                          "saying hello", beat.epoch, self._master_epoch)
        self._heard(beat.epoch, beat.heartbeat)
        if self.held is not None and self.pending is None and file_signature(
                self.config.conf_file) != self._held_signature:
            self.log.info("%s changed since it held the list of seq %d: "
                          "checking it again", self.config.conf_file,
                          self.held.seq)
            self.apply(self.held)

    def apply(self, update):
        """Make ``conf_file`` hold ``update``'s list; True when it does."""
        doc = self.worker_file.read()
        if doc is None:
            self._retry_later(update)
            return False
        self._watch_status(self.worker_file.pid_file())
        problems, warnings = check_update_procs(update, doc,
                                                self.config.conf_file)
        if problems:
            # The heartbeat repeats a bad list: log its problems once.
            self.rejected = problems[0]
            if self._rejected != problems:
                self.drops.count += 1
                self._rejected = problems
                self.log.error("dropped an invalid process list:")
                for problem in problems:
                    self.log.error("  %s", problem)
            if self.pending is update:
                self._clear_pending()
            return False
        if doc.get("procs") == update.procs:
            self.worker_file.ok()
            if self.pending is not None:
                self.log.info("%s now holds the list of seq %d",
                              self.config.conf_file, update.seq)
            self._applied(update)
            return True
        for warning in warnings:
            self.log.warning(warning)
        if not self.worker_file.write(dict(doc, procs=update.procs)):
            self._retry_later(update)
            return False
        self.log.info("wrote %s: %d processes (epoch %s, seq %d)",
                      self.config.conf_file, len(update.procs), update.epoch,
                      update.seq)
        self._applied(update)
        return True

    def _retry_later(self, update):
        self.pending = update
        self.loop.call_later("retry", RETRY_INTERVAL, self._retry)

    def _retry(self):
        if self.pending is not None:
            self.apply(self.pending)

    def _clear_pending(self):
        self.pending = None
        self.loop.cancel("retry")

    def _applied(self, update):
        self.rejected = None
        changed = (update.epoch, update.seq) != (self.applied_epoch,
                                                 self.applied_seq)
        self.applied_epoch, self.applied_seq = update.epoch, update.seq
        self.held = update
        self._held_signature = file_signature(self.config.conf_file)
        self._clear_pending()
        if changed:
            # Tell the master at once what we hold now.
            self.loop.call_at("status", self._clock(), self._send_status)
