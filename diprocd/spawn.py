"""Starting one process: ``launch(spec, ...)`` then ``Launch.wait()``.

Two ways, the same steps in the same order, the same report pipe and
errors; ``by_helper`` chooses, per spec:

- **dpd-exec** (``dpdexec``), whenever the worker found that small C
  program (lib/dpd-exec.c): the worker looks the user up (``Plan``) and
  opens the ``logs`` file as that user (step c below, ``_open_log``) itself,
  then ``posix_spawn``s dpd-exec (vfork-like: no copy of the worker, whose
  size a fork pays for) with setsid (a session and process group leader of
  its own, so step d is done), default signals and an empty mask (step a),
  stdin /dev/null and stdout/stderr the log (step h); dpd-exec does steps b,
  e, f, g, i, j, k in that order and reports on the same pipe; it holds
  the journal's open file until its exec, as the fork path's child does
  (``ledger``). The process is the worker's direct child: no double fork
  (the worker, a child subreaper, watches it by pidfd either way); it
  leads its session, so a terminal it opens without O_NOCTTY becomes its
  controlling terminal, which the fork path's process cannot get.
- **the fork path**, below, where there is no dpd-exec (``$DIPROCD_EXEC=none``
  forces it):

1. The worker creates a close-on-exec report pipe and forks an
   intermediate child (``_launch_by_fork``).
2. The intermediate child calls ``setsid`` (a new session, no controlling
   terminal), forks the final child, writes the final child's pid on the
   pipe and exits at once; the worker reaps it (``_intermediate``).
3. The final child (``_final_child``), one function a step, in this order:
   a. ``_reset_signals``: default dispositions, empty mask (Python ignores
      SIGPIPE and SIGXFSZ; a program must not inherit that);
   b. ``_journal_line``: its pid and kernel start time, read while /proc is
      still the host's (it may not exist inside the chroot);
   c. ``_open_files``: ``/dev/null`` and the ``logs`` file (append, create,
      non-blocking), while it still sees the host's filesystem: with the
      target user's rights (``_open_as``), so a link that user planted
      cannot send root's writes where the user could not write itself;
      as root only where the user is refused and only root controls the
      folder (``trust.root_controlled``: /var/log). A symlink as its last
      component and a missing folder are start errors (nothing created);
   d. ``_own_group``: ``setpgid(0, 0)``, so a stop signal reaches the whole
      group and nothing else;
   e. ``chroot`` (when set), then ``_change_dir``: ``chdir("/")`` and
      ``chdir(cwd)``, so a relative ``cwd`` resolves inside the chroot;
   f. ``_become_user``: ``setgid``, ``setgroups`` (the user's groups, as
      ``initgroups`` would set them, looked up by the worker), ``setuid``
      (as root); a worker that is not root only runs processes as itself;
   g. ``umask``;
   h. ``_redirect_stdio``: stdin from ``/dev/null``, stdout and stderr
      appended to ``logs``;
   i. ``_close_other_fds``: every other descriptor (the pipe closes itself on
      exec), and the open-files limit the worker was started with back;
   j. ``_record``: appends the journal line of step b to the worker's
      journal (the record a later worker adopts it by), so no program ever
      runs unrecorded, whenever the worker dies; a failed write stops here;
   k. ``execve`` with a clean environment (PATH, HOME, USER, LOGNAME, SHELL
      of the target user) overlaid with ``env``.
   Any failure writes ``E<step>: <reason>`` on the pipe and exits 127.
4. The worker reads the pipe to its end (``Launch.wait``): a successful exec
   closes it with no error, so a failure comes back as a SpawnError with its
   reason, not as a silent death. ``launch`` returns after step 1, so a
   burst of starts overlaps (see Worker._start_waiting).
"""

import errno
import os
import resource
import select
import signal
import time

from diprocd import dpdexec, kernel, trust
from diprocd.config import lookup_user
from diprocd.errors import SpawnError

# How long the worker waits for the final child to reach exec.
EXEC_TIMEOUT = 10.0

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
    """A process being started. ``launch(spec)`` returns one at once;
    ``wait()`` returns the pid once ``exec`` succeeded, or raises
    SpawnError. Several launches may be in flight: the children reach exec
    on the other cores while the worker starts the next. ``middle_pid`` is
    the fork path's intermediate child (reaped here), ``pid`` the process
    when the worker knows it already (dpd-exec, its own child)."""

    def __init__(self, spec, middle_pid, report_fd, pid=None):
        self.spec = spec
        self.middle_pid = middle_pid
        self.pid = pid
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
                    pid = _parse_report(report)[0] or self.pid
                    if pid:
                        kernel.kill_quietly(pid)  # else it runs unsupervised
                    report += (b"Eexec: the process did not reach exec "
                               b"within %ds" % int(EXEC_TIMEOUT))
                    break
                if not chunk:
                    break
                report += chunk
        finally:
            os.close(self.report_fd)
            if self.middle_pid is not None:
                _reap(self.middle_pid)
        pid, error = _parse_report(report)
        pid = pid or self.pid
        if pid is None:
            raise SpawnError(error or "fork: the intermediate child failed")
        if error is not None:
            if self.middle_pid is None:
                _reap(pid)  # dpd-exec, the worker's child, exits at once
            failure = SpawnError(error)
            failure.pid = pid
            raise failure
        return pid


class Plan:
    """What the process needs, worked out by the worker before the fork or
    the posix_spawn (neither the fork path's child nor dpd-exec loads
    anything: no NSS, no JSON)."""

    def __init__(self, spec, journal, program_nofile):
        try:
            self.user = lookup_user(spec.user)
        except (KeyError, OverflowError, ValueError):
            raise SpawnError('user: unknown user "%s"' % spec.user)
        if os.geteuid() == 0:
            # Looked up here, once, not by initgroups() in every child: the
            # child would load the NSS machinery from scratch each time.
            self.groups = os.getgrouplist(self.user.pw_name, self.user.pw_gid)
        elif self.user.pw_uid != os.geteuid():
            raise SpawnError('user: cannot run as "%s": the worker is not '
                             'root' % spec.user)
        else:
            self.groups = None
        self.spec = spec
        self.argv = [spec.run] + list(spec.args)
        self.env = clean_environment(spec, self.user)
        self.journal = journal
        self.program_nofile = program_nofile


def launch(spec, journal=None, program_nofile=None, helper=None):
    """Start ``spec`` and return a Launch at once; raise SpawnError for what
    fails before the process exists.

    ``journal`` (a ``ledger.JournalSlot``: an O_APPEND fd and the line to
    complete with the child's pid and start time) makes the process
    record itself before exec. ``program_nofile`` is the open-files limit the
    program gets (the worker raised its own). ``helper`` is dpd-exec's path
    (``dpdexec.find``), or None for the fork path."""
    plan = Plan(spec, journal, program_nofile)
    if by_helper(spec, helper):
        return _launch_by_helper(plan, helper)
    return _launch_by_fork(plan)


def by_helper(spec, helper):
    """Whether dpd-exec starts ``spec`` (else the fork path does): whenever
    it is there, as it does every step a spec asks for."""
    return helper is not None


def _launch_by_helper(plan, helper):
    """Open the log as the user, then posix_spawn dpd-exec (module
    docstring)."""
    spec = plan.spec
    try:
        log_fd = _open_log(spec.logs, plan.user, plan.groups)
    except OSError as err:
        raise SpawnError("logs: %s" % _reason(err))
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            pid = dpdexec.start(helper, plan, log_fd, write_end)
        except (OSError, ValueError) as err:
            os.close(read_end)
            raise SpawnError("%s %s: %s" % (dpdexec.NAME, helper,
                                            _reason(err)))
        finally:
            os.close(write_end)
    finally:
        os.close(log_fd)
    return Launch(spec, None, read_end, pid)


def _launch_by_fork(plan):
    """Fork the intermediate child (module docstring, steps 1-3)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        middle = os.fork()
    except OSError as err:
        os.close(read_end)
        os.close(write_end)
        raise SpawnError("fork: %s" % err.strerror)
    if middle == 0:
        _intermediate(plan, read_end, write_end)
    os.close(write_end)
    return Launch(plan.spec, middle, read_end)


def _intermediate(plan, read_end, write_end):
    """Step 2; never returns."""
    try:
        os.close(read_end)
        os.setsid()
        final = os.fork()
        if final == 0:
            _final_child(plan, write_end)
        os.write(write_end, b"P%d\n" % final)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _final_child(plan, report_fd):
    """Step 3, a-k in order; never returns."""
    spec = plan.spec
    step = "signals"
    try:
        _reset_signals()
        step = "journal"
        line = _journal_line(plan.journal)
        step = "logs"
        null_fd, log_fd = _open_files(spec.logs, plan.user, plan.groups)
        step = "setpgid"
        _own_group()
        if spec.chroot:
            step = "chroot %s" % spec.chroot
            os.chroot(spec.chroot)
        step = "chdir %s" % spec.cwd
        _change_dir(spec.cwd)
        step = "user %s" % spec.user
        _become_user(plan.user, plan.groups)
        step = "umask"
        os.umask(spec.umask)
        step = "stdio"
        _redirect_stdio(null_fd, log_fd)
        step = "close fds"
        _close_other_fds((report_fd, plan.journal and plan.journal.fd),
                         plan.program_nofile)
        step = "journal"
        _record(plan.journal, line)
        step = "exec %s" % spec.run
        os.execve(spec.run, plan.argv, plan.env)
    except BaseException as err:  # report, whatever it is
        try:
            os.write(report_fd, ("E%s: %s" % (step, _reason(err))).encode(
                "utf-8", "replace"))
        finally:
            os._exit(127)


def _reason(err):
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _reset_signals():
    for signum in range(1, signal.NSIG):
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _journal_line(journal):
    if journal is None:
        return None
    pid = os.getpid()
    return journal.line(pid, kernel.start_ticks(pid))


# Non-blocking: a FIFO nobody reads fails at once (ENXIO, a start error)
# instead of holding the opener until killed: the fork path's child, and
# with it the worker's inherited descriptors, its pid file lock among them,
# or on the dpd-exec path the worker itself.
LOG_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
             | os.O_NOFOLLOW)


def _open_files(logs, user, groups):
    return os.open("/dev/null", os.O_RDONLY), _open_log(logs, user, groups)


def _open_log(logs, user, groups):
    """``logs`` opened for the program's output (step c), blocking again;
    OSError with the reason it cannot be."""
    try:
        if groups is None or user.pw_uid == 0:  # the worker's own rights
            log_fd = os.open(logs, LOG_FLAGS, 0o644)
        else:
            log_fd = _open_as(logs, user, groups)
    except OSError as err:
        raise _log_error(logs, err)
    os.set_blocking(log_fd, True)
    return log_fd


def _open_as(logs, user, groups):
    """Open ``logs`` with ``user``'s rights (groups, then gid, then uid,
    effective only, and back to root), or as root where the user may not
    but nobody but root controls the folder."""
    uid, gid, root_groups = os.geteuid(), os.getegid(), os.getgroups()
    try:
        # The worker itself does this on the dpd-exec path: whatever fails,
        # it is root again with its own groups after.
        os.setgroups(groups)
        os.setegid(user.pw_gid)
        os.seteuid(user.pw_uid)
        try:
            return os.open(logs, LOG_FLAGS, 0o644)
        except PermissionError:
            pass
    finally:
        os.seteuid(uid)
        os.setegid(gid)
        os.setgroups(root_groups)
    if not trust.root_controlled(os.path.dirname(logs)):
        raise OSError(errno.EACCES, "%s: permission denied to user %s, and "
                      "a folder on the way is not root's alone"
                      % (logs, user.pw_name))
    return os.open(logs, LOG_FLAGS, 0o644)


def _log_error(logs, err):
    """What the report says of a failed open of ``logs``."""
    folder = os.path.dirname(logs)
    if err.errno == errno.ELOOP and os.path.islink(logs):
        return OSError(err.errno, "%s is a symbolic link (never followed)"
                       % logs)
    if err.errno == errno.ENOENT and not os.path.isdir(folder):
        return OSError(err.errno, "folder %s does not exist" % folder)
    return err


def _own_group():
    os.setpgid(0, 0)


def _change_dir(cwd):
    os.chdir("/")
    os.chdir(cwd)


def _become_user(user, groups):
    if os.geteuid() == 0:
        os.setgid(user.pw_gid)
        os.setgroups(groups)
        os.setuid(user.pw_uid)


def _redirect_stdio(null_fd, log_fd):
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)


def _close_other_fds(keep, program_nofile):
    low = 3
    for fd in sorted(fd for fd in keep if fd is not None):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, kernel.max_fd())
    if program_nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, program_nofile)


def _record(journal, line):
    if journal is not None and os.write(journal.fd, line) != len(line):
        raise OSError(errno.ENOSPC, "short write")


def _read_some(fd, deadline):
    """Read what is there; b"" at end of file, None past the deadline. poll,
    not select: the worker holds a pidfd per process, so this fd may be
    numbered past select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        # Look before giving up: in a burst, a launch is collected after
        # the ones before it, maybe past its own deadline, its report long
        # there (a pid to kill, or the exec's end of file).
        left = max(0.0, deadline - time.monotonic())
        if poller.poll(left * 1000):
            return os.read(fd, 4096)
        if left == 0:
            return None


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
