"""Health checks of the supervised processes, never blocking the loop.

``HealthChecks.follow(proc)`` is called at each state change of a Process:
while a process with a ``check`` runs (a known pid), its check runs at
once, then ``interval`` seconds after the start of the one before (never
two at once); otherwise its checking ends, a probe under way with it.
Each check is a *probe* driven by the worker's loop:

- ``tcp``: a non-blocking connect, watched for writability; healthy when
  it succeeds;
- ``http``: the same connect, then ``GET PATH HTTP/1.0`` sent and the
  answer read without blocking, at most ``RESPONSE_LIMIT`` bytes; healthy
  on a ``2xx`` status line;
- ``exec``: ``spawn.start_check`` starts the argv with the process's user,
  chroot, working directory, umask and environment, its stdout and stderr
  on a non-blocking pipe (the first ``OUTPUT_LIMIT`` bytes kept, the rest
  read and dropped), its end reported by ``pidwatch`` (kind "check");
  healthy on exit status 0.

Every probe ends by ``timeout``: the one timer of this module (a heap of
when checks are due and when probes expire) fails it then; an exec check's
process group is killed (SIGKILL) and reaped when the kernel reports it.

``Health`` is one pid's record: passed once (readiness: ``Process.ready``),
failures in a row (counted only ``grace`` seconds after the record began:
the start, or the adoption), the last result and its output. On the
``failures``-th failure in a row the checking of that pid ends and
``Process.check_failed`` ends the process, whose exit then takes the path
of any death (the restart policy, the 5-starts-a-minute rule). The worker
is told (``on_change``) when what the status shows changes: the first
pass, a failure, an output or a result that differs, not every pass.

Addresses are numeric (or ``localhost``): a name to resolve could block
the loop on DNS, so ``config.health_check`` refuses names.
"""

import errno
import heapq
import itertools
import os
import re
import select
import signal
import socket

from diprocd import kernel, spawn
from diprocd.errors import SpawnError
from diprocd.process import RUNNING

# What the status keeps of a check's output, and what an HTTP probe reads.
OUTPUT_LIMIT = 512
RESPONSE_LIMIT = 4096
_TIMER = "health checks"
_STATUS_LINE = re.compile(rb"^HTTP/[0-9]\.[0-9] ([0-9]{3})(?: |$)")


class Health:
    """The checking of one pid of one process (see the module docstring)."""

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        proc = self.__dict__.get("proc")
        if proc is not None:
            proc.touch()  # the status file shows this

    def __init__(self, proc, began, clock):
        self.proc = proc
        self.pid = proc.pid
        self.check = proc.spec.check
        self.began = began          # monotonic: grace counts from here
        self.active = True          # False: stopped, or failed for good
        self.failed = False         # ended for failing: shown until a start
        self.passed = False         # once: the process is ready
        self.failures = 0           # in a row, past the grace
        self.ok = None              # the last result: True, False, None
        self.output = ""
        self.since = clock.time()   # wall clock of the last change shown
        self.probe = None
        self.started = None         # monotonic start of the current probe
        self.expires = None
        self.due = None

    @property
    def word(self):
        """healthy, failing, unhealthy (being restarted) or unknown."""
        if self.ok is None:
            return "unknown"
        if self.failed:
            return "unhealthy"
        return "healthy" if self.ok else "failing"

    def view(self):
        """What the status file shows."""
        return {"health": self.word, "failures": self.failures,
                "output": self.output, "since": self.since}


class HealthChecks:
    """The worker's checks (module docstring). ``on_change()``: the status
    changed; ``spec.check`` of a Process gives what to check."""

    def __init__(self, loop, pidwatch, clock, log, on_change):
        self.loop = loop
        self.pidwatch = pidwatch
        self.clock = clock
        self.log = log
        self.on_change = on_change
        self.program_nofile = None  # the open-files limit exec checks get
        self.records = {}           # Process -> its current Health
        self._heap = []             # (when, seq, "due" or "expire", Health)
        self._seq = itertools.count()
        self._timer_at = None

    # --- following the processes ------------------------------------------
    def follow(self, proc):
        """Start, keep or end the checking of ``proc`` by its state."""
        record = self.records.get(proc)
        wanted = (proc.spec.check is not None and proc.state == RUNNING
                  and proc.pid is not None)
        if record is not None:
            if wanted and record.pid == proc.pid \
                    and record.check == proc.spec.check:
                return
            self._end(record)
            del self.records[proc]
            if not record.failed:  # else the status shows why it ended
                proc.health = None
        if wanted and not proc.unhealthy:
            now = self.clock.monotonic()
            record = self.records[proc] = proc.health = Health(
                proc, now, self.clock)
            self._push(now, "due", record)

    def close(self):
        """The worker exits: end every probe (an exec check is killed)."""
        for record in self.records.values():
            self._end(record)
        self.records.clear()
        self.loop.cancel(_TIMER)

    def _end(self, record):
        record.active = False
        if record.probe is not None:
            record.probe.cancel()
            record.probe = None

    # --- the timer ----------------------------------------------------------
    def _push(self, when, what, record):
        if what == "due":
            record.due = when
        heapq.heappush(self._heap, (when, next(self._seq), what, record))
        if self._timer_at is None or when < self._timer_at:
            self._timer_at = when
            self.loop.call_at(_TIMER, when, self._run)

    def _run(self):
        self._timer_at = None
        try:
            self._due(self.clock.monotonic())
        finally:  # whatever failed, the checks of the others go on
            self._rearm()

    def _due(self, now):
        while self._heap and self._heap[0][0] <= now:
            when, _, what, record = heapq.heappop(self._heap)
            if not record.active:
                continue
            if what == "due" and record.due == when and record.probe is None:
                self._begin(record, now)
            elif what == "expire" and record.probe is not None \
                    and record.expires == when:
                record.probe.expire()

    def _rearm(self):
        # Entries of ended records are dropped as they come up: find the
        # next live one for the timer.
        while self._heap and not self._heap[0][3].active:
            heapq.heappop(self._heap)
        if self._heap:
            self._timer_at = self._heap[0][0]
            self.loop.call_at(_TIMER, self._timer_at, self._run)

    # --- one check ----------------------------------------------------------
    def _begin(self, record, now):
        check = record.check
        record.started = now
        record.expires = now + check.timeout
        probe = PROBES[check.kind](self, record)
        record.probe = probe
        self._push(record.expires, "expire", record)
        try:
            probe.start()
        except OSError as err:  # no descriptor left (EMFILE)...: a failure
            probe.finish(False, "cannot run the check: %s"
                         % (err.strerror or err))

    def result(self, record, ok, output):
        """A probe of ``record`` ended (called once per probe)."""
        record.probe = None
        if not record.active:
            return
        output = output.strip()
        if len(output) > OUTPUT_LIMIT:
            output = output[:OUTPUT_LIMIT - 3] + "..."
        now = self.clock.monotonic()
        check, proc = record.check, record.proc
        shown = (record.ok, record.output, record.failures, record.passed)
        if ok:
            if not record.passed:
                self.log.info("%s: ready: health check passed (%s)",
                              proc.spec.name, output)
            elif record.ok is False:
                self.log.info("%s: health check passes again (%s)",
                              proc.spec.name, output)
            record.passed = True
            record.failures = 0
        elif now - record.began >= check.grace:
            record.failures += 1
            self.log.warning("%s: health check failed (%d of %d): %s",
                             proc.spec.name, record.failures, check.failures,
                             output)
        record.ok, record.output = ok, output
        if (ok, output, record.failures, record.passed) != shown:
            record.since = self.clock.time()
            self.on_change()
        if record.failures >= check.failures:
            record.active = False
            record.failed = True
            proc.check_failed("%d health checks in a row failed (last: %s)"
                              % (record.failures, output))
            self.on_change()
            return
        self._push(max(record.started + check.interval, now), "due", record)


# --- the probes -----------------------------------------------------------------

class Probe:
    """One run of a check: ``start()``, then exactly one ``result`` to the
    checks, by itself, by ``expire()`` (the timeout) or never after
    ``cancel()``. A kind defines ``start``, ``expire`` and ``close``."""

    def __init__(self, checks, record):
        self.checks = checks
        self.loop = checks.loop
        self.record = record
        self.check = record.check
        self.finished = False

    def finish(self, ok, output):
        if self.finished:
            return
        self.finished = True
        self.close()
        self.checks.result(self.record, ok, output)

    def cancel(self):
        self.finished = True
        self.close()

    def close(self):
        pass


def socket_address(host, port):
    """(family, address) of a checked numeric host (or localhost)."""
    if host == "localhost":
        return socket.AF_INET, ("127.0.0.1", port)
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], port, 0, 0)
    return socket.AF_INET, (host, port)


class TcpProbe(Probe):
    """Healthy when a connect to HOST:PORT succeeds."""

    def __init__(self, checks, record):
        super().__init__(checks, record)
        self.sock = None
        self.waiting = False  # registered with the loop
        self.target = self.check.target

    def address(self):
        host, port = self.target.rsplit(":", 1)
        return socket_address(host, int(port))

    def start(self):
        try:
            family, address = self.address()
            self.sock = socket.socket(family, socket.SOCK_STREAM
                                      | socket.SOCK_NONBLOCK
                                      | socket.SOCK_CLOEXEC)
            err = self.sock.connect_ex(address)
        except (OSError, ValueError) as err:  # a bad address, no fds left
            self.finish(False, "cannot connect to %s: %s"
                        % (self.target, getattr(err, "strerror", None) or err))
            return
        if err == 0:
            self.connected()
        elif err == errno.EINPROGRESS:
            self.wait(writable=True, callback=self._connect_done)
        else:
            self.finish(False, "connect to %s: %s" % (self.target,
                                                      os.strerror(err)))

    def wait(self, writable, callback):
        fd = self.sock.fileno()
        if self.waiting:
            self.loop.remove_reader(fd)
        (self.loop.add_writer if writable else self.loop.add_reader)(
            fd, callback)
        self.waiting = True

    def _connect_done(self):
        if not _ready(self.sock.fileno(), select.POLLOUT):
            return  # a stale event for an earlier user of this fd number
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(False, "connect to %s: %s" % (self.target,
                                                      os.strerror(err)))
        else:
            self.connected()

    def connected(self):
        self.finish(True, "connected to %s" % self.target)

    def expire(self):
        self.finish(False, "connect to %s: no answer within %gs"
                    % (self.target, self.check.timeout))

    def close(self):
        if self.sock is not None:
            if self.waiting:
                self.loop.remove_reader(self.sock.fileno())
                self.waiting = False
            self.sock.close()


class HttpProbe(TcpProbe):
    """Healthy on a 2xx answer to a GET of the URL."""

    def __init__(self, checks, record):
        super().__init__(checks, record)
        rest = self.check.target[len("http://"):]
        authority, slash, path = rest.partition("/")
        self.authority = authority
        self.target = authority if ":" in authority.rsplit("]", 1)[-1] \
            else authority + ":80"
        self.request = (b"GET /%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: "
                        b"dpd-workerd\r\nConnection: close\r\n\r\n"
                        % (path.encode("ascii"), authority.encode("ascii")))
        self.answer = b""

    def connected(self):
        try:
            sent = self.sock.send(self.request)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self.finish(False, "sending to %s: %s" % (self.target,
                                                      err.strerror or err))
            return
        self.request = self.request[sent:]
        if self.request:
            self.wait(writable=True, callback=self._connect_done)
        else:
            self.wait(writable=False, callback=self._readable)

    def _readable(self):
        try:
            chunk = self.sock.recv(RESPONSE_LIMIT - len(self.answer))
        except BlockingIOError:
            return
        except OSError as err:
            self._decide("reading from %s: %s" % (self.target,
                                                  err.strerror or err))
            return
        self.answer += chunk
        if not chunk or len(self.answer) >= RESPONSE_LIMIT:
            self._decide("connection closed by %s" % self.target)

    def expire(self):
        self._decide("no answer within %gs" % self.check.timeout)

    def _decide(self, why_not):
        """The answer so far: its status line (and the start of its body)
        decides; without one, ``why_not`` is the output."""
        line, _, rest = self.answer.partition(b"\r\n")
        match = _STATUS_LINE.match(line) if _ else None
        if match is None:
            self.finish(False, why_not)
            return
        body = rest.partition(b"\r\n\r\n")[2]
        output = line + (b"\n" + body if body.strip() else b"")
        self.finish(200 <= int(match.group(1)) < 300,
                    output.decode("utf-8", "replace"))


class ExecProbe(Probe):
    """Healthy when the argv exits with status 0."""

    def __init__(self, checks, record):
        super().__init__(checks, record)
        self.pid = None
        self.fd = None
        self.output = b""
        self.reaped = False

    def start(self):
        try:
            self.pid, self.fd = spawn.start_check(self.record.proc.spec,
                                                  self.checks.program_nofile)
        except (SpawnError, OSError) as err:
            self.finish(False, "cannot start the check: %s" % err)
            return
        self.loop.add_reader(self.fd, self._readable)
        self.checks.pidwatch.watch(self, self.pid, "check")

    def _readable(self):
        self._read()

    def _read(self):
        """Read what the pipe holds now (keep OUTPUT_LIMIT bytes); True at
        its end."""
        for _ in range(16):  # bounded: a writer as fast as us waits
            if self.fd is None:
                return True
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                self.loop.remove_reader(self.fd)
                os.close(self.fd)
                self.fd = None
                return True
            room = OUTPUT_LIMIT - len(self.output)
            if room > 0:
                self.output += chunk[:room]
        return False

    def exited(self, how):
        """pidwatch: the check's process ended (and is reaped)."""
        self.reaped = True
        self._read()  # what it wrote last; a descendant may hold the pipe
        text = self.output.decode("utf-8", "replace").strip()
        if how == "exit status 0":
            self.finish(True, text or how)
        else:
            self.finish(False, "%s: %s" % (how, text) if text else how)

    def expire(self):
        self._read()
        text = self.output.decode("utf-8", "replace").strip()
        self.finish(False, "killed after %gs%s" % (
            self.check.timeout, ": " + text if text else ""))

    def close(self):
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.pid is not None and not self.reaped:
            # Its whole group; pidwatch still watches it, so it is reaped.
            kernel.signal_process(self.pid, signal.SIGKILL)


PROBES = {"tcp": TcpProbe, "http": HttpProbe, "exec": ExecProbe}


def _ready(fd, event):
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(0))
