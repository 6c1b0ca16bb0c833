"""The kernel's exec events (the process connector, netlink), for timing
restarts without polling /proc.

A poll every millisecond costs the measurement half a millisecond on
average and takes CPU from the very processes being timed (on 2 cores the
supervisor, its new program and the poller compete). The kernel's process
connector instead sends one message per ``execve`` with the pid and the
kernel's own CLOCK_MONOTONIC time of it, the clock of
``time.perf_counter()``: the benchmark sleeps in ``recv`` and the time of
each exec is exact. Listening takes CAP_NET_ADMIN (root): ``ExecEvents.open()``
returns None elsewhere, and the benchmarks poll instead (their output says
which).

Message layout (linux/netlink.h, linux/connector.h, linux/cn_proc.h): a
``nlmsghdr`` (16 bytes), a ``cn_msg`` (20), then a ``proc_event``: what
(u32), cpu (u32), timestamp_ns (u64), then for PROC_EVENT_EXEC the pid and
tgid (two s32).
"""

import errno
import os
import select
import socket
import struct

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_EXEC = 0x00000002
NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")
_EXEC_DATA = struct.Struct("=ii")
RECEIVE_BUFFER = 8 << 20
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module lacks it


class ExecEvents:
    """A subscription to every exec on the machine; ``read(timeout)`` returns
    [(tgid, seconds)] of the execs received (CLOCK_MONOTONIC seconds)."""

    def __init__(self, sock):
        self.sock = sock
        self.lost = 0  # times the kernel dropped events (receive buffer full)

    @classmethod
    def open(cls):
        """A listening ExecEvents, or None where this process may not listen
        (not root, no connector)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                 NETLINK_CONNECTOR)
        except OSError:
            return None
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE,
                                RECEIVE_BUFFER)
            except OSError:
                pass
            sock.bind((0, CN_IDX_PROC))
            _send_op(sock, PROC_CN_MCAST_LISTEN)
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return cls(sock)

    def read(self, timeout):
        """The exec events that arrive within ``timeout`` seconds (those
        already queued at once): [(tgid, monotonic seconds)]."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            return []
        found = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            found.extend(parse(data))

    def drain(self):
        """Forget what is queued."""
        self.read(0)

    def close(self):
        try:
            _send_op(self.sock, PROC_CN_MCAST_IGNORE)
        except OSError:
            pass
        self.sock.close()


def _send_op(sock, op):
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn) + len(payload),
                            NLMSG_DONE, 0, 0, os.getpid())
    sock.send(header + cn + payload)


def parse(data):
    """[(tgid, seconds)] of the exec events in one netlink datagram."""
    found = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size or offset + length > len(data):
            break  # not a message, or cut short
        body = offset + _NLMSGHDR.size + _CN_MSG.size
        if body + _EVENT_HEAD.size + _EXEC_DATA.size <= offset + length:
            what, _cpu, stamp = _EVENT_HEAD.unpack_from(data, body)
            if what == PROC_EVENT_EXEC:
                _pid, tgid = _EXEC_DATA.unpack_from(
                    data, body + _EVENT_HEAD.size)
                found.append((tgid, stamp / 1e9))
        offset += (length + 3) & ~3
    return found
