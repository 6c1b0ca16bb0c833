"""The master's ZAP handler: which CURVE keys may connect.

ZeroMQ asks a ZAP handler (RFC 27, ``inproc://zeromq.zap.01`` in the
socket's context) at every CURVE handshake. This one is pyzmq's
``zmq.auth.Authenticator`` driven by the master's own loop — no thread —
with a callback that looks the client's key up in the master's current
configuration: domain ``nodes`` (the updates and stats sockets) in
``curve_clients_dir``, domain ``operators`` (dpdctl over tcp) in
``curve_operators_dir``. The configuration is read at each handshake, so a
key file added or removed takes effect at the next reload (SIGHUP, dpdctl
reload) for every new connection; the master also checks each report's key
against the current keys (``User-Id``), which cuts off a removed node that
is still connected.

A refused key is logged like a dropped message: at most a few lines per
window, then a count (ZeroMQ does not retry a refused handshake, but a
client reconnects: ours after 1 s doubling to 30 s, another every time).
"""

import inspect

from diprocd import bus

NODES = "nodes"
OPERATORS = "operators"


def _run_to_end(result):
    """pyzmq >= 25 makes handle_zap_message a coroutine; our callback never
    waits, so one step runs it to its end."""
    if not inspect.iscoroutine(result):
        return
    try:
        result.send(None)
    except StopIteration:
        return
    result.close()
    raise RuntimeError("the ZAP handler waited on something")


class Gate:
    """ZAP for one master: ``start(context, loop)``, ``close()``."""

    def __init__(self, curve_of, log, clock):
        self.curve_of = curve_of  # () -> the MasterCurve in force
        self.log = log
        self.refused = bus.Drops(log, clock, "connection", verb="refused")
        self.auth = None

    def start(self, context, loop):
        from zmq.auth import Authenticator  # only with CURVE
        self.refused.loop = loop
        self.auth = Authenticator(context, log=self.log.getChild("zap"))
        self.auth.start()
        for domain in (NODES, OPERATORS):
            self.auth.configure_curve_callback(domain, self)
        loop.add_reader(self.auth.zap_socket, self._on_request)

    def _on_request(self):
        bus.receive_all(self.auth.zap_socket,
                        lambda frames: _run_to_end(
                            self.auth.handle_zap_message(frames)), 100)

    def callback(self, domain, key):
        """zmq.auth's credentials provider: may ``key`` (Z85) connect?"""
        curve = self.curve_of()
        ring = None
        if curve is not None:
            ring = curve.clients if domain == NODES else (
                curve.operators if domain == OPERATORS else None)
        if ring is not None and key in ring:
            return True
        self.refused.drop("%s key %s is not in %s" % (
            "a node" if domain == NODES else "an operator",
            key.decode("ascii", "replace"),
            ring.folder if ring is not None else "any allowed folder"))
        return False

    def close(self, loop):
        if self.auth is not None:
            loop.remove_reader(self.auth.zap_socket)
            self.auth.stop()
            self.auth = None
