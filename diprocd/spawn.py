"""Starting one process, Ganeti-style, and the small syscalls around it.

``launch(spec)`` then ``Launch.wait()`` double-fork so the process survives
the worker:

1. The worker creates a close-on-exec report pipe and forks an
   intermediate child.
2. The intermediate child calls ``setsid`` (a new session, no controlling
   terminal), forks the final child, writes the final child's pid on the
   pipe and exits at once; the worker reaps it.
3. The final child, in this order:
   a. resets signal dispositions and the signal mask (Python ignores SIGPIPE
      and SIGXFSZ; a program must not inherit that);
   b. opens ``/dev/null`` and the ``logs`` file (append, create) while it
      still sees the host's filesystem with the worker's privileges;
   c. ``setpgid(0, 0)``: its own process group, so a stop signal reaches the
      whole group and nothing else;
   d. ``chroot`` (when set);
   e. ``chdir("/")`` then ``chdir(cwd)``: a relative ``cwd`` resolves inside
      the chroot;
   f. ``setgid``, ``setgroups`` (the user's groups, as ``initgroups`` would
      set them, looked up by the worker), ``setuid`` to the target user (as
      root); a worker that is not root only runs processes as itself;
   g. ``umask``;
   h. stdin from ``/dev/null``, stdout and stderr appended to ``logs``;
   i. closes every other file descriptor (the pipe closes itself on exec)
      and gives back the open-files limit the worker was started with;
   i'. appends its pid and kernel start time to the worker's journal (the
      record a later worker adopts it by), so no program ever runs
      unrecorded, whenever the worker dies; a failed write stops here;
   j. ``execve`` with a clean environment (PATH, HOME, USER, LOGNAME, SHELL
      of the target user) overlaid with ``env``.
   Any failure writes ``E<step>: <reason>`` on the pipe and exits 127.
4. The worker reads the pipe to its end: a successful exec closes it with no
   error, so a failure comes back as a SpawnError with its reason, not as a
   silent death. ``launch`` returns after step 1 and ``Launch.wait`` does
   step 4, so a burst of starts overlaps (see Worker._start_waiting).
"""

import ctypes
import errno
import os
import resource
import select
import signal
import time

from diprocd.config import lookup_user
from diprocd.errors import SpawnError

# How long the worker waits for the final child to reach exec.
EXEC_TIMEOUT = 10.0

PR_SET_CHILD_SUBREAPER = 36

# The open-files limit the programs get: the worker raises its own (one
# pidfd per process) and gives them back the limit it was started with.
_program_nofile = None

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def clean_environment(spec, user_entry):
    """The environment a process starts with: the target user's basics,
    overlaid with the spec's ``env``."""
    env = {
        "PATH": ROOT_PATH if user_entry.pw_uid == 0 else USER_PATH,
        "HOME": user_entry.pw_dir or "/",
        "USER": user_entry.pw_name,
        "LOGNAME": user_entry.pw_name,
        "SHELL": user_entry.pw_shell or "/bin/sh",
    }
    env.update(spec.env_dict)
    return env


class Launch:
    """A process being started. ``launch(spec)`` forks the intermediate
    child and returns at once; ``wait()`` returns the pid once ``exec``
    succeeded, or raises SpawnError. Several launches may be in flight: the
    children reach exec on the other cores while the worker forks the next.
    """

    def __init__(self, spec, middle_pid, report_fd):
        self.spec = spec
        self.middle_pid = middle_pid
        self.report_fd = report_fd
        self._deadline = time.monotonic() + EXEC_TIMEOUT

    def wait(self):
        """Return the pid once the program runs (its exec closed the report
        pipe), or raise SpawnError with the reason it could not."""
        report = b""
        try:
            while True:
                chunk = _read_some(self.report_fd, self._deadline)
                if chunk is None:
                    pid, _ = _parse_report(report)
                    if pid:
                        _kill_quietly(pid)  # else it runs later, unsupervised
                    report += (b"Eexec: the process did not reach exec "
                               b"within %ds" % int(EXEC_TIMEOUT))
                    break
                if not chunk:
                    break
                report += chunk
        finally:
            os.close(self.report_fd)
            _reap(self.middle_pid)
        pid, error = _parse_report(report)
        if pid is None:
            raise SpawnError(error or "fork: the intermediate child failed")
        if error is not None:
            failure = SpawnError(error)
            failure.pid = pid
            raise failure
        return pid


def launch(spec, journal_fd=None, journal_entry=b"{"):
    """Fork the intermediate child for ``spec`` and return a Launch at once;
    raise SpawnError for what fails before the fork.

    With ``journal_fd`` (opened with O_APPEND), the final child appends one
    line to it before exec: ``journal_entry`` (the start of a JSON object)
    completed with its own pid and kernel start time. A program is thus
    recorded before it can run, whenever the worker is killed."""
    try:
        user = lookup_user(spec.user)
    except (KeyError, OverflowError, ValueError):
        raise SpawnError('user: unknown user "%s"' % spec.user)
    if os.geteuid() == 0:
        # Looked up here, once, not by initgroups() in every child: the
        # child would load the NSS machinery from scratch each time.
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
    elif user.pw_uid != os.geteuid():
        raise SpawnError('user: cannot run as "%s": the worker is not root'
                         % spec.user)
    else:
        groups = None
    argv = [spec.run] + list(spec.args)
    env = clean_environment(spec, user)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        middle = os.fork()
    except OSError as err:
        os.close(read_end)
        os.close(write_end)
        raise SpawnError("fork: %s" % err.strerror)
    if middle == 0:  # the intermediate child
        try:
            os.close(read_end)
            os.setsid()
            final = os.fork()
            if final == 0:
                _exec_child(spec, user, groups, argv, env, write_end,
                            journal_fd, journal_entry)
            os.write(write_end, b"P%d\n" % final)
        except BaseException:
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    return Launch(spec, middle, read_end)


def _read_some(fd, deadline):
    """Read what is there; b"" at end of file, None past the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            return os.read(fd, 4096)


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _parse_report(report):
    pid, error = None, None
    text = report.decode("utf-8", "replace")
    if text.startswith("P"):
        line, _, rest = text.partition("\n")
        pid = int(line[1:])
        text = rest
    if text.startswith("E"):
        error = text[1:].strip()
    return pid, error


def _reap(pid):
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _exec_child(spec, user, groups, argv, env, report_fd, journal_fd,
                journal_entry):
    """Steps 3a-3j of the module docstring; never returns."""
    step = "signals"
    try:
        for signum in range(1, signal.NSIG):
            if signum in (signal.SIGKILL, signal.SIGSTOP):
                continue
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if journal_fd is not None:
            step = "journal"
            # /proc may not exist inside the chroot: read it now.
            # The line starts with a newline: a line torn by a full disk
            # then spoils only itself, not the next one.
            pid = os.getpid()
            ticks = start_ticks(pid)
            line = b'\n%s"pid": %d, "ticks": %s}\n' % (
                journal_entry, pid, b"null" if ticks is None else b"%d" % ticks)
        step = "logs"
        null_fd = os.open("/dev/null", os.O_RDONLY)
        log_fd = os.open(spec.logs, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o644)
        step = "setpgid"
        os.setpgid(0, 0)
        if spec.chroot:
            step = "chroot %s" % spec.chroot
            os.chroot(spec.chroot)
        step = "chdir %s" % spec.cwd
        os.chdir("/")
        os.chdir(spec.cwd)
        step = "user %s" % spec.user
        if os.geteuid() == 0:
            os.setgid(user.pw_gid)
            os.setgroups(groups)
            os.setuid(user.pw_uid)
        step = "umask"
        os.umask(spec.umask)
        step = "stdio"
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        step = "close fds"
        keep = sorted(fd for fd in (report_fd, journal_fd) if fd is not None)
        low = 3
        for fd in keep:
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _max_fd())
        if _program_nofile is not None:
            step = "open files limit"
            resource.setrlimit(resource.RLIMIT_NOFILE, _program_nofile)
        if journal_fd is not None:
            step = "journal"
            if os.write(journal_fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write")
        step = "exec %s" % spec.run
        os.execve(spec.run, argv, env)
    except BaseException as err:  # report, whatever it is
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        try:
            os.write(report_fd, ("E%s: %s" % (step, reason)).encode("utf-8",
                                                                   "replace"))
        finally:
            os._exit(127)


def _max_fd():
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


# --- the syscalls the worker needs around processes -------------------------

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
    pidfd per process); programs get the original limit back at exec."""
    global _program_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    target = min(target, 1 << 20)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    _program_nofile = (soft, hard)
    return target


def start_ticks(pid, zombie_ok=False):
    """The kernel's start time of ``pid`` (clock ticks since boot), or None
    when there is no such live process. With the boot id, it identifies a
    process uniquely: a recycled pid has another start time."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"X" or (fields[0] == b"Z" and not zombie_ok):
        return None
    return int(fields[19])


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


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


def describe_wait_status(status):
    """A waitpid status as words: 'exit status 1', 'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        return "killed by %s" % _signal_name(os.WTERMSIG(status))
    if os.WIFEXITED(status):
        return "exit status %d" % os.WEXITSTATUS(status)
    return "status %d" % status


def describe_waitid(result):
    """An os.waitid result as words."""
    if result.si_code == os.CLD_EXITED:
        return "exit status %d" % result.si_status
    return "killed by %s" % _signal_name(result.si_status)


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


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
