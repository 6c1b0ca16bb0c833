"""dpd-exec, the small C program that takes a process from posix_spawn to
its exec (lib/dpd-exec.c): where its binary is, the plan it reads, and
starting it.

``find()`` looks, in this order, at ``$DIPROCD_EXEC`` (a path, or ``none``
for the fork path: the tests run both), ``sys.prefix/lib/diprocd/dpd-exec``
(``/usr`` for the Debian package, the venv that ``make venv`` builds) and
``/usr/lib/diprocd/dpd-exec``; the worker logs which it uses and puts it in
its status file (``Spawner``).

``start(path, plan, log_fd, report_fd)`` is one ``os.posix_spawn``
(vfork-like: its cost does not grow with the worker's size, where a fork's
does): a session of its own (setsid, so it leads its process group),
every catchable signal back to its default, an empty mask, and the
descriptors dpd-exec expects (0 /dev/null,
1 and 2 the log, 3 the report pipe, 4 the journal, 5 the plan, 6 the cgroup
v2 folder the program is to be born in, when it is). The plan is
a memfd of NUL-terminated fields (``encode``): the program's arguments and
environment never pass through dpd-exec's own command line (readable by
every user in /proc) nor its environment (read by its dynamic loader, as
root). dpd-exec gets the worker's environment, as the fork path's child
does until its exec.
"""

import errno
import fcntl
import os
import resource
import signal
import socket
import sys
import time

ENV_VAR = "DIPROCD_EXEC"
SERVER_ENV_VAR = "DIPROCD_EXEC_SERVER"
NAME = "dpd-exec"
PLAN_VERSION = b"dpd-exec plan 2"
REPORT_FD, JOURNAL_FD, PLAN_FD, CGROUP_FD = 3, 4, 5, 6
# Every catchable signal: Python ignores SIGPIPE and SIGXFSZ, and a program
# must not inherit that.
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGKILL, signal.SIGSTOP}


class Spawner:
    """How the worker starts processes: ``path`` is dpd-exec's, or None
    for the fork path; ``why`` says why, for the log."""

    def __init__(self, path, why, serve=True):
        self.path = path
        self.why = why
        self.serve = serve  # through a Server ($DIPROCD_EXEC_SERVER=none: not)

    def server(self, log=None):
        """A Server of dpd-exec, or None (the fork path, or not wanted)."""
        if self.path is None or not self.serve:
            return None
        return Server(self.path, log)

    def describe(self):
        """What the status file and the log say."""
        if self.path is None:
            return "fork (%s)" % self.why
        return "%s %s" % (NAME, self.path)


def find(environ=os.environ, prefix=sys.prefix):
    """The Spawner to use (see the module docstring)."""
    spawner = _find(environ, prefix)
    spawner.serve = environ.get(SERVER_ENV_VAR) != "none"
    return spawner


def _find(environ, prefix):
    wanted = environ.get(ENV_VAR)
    if wanted == "none":
        return Spawner(None, "%s=none" % ENV_VAR)
    if wanted:
        if _runnable(wanted):
            return Spawner(wanted, "from $%s" % ENV_VAR)
        return Spawner(None, "%s=%s is not an executable file"
                       % (ENV_VAR, wanted))
    places = (os.path.join(prefix, "lib", "diprocd", NAME),
              os.path.join("/usr/lib/diprocd", NAME))
    for path in places:
        if _runnable(path):
            return Spawner(path, "found")
    return Spawner(None, "no %s at %s" % (NAME, " nor ".join(places)))


def _runnable(path):
    return os.path.isabs(path) and os.path.isfile(path) \
        and os.access(path, os.X_OK)


def encode(plan):
    """The plan's fields as dpd-exec reads them (lib/dpd-exec.c)."""
    spec, journal = plan.spec, plan.journal
    if plan.groups is not None and os.geteuid() == 0:
        ids = [b"%d" % plan.user.pw_uid, b"%d" % plan.user.pw_gid,
               b",".join(b"%d" % gid for gid in plan.groups)]
    else:
        ids = [b"", b"", b""]  # it stays who the worker is
    limits = []
    if plan.program_nofile is not None:
        limits.append((resource.RLIMIT_NOFILE, plan.program_nofile, ""))
    limits += [(which, pair, label) for label, which, pair in plan.limits]
    born = plan.cgroups[0] if plan.cgroup_fd is not None else ""
    joined = plan.cgroups[1:] if born else plan.cgroups
    fields = [PLAN_VERSION, journal.record if journal is not None else b"",
              os.fsencode(spec.chroot or ""), os.fsencode(spec.cwd),
              os.fsencode(spec.user or "")] + ids + [
        b"%o" % spec.umask, os.fsencode(born), b"%d" % len(joined)] + [
        os.fsencode(folder) for folder in joined] + [
        b"%d" % len(limits)] + [
        item for which, pair, label in limits for item in (
            b"%d" % which, _limit(pair[0]), _limit(pair[1]),
            label.encode("utf-8"))] + [
        os.fsencode(plan.argv[0]), b"%d" % len(plan.argv)] + [
        os.fsencode(arg) for arg in plan.argv] + [
        os.fsencode("%s=%s" % item) for item in plan.env.items()]
    return b"\0".join(fields) + b"\0"


def _limit(value):
    return b"inf" if value == resource.RLIM_INFINITY else b"%d" % value


def start(path, plan, log_fd, report_fd):
    """posix_spawn dpd-exec for ``plan`` with ``log_fd`` as its output and
    ``report_fd`` as the report pipe's write end; return its pid. OSError
    (ValueError for a NUL in a field) when it cannot be started."""
    journal = plan.journal
    plan_fd = _plan_file(plan)
    owned = [plan_fd]
    try:
        # The sources must not be among the numbers dup2'd to before them.
        sources = [_above(fd, owned) for fd in (
            log_fd, report_fd, plan_fd,
            journal.fd if journal is not None else None, plan.cgroup_fd)]
        log_fd, report_fd, plan_fd, journal_fd, cgroup_fd = sources
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log_fd, 1),
                   (os.POSIX_SPAWN_DUP2, log_fd, 2),
                   (os.POSIX_SPAWN_DUP2, report_fd, REPORT_FD),
                   (os.POSIX_SPAWN_DUP2, plan_fd, PLAN_FD)]
        if journal_fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, journal_fd, JOURNAL_FD))
        if cgroup_fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, cgroup_fd, CGROUP_FD))
        return os.posix_spawn(path, [NAME], os.environ, file_actions=actions,
                              setsid=True, setsigdef=DEFAULT_SIGNALS,
                              setsigmask=())
    finally:
        for fd in owned:
            os.close(fd)


def _plan_file(plan):
    """A close-on-exec memfd holding ``plan``'s fields."""
    data = encode(plan)
    plan_fd = os.memfd_create("dpd-exec-plan", os.MFD_CLOEXEC)
    try:
        if os.write(plan_fd, data) != len(data):  # a memfd takes it whole
            raise OSError(errno.ENOSPC, "short write of the plan")
    except BaseException:
        os.close(plan_fd)
        raise
    return plan_fd


class Server:
    """``dpd-exec --serve``: one dpd-exec for the worker's life that starts
    each process on request, so a start costs a message and a clone of a
    small process instead of a posix_spawn and the exec and dynamic loading
    of dpd-exec (lib/dpd-exec.c, ``serve``).

    Started by ``start_process`` at its first use, as ``start`` starts
    dpd-exec (its own session, default signals, empty mask, stdin
    /dev/null), with a SOCK_SEQPACKET socket as fd 3. Each start is one
    message: "L" (log, report pipe, plan), then "J" with the journal and
    "C" with the cgroup v2 folder to be born in, those descriptors in that
    order (SCM_RIGHTS). The server clones with ``CLONE_PARENT``, so the
    process is the worker's own child, as a posix_spawned dpd-exec is, and
    writes ``P<pid>`` on the report pipe; the child moves the descriptors
    to where dpd-exec has them and goes on as dpd-exec does (the report may
    then carry its error before that line). The server ends at end of file:
    when the worker closes it or dies (a start still queued then is served
    first, and journals itself as any other).

    A server that ended (killed) is replaced at the next start. Where none
    can be started or it does not take the message, ``start_process``
    raises OSError and the caller starts dpd-exec for that process instead;
    after a server that could not be started, the next try is
    ``RETRY_INTERVAL`` later."""

    HELLO = b"dpd-exec serve 1"
    TIMEOUT = 5.0          # for its hello, and for a message to be taken
    RETRY_INTERVAL = 10.0

    def __init__(self, path, log=None):
        self.path = path
        self.log = log
        self.pid = None
        self._sock = None
        self._failed_at = None

    def start_process(self, plan, log_fd, report_fd):
        """Have the server start ``plan``; its pid comes on the report pipe.
        True once sent; OSError where the server cannot take it (ValueError
        for a NUL in a field)."""
        plan_fd = _plan_file(plan)
        try:
            flags = b"L"
            fds = [log_fd, report_fd, plan_fd]
            if plan.journal is not None:
                flags += b"J"
                fds.append(plan.journal.fd)
            if plan.cgroup_fd is not None:
                flags += b"C"
                fds.append(plan.cgroup_fd)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(
                fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))]
            try:
                self._connected().sendmsg([flags], rights)
            except OSError as err:
                if self._sock is None:
                    raise  # no server could be started
                # It ended (killed?), or stopped taking messages (stopped
                # with SIGSTOP?: then it is killed): a new one, once.
                self.close(kill=isinstance(err, socket.timeout))
                self._connected().sendmsg([flags], rights)
        except OSError:
            self.close()
            raise
        finally:
            os.close(plan_fd)
        return True

    def _connected(self):
        if self._sock is not None:
            return self._sock
        if self._failed_at is not None and \
                time.monotonic() - self._failed_at < self.RETRY_INTERVAL:
            raise OSError(errno.EAGAIN, "the %s server failed %.0fs ago"
                          % (NAME, time.monotonic() - self._failed_at))
        self._failed_at = time.monotonic()  # until it said hello
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = os.posix_spawn(
                self.path, [NAME, "--serve"], os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null",
                               os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, theirs.fileno(),
                               REPORT_FD)],
                setsid=True, setsigdef=DEFAULT_SIGNALS, setsigmask=())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(self.TIMEOUT)
        try:
            hello = ours.recv(64)
        except OSError:
            ours.close()
            raise
        if hello != self.HELLO:
            ours.close()
            raise OSError(errno.EPROTO, "the %s server said %r (no clone3 "
                          "here, or another version)" % (NAME, hello))
        self._sock = ours
        self._failed_at = None
        if self.log is not None:
            self.log.info("%s server started, pid %d", NAME, self.pid)
        return ours

    def close(self, kill=False):
        """The server ends once it read what was sent (its end of file);
        with ``kill``, at once."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if kill and self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _above(fd, owned, low=CGROUP_FD + 1):
    """``fd``, or a close-on-exec copy of it numbered from ``low`` up (added
    to ``owned``, which the caller closes) when it is lower."""
    if fd is None or fd >= low:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    owned.append(copy)
    return copy
