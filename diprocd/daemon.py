"""Daemonizing, the flock-held pid file and the daemons' logging.

The pid file is opened without truncation and locked with flock for the
daemon's whole life: a second instance finds it locked and reports the pid
inside. It is mode 0644 whatever the umask, and a symlink planted at its
name is refused, never followed (``fileio.open_in_place``). Only the lock
holder truncates and writes it, and it unlinks it on a clean exit.
``read_locked_pid`` is the one reader of such a file: "is it running, and
which pid" in one call, for the daemons, ``--status``, ``--pid`` and
through ``--pid`` the init scripts.
"""

import errno
import fcntl
import logging
import os
import signal
import sys

from diprocd.errors import AlreadyRunning
from diprocd.fileio import open_in_place

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class PidFile:
    """A pid file held with an exclusive flock while the daemon lives."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self):
        """Take the lock or raise AlreadyRunning with the holder's pid."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        while True:
            fd = open_in_place(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise AlreadyRunning(self.path, read_locked_pid(self.path))
                raise
            # The previous holder may have unlinked the file between our open
            # and our lock: then we hold a lock on a dead inode. Retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                # A pid left by a killed daemon must not pass for ours, under
                # our lock, until write_pid: empty reads as "not yet".
                os.ftruncate(fd, 0)
                self.fd = fd
                return self
            os.close(fd)

    def write_pid(self, pid=None):
        """Record our pid (after daemonizing, the final one)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, b"%d\n" % (pid or os.getpid()), 0)

    def move(self, new_path):
        """Hold ``new_path`` instead (the daemon's CONFIG names another pid
        file): lock and fill the new file first, then let the old one go.
        Raises AlreadyRunning or OSError, keeping the old one."""
        new = PidFile(new_path).acquire()
        new.write_pid()
        self.release()
        self.path, self.fd = new.path, new.fd

    def release(self):
        """Unlink then unlock: done on a clean exit only."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def beside_pid_file(pid_file, suffix):
    """``/run/dpd-workerd.pid``, ``.status.json`` ->
    ``/run/dpd-workerd.status.json``: the daemons' other files live there."""
    base, ext = os.path.splitext(pid_file)
    if ext != ".pid":
        base = pid_file
    return base + suffix


def carry_over(old, new, pid_lock, log):
    """The configuration a running daemon takes from its re-read CONFIG
    ``new`` (``old`` in force): a new ``pid_file`` takes effect at once, the
    lock ``pid_lock`` moving there (each daemon moves the files it keeps
    beside it), or, when it cannot, the old one is kept and logged; a new
    ``log_file`` takes effect at the next start."""
    if new.log_file != old.log_file:
        log.warning('key "log_file" changed: takes effect at the next start')
        new = new.replace(log_file=old.log_file)
    if new.pid_file != old.pid_file and pid_lock is not None:
        try:
            pid_lock.move(new.pid_file)
            log.info("pid file moved from %s to %s", old.pid_file,
                     new.pid_file)
        except (AlreadyRunning, OSError) as err:
            log.error("cannot move the pid file to %s (%s): keeping %s until "
                      "the next start", new.pid_file, err, old.pid_file)
            new = new.replace(pid_file=old.pid_file)
    return new


def read_locked_pid(path):
    """The pid in ``path`` while a live daemon holds its lock, else None.

    A pid file left by a killed daemon (whose pid may belong to anything by
    now) is not locked, so it gives None; so does a daemon that holds the
    lock but has not written its pid yet. The pid is read through the
    descriptor whose lock was tested, never from a file put in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                return None
        else:
            return None  # nobody holds it
        return _parse_pid(os.pread(fd, 64, 0))
    finally:
        os.close(fd)


def read_pid(path):
    """The pid written in a pid file nobody locks (a supervised process's),
    or None; for a daemon's own pid file use read_locked_pid."""
    try:
        with open(path, "rb") as handle:
            return _parse_pid(handle.read(64))
    except OSError:
        return None


def _parse_pid(data):
    """A pid file's first word as a pid (some daemons write more)."""
    try:
        pid = int(data.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def daemonize(preserve_fds=()):
    """Detach with python-daemon's DaemonContext: fork, setsid, chdir /,
    umask 022, stdin/stdout/stderr to /dev/null, keeping ``preserve_fds``.
    Signal handling stays ours (signal_map empty)."""
    import daemon  # python-daemon; imported late: only the detaching path needs it

    context = daemon.DaemonContext(
        working_directory="/", umask=0o022, files_preserve=list(preserve_fds),
        signal_map={}, detach_process=True)
    context.open()
    return context


def setup_logging(name, foreground, verbose, log_file, buffered=False):
    """Log to stderr in the foreground, else to ``log_file`` through a
    handler that reopens the file when logrotate moves it. ``buffered``:
    through the standard library's MemoryHandler, which holds the lines
    until ``flush_logs()`` (a daemon's loop calls it once a turn, after the
    work that must not wait for a write), an error, or LOG_BUFFER_LINES."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if foreground or not log_file:
        handler = logging.StreamHandler(sys.stderr)
    else:
        folder = os.path.dirname(log_file)
        if folder:
            os.makedirs(folder, exist_ok=True)
        # Imported here: only a detached daemon needs it.
        from logging.handlers import WatchedFileHandler
        handler = WatchedFileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    if buffered:
        from logging.handlers import MemoryHandler
        handler = MemoryHandler(LOG_BUFFER_LINES, flushLevel=logging.ERROR,
                                target=handler)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logging.getLogger(name)


LOG_BUFFER_LINES = 500


def flush_logs():
    """Write what the root logger's handlers hold (a buffered log's lines)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


class SignalPipe:
    """Signal handlers that only record: Python's C-level handler writes the
    signal number to a non-blocking pipe (``signal.set_wakeup_fd``), whose
    read end the loop polls with its sockets; ``drain()`` returns the
    signal numbers received since the last call."""

    def __init__(self, signums):
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write,
                                                 warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._record)
                          for signum in signums}

    @staticmethod
    def _record(signum, frame):
        """Nothing to do: the wake-up fd already carries the number."""

    def fileno(self):
        return self._read

    def drain(self):
        received = []
        while True:
            try:
                data = os.read(self._read, 512)
            except BlockingIOError:
                break
            if not data:
                break
            received.extend(data)
        return list(dict.fromkeys(received))

    def close(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)
