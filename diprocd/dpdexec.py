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
import sys

ENV_VAR = "DIPROCD_EXEC"
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

    def __init__(self, path, why):
        self.path = path
        self.why = why

    def describe(self):
        """What the status file and the log say."""
        if self.path is None:
            return "fork (%s)" % self.why
        return "%s %s" % (NAME, self.path)


def find(environ=os.environ, prefix=sys.prefix):
    """The Spawner to use (see the module docstring)."""
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
    data = encode(plan)
    plan_fd = os.memfd_create("dpd-exec-plan", os.MFD_CLOEXEC)
    owned = [plan_fd]
    try:
        if os.write(plan_fd, data) != len(data):  # a memfd takes it whole
            raise OSError(errno.ENOSPC, "short write of the plan")
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


def _above(fd, owned, low=CGROUP_FD + 1):
    """``fd``, or a close-on-exec copy of it numbered from ``low`` up (added
    to ``owned``, which the caller closes) when it is lower."""
    if fd is None or fd >= low:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    owned.append(copy)
    return copy
