"""The ZeroMQ side shared by dpd-masterd and dpd-clientd: the poller that
lets ``loop.Loop`` wait on sockets and descriptors together, and the socket
set-up both daemons (and dpdctl's link to the master) use. Only the master,
the client and dpdctl import this module (the worker carries no messaging
library); it imports pyzmq lazily, after daemonizing.
"""

import collections
import time

from diprocd import protocol

# Log at most this many dropped messages per window, then one summary line:
# a stranger flooding a socket must not fill the disk with our log.
LOG_BURST = 10
LOG_WINDOW = 10.0


def zmq_module():
    import zmq  # only after daemonizing
    return zmq


class ZmqPoller:
    """``loop.Loop``'s poller over zmq.Poller: sockets and descriptors."""

    def __init__(self):
        self.zmq = zmq_module()
        self._poller = self.zmq.Poller()

    def register(self, obj, writable=False):
        self._poller.register(obj, self.zmq.POLLOUT if writable
                              else self.zmq.POLLIN)

    def unregister(self, obj):
        self._poller.unregister(obj)

    def poll(self, timeout):
        # zmq counts milliseconds; round up so a due timer is never missed
        # by a wake-up a fraction of a millisecond early.
        timeout_ms = None if timeout is None else int(timeout * 1000) + 1
        return [obj for obj, _ in self._poller.poll(timeout_ms)]

    def close(self):
        pass


def socket(context, kind, receives=False):
    """A socket that never lingers and speaks IPv6 as well as IPv4; one that
    receives from peers refuses a message larger than the protocol allows."""
    zmq = zmq_module()
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # ZeroMQ is IPv4-only per socket unless told: a bind to tcp://[::1]:N
    # fails with "No such device", and a host name resolves to its IPv4
    # addresses only. With it, "*" binds both families (v4-mapped) and a
    # name resolves to its IPv6 address first when it has one (README,
    # "IPv6": the same name or address on both sides).
    sock.setsockopt(zmq.IPV6, 1)
    if receives:
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * protocol.MAX_MESSAGE_BYTES)
    return sock


def receive_all(sock, handle, limit, copy=True, budget=None):
    """Hand each waiting message (its frames) to ``handle``, at most
    ``limit`` of them (and for at most ``budget`` seconds), so that timers
    and signals get their turn. ``copy=False``: zmq.Frame objects, which
    carry the sender's CURVE identity (``frame.get("User-Id")``)."""
    zmq = zmq_module()
    end = None if budget is None else time.monotonic() + budget
    for _ in range(limit):
        if end is not None and time.monotonic() > end:
            return
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return
        handle(frames)


def sender_id(frame):
    """The CURVE identity (ZAP User-Id) a received frame came with, or
    None."""
    zmq = zmq_module()
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None


class Drops:
    """Messages dropped (malformed, foreign, invalid): counted, and logged
    without letting a flood fill the log: at most LOG_BURST lines per
    LOG_WINDOW seconds, then, at the end of the window (``loop`` given) or
    at the next drop, one line saying how many more were dropped."""

    def __init__(self, log, clock, what, loop=None, verb="dropped"):
        self.log = log
        self.verb = verb
        self.clock = clock
        self.what = what
        self.loop = loop
        self.count = 0
        self._logged = collections.deque()
        self._unlogged = 0
        self._key = ("drops", what)

    def drop(self, why):
        self.count += 1
        now = self.clock()
        while self._logged and self._logged[0] <= now - LOG_WINDOW:
            self._logged.popleft()
        if len(self._logged) >= LOG_BURST:
            self._unlogged += 1
            if self.loop is not None and self.loop.pending(self._key) is None:
                self.loop.call_at(self._key, self._logged[0] + LOG_WINDOW,
                                  self.summary)
            return
        self.summary()
        self._logged.append(now)
        self.log.warning("%s a %s: %s", self.verb, self.what, why)

    def summary(self):
        """Say how many were dropped without a line of their own."""
        if self._unlogged:
            self.log.warning("%s %d more %ss without a line each (%d "
                             "in all)", self.verb, self._unlogged, self.what,
                             self.count)
            self._unlogged = 0
