"""Noticing that a file changed: inotify where the kernel has it, else a
cheap stat watch (nanosecond mtime, ctime, inode and size).

``FileWatch(path)`` watches the file's folder, so both an atomic rename over
the file and an in-place write are seen. With inotify, ``fileno()`` is a
descriptor for the caller's selector and ``poll_interval`` is None; without
it, ``fileno()`` is None and the caller calls ``changed()`` every
``poll_interval`` seconds.

With inotify, ``read_events()`` also says whether the file is whole:
COMPLETE when the last event about it is a rename onto it or the close of a
writer (an editor's or ``fileio.atomic_write``'s save: nothing more is
coming), PARTIAL otherwise (a write in place still going on, a removal, a
chmod), where the caller lets the changes settle first.
"""

import ctypes
import os
import struct

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM
              | IN_MOVED_TO | IN_CREATE | IN_DELETE)
EVENT_HEADER = struct.Struct("iIII")
COMPLETE = "complete"
PARTIAL = "partial"

STAT_POLL_INTERVAL = 0.05


def file_signature(path):
    """What changes when a file is rewritten, whole seconds or not."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


class FileWatch:
    """Watch one file (see the module docstring)."""

    def __init__(self, path, use_inotify=True):
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path).encode()
        # A symlinked file (config management) is edited where it points:
        # watch that folder too.
        self.real = os.path.realpath(self.path)
        self.names = {self.name, os.path.basename(self.real).encode()}
        self.signature = file_signature(self.path)
        self.fd = None
        self.poll_interval = STAT_POLL_INTERVAL
        if use_inotify:
            self._start_inotify()

    def _start_inotify(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd < 0:
            return
        for folder in {os.path.dirname(self.path), os.path.dirname(self.real)}:
            if libc.inotify_add_watch(fd, folder.encode(), WATCH_MASK) < 0:
                os.close(fd)
                return
        self.fd = fd
        self.poll_interval = None

    def fileno(self):
        return self.fd

    def read_events(self):
        """Drain inotify; None when no event concerned our file, else
        COMPLETE or PARTIAL (see the module docstring)."""
        hit = None
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return hit
            if not data:
                return hit
            offset = 0
            while offset + EVENT_HEADER.size <= len(data):
                _wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data,
                                                                      offset)
                offset += EVENT_HEADER.size
                name = data[offset:offset + length].rstrip(b"\0")
                offset += length
                if mask & IN_Q_OVERFLOW:
                    hit = PARTIAL
                elif name in self.names:
                    hit = COMPLETE if mask & (IN_MOVED_TO | IN_CLOSE_WRITE) \
                        else PARTIAL

    def changed(self):
        """Stat watch: True when the file's signature moved since last call."""
        signature = file_signature(self.path)
        if signature != self.signature:
            self.signature = signature
            return True
        return False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
