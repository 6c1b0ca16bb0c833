"""What diprocd asks the Linux kernel about processes, in one place.

- ``proc_stat(pid)``: the one reader of ``/proc/PID/stat`` (state, parent,
  group, session, CPU ticks, start time); ``start_ticks`` and
  ``cpu_ticks`` are built on it; ``is_alive`` and ``alive`` (thousands of
  pids at once) ask pidfds; ``rss_bytes`` reads the resident memory. The
  kernel start time and the boot id identify a process uniquely: a
  recycled pid has another start time.
- ``pidfd_open``, ``signal_process``, the wait-status words, the child
  subreaper flag and the open-files limit (returned, never kept here);
- ``fork_into_cgroup``: a fork whose child is born in a cgroup v2 folder
  (``clone3`` with ``CLONE_INTO_CGROUP``).

No state and no diprocd imports: the worker, the daemons' command lines, the
tests, the demo and the benchmarks all read processes through this module.
"""

import collections
import ctypes
import errno
import os
import resource
import select
import signal

PR_SET_CHILD_SUBREAPER = 36

ProcStat = collections.namedtuple(
    "ProcStat", "pid state ppid pgrp session utime stime start_ticks")


def proc_stat(pid):
    """``/proc/PID/stat`` as a ProcStat, or None when there is no such pid.
    The command name (in parentheses, and free to hold spaces or ")") is
    skipped by splitting at the last ")"."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        # Fields after the name, counted from 0: 0 state, 1 ppid, 2 pgrp,
        # 3 session, 11 utime, 12 stime, 19 starttime (proc(5)).
        return ProcStat(pid, fields[0].decode("ascii", "replace"),
                        int(fields[1]), int(fields[2]), int(fields[3]),
                        int(fields[11]), int(fields[12]), int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None


def start_ticks(pid, zombie_ok=False):
    """The kernel's start time of ``pid`` (clock ticks since boot), or None
    when there is no such live process (a zombie counts with ``zombie_ok``:
    a launcher that forked and exited, not reaped yet)."""
    stat = proc_stat(pid)
    if stat is None or stat.state == "X" or (stat.state == "Z"
                                               and not zombie_ok):
        return None
    return stat.start_ticks


def is_alive(pid):
    """True while ``pid`` exists and is not a zombie (``alive``)."""
    return pid in alive((pid,))


# pidfds polled at once by ``alive``: well under the usual 1024 open files.
_POLL_BATCH = 256


def alive(pids):
    """The set of ``pids`` that exist and are not zombies: a pidfd of each
    is not readable (it is once the process ended, reaped or not), one
    poll for a batch; where there is no pidfd, the state in
    /proc/PID/stat. A few microseconds a pid, where /proc/PID/stat of a
    live process costs tens: ``--status`` asks for thousands."""
    pids = list(pids)
    found = set()
    for first in range(0, len(pids), _POLL_BATCH):
        found |= _alive_batch(pids[first:first + _POLL_BATCH])
    return found


def _alive_batch(pids):
    found, fds = set(), {}
    poller = select.poll()
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except (OSError, ValueError, OverflowError, AttributeError):
                if _alive_by_stat(pid):
                    found.add(pid)
                continue
            fds[fd] = pid
            poller.register(fd, select.POLLIN)
        ended = {fd for fd, _ in poller.poll(0)} if fds else ()
    finally:
        for fd in fds:
            os.close(fd)
    return found | {pid for fd, pid in fds.items() if fd not in ended}


def _alive_by_stat(pid):
    """is_alive from the state, the field after the name, read without
    the rest."""
    try:
        fd = os.open("/proc/%d/stat" % pid, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError, OverflowError):
        return False
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    finally:
        os.close(fd)
    state = data[data.rfind(b")") + 2:][:1]
    return state not in (b"", b"Z", b"X")


def cpu_ticks(pid):
    """utime + stime of ``pid`` in clock ticks, or None."""
    stat = proc_stat(pid)
    return None if stat is None else stat.utime + stat.stime


def memory_bytes(pid, field="VmRSS"):
    """A memory figure of ``pid`` from /proc/PID/status (VmRSS: resident,
    VmHWM: its peak...) in bytes, or None when it is gone."""
    key = field.encode("ascii") + b":"
    try:
        with open("/proc/%d/status" % pid, "rb") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pid):
    """Resident memory of ``pid`` (VmRSS), or None when it is gone."""
    return memory_bytes(pid, "VmRSS")


def boot_id():
    """This boot's random id: with start_ticks, a process's identity."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def pidfd_open(pid):
    """A pidfd for ``pid``; None where the kernel has no pidfd_open (the
    caller polls instead); raise ProcessLookupError when pid is gone."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise ProcessLookupError(pid)
        if err.errno in (errno.ENOSYS, errno.EINVAL):
            return None
        raise


def signal_process(pid, signum):
    """Send ``signum`` to the process group led by ``pid`` (the processes we
    start lead their own group), else to ``pid`` alone (a daemon that moved
    to another group). Returns False if the process is gone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists but is not ours to signal (a setuid program under a
        # worker that is not root): still alive, the caller keeps watching.
        return True


def kill_quietly(pid, signum=signal.SIGKILL):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def describe_wait_status(status):
    """A waitpid status as words: 'exit status 1', 'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal_name(os.WTERMSIG(status))
    if os.WIFEXITED(status):
        return "exit status %d" % os.WEXITSTATUS(status)
    return "status %d" % status


def describe_waitid(result):
    """An os.waitid result as words."""
    if result.si_code == os.CLD_EXITED:
        return "exit status %d" % result.si_status
    return "killed by %s" % signal_name(result.si_status)


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


# rt_sigaction(2)'s number, where we know it: the C library's sigaction()
# refuses its own signals (glibc's two below SIGRTMIN).
SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134,
                    "i386": 174, "i686": 174, "armv7l": 174, "ppc64le": 173,
                    "s390x": 174}.get(os.uname().machine)
HIDDEN_SIGNALS = range(32, signal.SIGRTMIN)  # glibc's: 32 and 33
_sigaction = None


def prepare_default_hidden_signals():
    """Look up what ``default_hidden_signals`` calls (before forking)."""
    global _sigaction
    if _sigaction is None and SYS_RT_SIGACTION is not None:
        try:
            _sigaction = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            pass


def default_hidden_signals():
    """The C library's own signals back to their default in this process:
    a parent's posix_spawn (GNU make's, for one) leaves them ignored, and
    an exec keeps an ignored signal. A zeroed struct is SIG_DFL, no flags,
    an empty mask, whatever the architecture's field order. Nothing where
    the call's number is not known here."""
    if _sigaction is None:
        return
    action = ctypes.create_string_buffer(64)  # larger than any kernel's
    for signum in HIDDEN_SIGNALS:
        _sigaction(SYS_RT_SIGACTION, signum, action, None, 8)


# clone3(2): the same number on every architecture Linux gives it to.
SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
        "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]


_clone3 = None


def _clone3_call():
    """libc's syscall(), through PyDLL: the GIL stays held across the
    call, as os.fork holds it across fork(). Looked up once, in the
    worker, so that a child looks up nothing."""
    global _clone3
    if _clone3 is None:
        _clone3 = ctypes.PyDLL(None, use_errno=True).syscall
        _clone3.restype = ctypes.c_long
    return _clone3


def prepare_fork_into_cgroup():
    """Look up what ``fork_into_cgroup`` calls (do it before forking)."""
    try:
        _clone3_call()
    except (OSError, AttributeError):
        pass


def fork_into_cgroup(cgroup_fd):
    """``os.fork()``, but the child starts in the cgroup v2 folder open as
    ``cgroup_fd``: no migration afterwards (a write to cgroup.procs waits
    for an RCU grace period, ~10 ms on a loaded machine). Returns 0 in the
    child, its pid in the parent, as os.fork; raises OSError where the
    kernel cannot (ENOSYS before Linux 5.7, EINVAL, E2BIG...): the caller
    then forks and writes cgroup.procs."""
    try:
        call = _clone3_call()
    except (OSError, AttributeError) as err:
        raise OSError(errno.ENOSYS, "no clone3: %s" % err)
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD,
                      cgroup=cgroup_fd)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = call(ctypes.c_long(SYS_CLONE3), ctypes.byref(args),
               ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    error = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return pid


def become_subreaper():
    """Make orphaned descendants our children (PR_SET_CHILD_SUBREAPER), so
    the processes we start report their exit status to us. Returns False
    where the kernel refuses (the worker still works, without statuses)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def raise_open_files_limit():
    """Raise our soft RLIMIT_NOFILE to the hard limit (the worker holds a
    pidfd per process). Returns the limit we were started with, for the
    programs to get back at exec, or None when it was not changed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    target = min(target, 1 << 20)
    if target <= soft:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return (soft, hard)


def max_fd():
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536
