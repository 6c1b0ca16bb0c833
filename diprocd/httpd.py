"""A tiny read-only HTTP/1.0 server on a daemon's ``loop.Loop``: no thread,
no blocking call.

The listening socket and each connection are non-blocking descriptors
registered with the loop. A connection is read until the end of its
request head, answered, and closed. Nothing a client does can hold the
loop:

- a request head larger than MAX_REQUEST_BYTES gets 431 and is closed;
- a connection not done within CONNECTION_TIMEOUT seconds (a slow or
  silent client, or one that does not read its answer) is closed;
- with MAX_CONNECTIONS open, the listener is not accepting: new ones wait
  in the kernel's backlog (BACKLOG) until one ends;
- an answer the socket buffer does not take at once is written on later
  turns of the loop, a little at a time (WRITE_RETRY), never waited for.

Only GET (and HEAD) of the paths in ``routes`` ({path: callable returning
(content type, body bytes)}) are answered; anything else gets its error.
"""

import errno
import socket

MAX_REQUEST_BYTES = 8192
CONNECTION_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
WRITE_RETRY = 0.01
ACCEPT_RETRY = 1.0
BACKLOG = 16

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error"}


def listen(host, port):
    """A non-blocking listening TCP socket on ``host``:``port`` (IPv4 or
    IPv6, by what ``host`` resolves to); raises OSError."""
    info = socket.getaddrinfo(host, port, socket.AF_UNSPEC,
                              socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def response(code, content_type=None, body=b"", head=False):
    lines = ["HTTP/1.0 %d %s" % (code, REASONS[code]),
             "Content-Length: %d" % len(body), "Connection: close",
             "Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
    if content_type:
        lines.append("Content-Type: " + content_type)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (
        b"" if head else body)


def answer(head_bytes, routes):
    """The response bytes for a request head."""
    try:
        request_line = head_bytes.split(b"\n", 1)[0].decode("ascii").strip()
        method, target, version = request_line.split(" ")
    except (UnicodeDecodeError, ValueError):
        return response(400, "text/plain", b"bad request\n")
    if not version.startswith("HTTP/"):
        return response(400, "text/plain", b"bad request\n")
    if method not in ("GET", "HEAD"):
        return response(405, "text/plain", b"read-only: GET only\n")
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        return response(404, "text/plain", b"not found\n")
    content_type, body = route()
    return response(200, content_type, body, head=method == "HEAD")


class Connection:
    __slots__ = ("sock", "received", "outgoing", "deadline")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.received = b""
        self.outgoing = None  # the answer's bytes not yet sent
        self.deadline = deadline


class Server:
    """Serve ``routes`` on ``sock`` (from ``listen``) from ``loop``."""

    def __init__(self, sock, loop, routes, log):
        self.sock = sock
        self.loop = loop
        self.routes = routes
        self.log = log
        self.connections = {}  # fd -> Connection
        self.accepting = False
        self._accept_again()

    def _accept_again(self):
        if not self.accepting and len(self.connections) < MAX_CONNECTIONS:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self.accepting = True

    def close(self):
        for fd in list(self.connections):
            self._drop(fd)
        self.loop.remove_reader(self.sock.fileno())
        self.loop.cancel("http accept")
        self.accepting = False
        self.sock.close()

    def _accept(self):
        while len(self.connections) < MAX_CONNECTIONS:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # EMFILE and the like: the listener stays readable, so
                # rest rather than spin, and try again in a while.
                self.log.warning("http: cannot accept: %s", err)
                self.loop.call_later("http accept", ACCEPT_RETRY,
                                     self._accept_again)
                break
            conn.setblocking(False)
            fd = conn.fileno()
            self.connections[fd] = Connection(
                conn, self.loop.clock() + CONNECTION_TIMEOUT)
            self.loop.add_reader(fd, lambda fd=fd: self._read(fd))
            self.loop.call_at(("http", fd), self.connections[fd].deadline,
                              lambda fd=fd: self._drop(fd))
        # Full (or resting): the rest wait in the backlog.
        self.loop.remove_reader(self.sock.fileno())
        self.accepting = False

    def _read(self, fd):
        connection = self.connections.get(fd)
        if connection is None:
            return
        try:
            data = connection.sock.recv(MAX_REQUEST_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(fd)
        if connection.outgoing is not None:
            if not data:
                self._drop(fd)
            return  # what a client sends after its request is ignored
        if not data:
            return self._drop(fd)
        connection.received += data
        head = connection.received
        end = head.find(b"\r\n\r\n")
        if end < 0:
            end = head.find(b"\n\n")
        if end < 0 and len(head) <= MAX_REQUEST_BYTES:
            return
        if end < 0 or end > MAX_REQUEST_BYTES:
            reply = response(431, "text/plain", b"request too large\n")
        else:
            try:
                reply = answer(head[:end], self.routes)
            except Exception:
                self.log.exception("http: internal error answering a request")
                reply = response(500, "text/plain", b"internal error\n")
        connection.received = b""
        connection.outgoing = reply
        self._write(fd)

    def _write(self, fd):
        connection = self.connections.get(fd)
        if connection is None:
            return
        try:
            sent = connection.sock.send(connection.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return self._drop(fd)
        connection.outgoing = connection.outgoing[sent:]
        if not connection.outgoing:
            return self._drop(fd)
        # Not all taken: the rest on a later turn, until the deadline.
        self.loop.call_later(("http write", fd), WRITE_RETRY,
                             lambda: self._write(fd))

    def _drop(self, fd):
        connection = self.connections.pop(fd, None)
        if connection is None:
            return
        self.loop.remove_reader(fd)
        self.loop.cancel(("http", fd))
        self.loop.cancel(("http write", fd))
        connection.sock.close()
        if self.sock.fileno() >= 0 and self.loop.pending("http accept") is None:
            self._accept_again()
