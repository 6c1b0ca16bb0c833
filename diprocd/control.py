"""The worker's local control socket: how ``dpdctl --worker`` (and the
client, relaying the master's commands) asks a worker for its state or
tells it to restart, stop or start a process. Stdlib only: the worker
imports no messaging library.

A Unix stream socket beside the worker's pid file
(``/run/dpd-workerd.pid`` -> ``/run/dpd-workerd.control``), mode 0600; a
peer is served only when its uid (SO_PEERCRED) is root, the worker's own, or
the owner of the worker's CONFIG (``serve_config_owner``), to whom a root
worker gives the socket file (still 0600) so that it can connect. That
owner is the user the client runs as (in the Debian package, ``diprocd``),
which relays the master's commands here. It grants nothing new: whoever can
write the worker's CONFIG can already run any command as any user on the
node through it, and stop, restart or start any process by editing it.
One request per connection, one JSON object on one line (at most
``MAX_REQUEST`` bytes), then one JSON reply line::

    {"v": 1, "cmd": "status"}
    {"v": 1, "cmd": "restart" | "stop" | "start", "names": [NAME, ...]}
    {"v": 1, "cmd": "reload"}
    {"v": 1, "cmd": "tail", "names": [NAME], "lines": N}

    {"ok": true, ...} or {"ok": false, "error": "one line"}

The server does not hold the worker's loop: connections are non-blocking,
read as their bytes come, dropped after ``CLIENT_TIMEOUT`` seconds, at most
``MAX_CLIENTS`` at once; a reply the peer does not take within
``SEND_TIMEOUT`` is cut off (the peer is one of the trusted users above).
"""

import errno
import os
import select
import socket
import stat
import struct
import time

import simplejson as json

from diprocd import jsonin
from diprocd.daemon import beside_pid_file
from diprocd.errors import ProtocolError

VERSION = 1
MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 16
SEND_TIMEOUT = 0.2
COMMANDS = ("status", "restart", "stop", "start", "reload", "tail")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def control_path(worker_pid_file):
    """``/run/dpd-workerd.pid`` -> ``/run/dpd-workerd.control``."""
    return beside_pid_file(worker_pid_file, ".control")


def decode_request(data):
    """A request line -> dict, or raise ProtocolError."""
    obj = jsonin.loads(data, "request", ProtocolError, MAX_REQUEST)
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise ProtocolError("request: not a version %d object" % VERSION)
    if obj.get("cmd") not in COMMANDS:
        raise ProtocolError("request: unknown command %s"
                            % json.dumps(obj.get("cmd"))[:60])
    names = obj.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str)
                                              for n in names):
        raise ProtocolError('request: "names" must be a list of strings')
    lines = obj.get("lines", 20)
    if isinstance(lines, bool) or not isinstance(lines, int) \
            or not 1 <= lines <= 10000:
        raise ProtocolError('request: "lines" must be 1 to 10000')
    return obj


def peer_uid(sock):
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


class ControlServer:
    """Serves requests on the loop; ``handler(request) -> reply dict``."""

    def __init__(self, loop, path, handler, log):
        self.loop = loop
        self.path = path
        self.handler = handler
        self.log = log
        self.sock = None
        self.config_owner = None  # a uid served besides root and our own
        self._clients = {}  # fd -> (socket, bytearray)

    def open(self):
        """Bind (replacing a stale socket file) and listen; OSError if the
        folder does not allow it."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM
                             | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # 0600 from the start, no window
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        sock.listen(16)
        self.sock = sock
        if self.config_owner is not None:
            self._give_socket_file()
        self.loop.add_reader(sock.fileno(), self._accept)

    def serve_config_owner(self, uid):
        """Serve ``uid``, the owner of the worker's CONFIG, too (see the
        module's docstring), instead of the owner given last; as root, make
        the socket file its (mode 0600 kept), or root's again."""
        owner = None if uid in (0, os.geteuid()) else uid
        if owner != self.config_owner:
            self.config_owner = owner
            if self.sock is not None:
                self._give_socket_file()

    def _give_socket_file(self):
        """The socket file to the CONFIG owner (else root), as root; one
        that cannot be given is logged: the file's rights refuse that user."""
        if os.geteuid() != 0:
            return
        owner = self.config_owner or 0
        try:
            # Never through a link planted in place of the socket file.
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(errno.EEXIST, "no longer our socket")
            os.chown(self.path, owner, -1, follow_symlinks=False)
        except OSError as err:
            self.log.warning("control socket %s: cannot give it to uid %d: "
                             "%s", self.path, owner, err.strerror or err)

    def close(self):
        for fd in list(self._clients):
            self._drop(fd)
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _accept(self):
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    self.log.warning("control socket: %s", err)
                return
            conn.setblocking(False)
            uid = peer_uid(conn)
            if uid not in (0, os.geteuid(), self.config_owner):
                self.log.warning("control socket: refused uid %d", uid)
                conn.close()
                continue
            if len(self._clients) >= MAX_CLIENTS:
                self.log.warning("control socket: %d connections already: "
                                 "one refused", MAX_CLIENTS)
                conn.close()
                continue
            fd = conn.fileno()
            self._clients[fd] = (conn, bytearray())
            self.loop.add_reader(fd, lambda fd=fd: self._read(fd))
            self.loop.call_later(("control", fd), CLIENT_TIMEOUT,
                                 lambda fd=fd: self._drop(fd))

    def _read(self, fd):
        conn, buffer = self._clients[fd]
        try:
            chunk = conn.recv(MAX_REQUEST + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        buffer += chunk
        if b"\n" not in buffer and chunk and len(buffer) <= MAX_REQUEST:
            return
        line = bytes(buffer).split(b"\n", 1)[0]
        try:
            reply = self.handler(decode_request(line))
        except ProtocolError as err:
            reply = {"ok": False, "error": str(err)}
        except Exception as err:  # a bug: answer, keep the loop going
            self.log.exception("control socket: request failed")
            reply = {"ok": False, "error": "internal error: %s" % err}
        try:
            _send_within(conn, json.dumps(reply).encode("utf-8") + b"\n",
                         SEND_TIMEOUT)
        except OSError:
            pass  # the peer went away or took too long: its loss
        finally:
            self._drop(fd)

    def _drop(self, fd):
        entry = self._clients.pop(fd, None)
        if entry is None:
            return
        self.loop.remove_reader(fd)
        self.loop.cancel(("control", fd))
        entry[0].close()


def _send_within(conn, data, seconds):
    """Send ``data`` on a non-blocking socket, giving up (OSError) after
    ``seconds``: a peer that does not read cannot hold the loop."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLOUT)
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    while view:
        try:
            view = view[conn.send(view):]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise OSError(errno.ETIMEDOUT, "the peer does not read")


def request(path, obj, timeout=10.0):
    """Send one request to the worker at ``path``; its reply dict. Raise
    OSError when the worker cannot be reached, ProtocolError for a reply
    that is not one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(dict(obj, v=VERSION)).encode("utf-8") + b"\n")
        data = bytearray()
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 64 * 1024 * 1024:
                raise ProtocolError("reply: too large")
    reply = jsonin.loads(bytes(data).split(b"\n", 1)[0], "reply",
                         ProtocolError, 64 * 1024 * 1024)
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("reply: not a diprocd worker's")
    return reply
