"""Starting one process: ``launch(spec, ...)`` then ``Launch.wait()``.

Two ways, the same steps in the same order, the same report pipe and
errors; ``by_helper`` chooses, per spec:

- **dpd-exec** (``dpdexec``), whenever the worker found that small C
  program (lib/dpd-exec.c): the worker looks the user up (``Plan``) and
  opens the ``logs`` file as that user (step c below, ``_open_log``) itself,
  then ``posix_spawn``s dpd-exec (vfork-like: no copy of the worker, whose
  size a fork pays for) with setsid (a session and process group leader of
  its own, so step d is done), default signals and an empty mask (step a),
  stdin /dev/null and stdout/stderr the log (step j), the first cgroup
  folder as a descriptor when the process is to be born in it. dpd-exec
  then, with that folder, does step 2's birth itself (``clone3`` with
  ``CLONE_INTO_CGROUP``: its child writes nothing before dpd-exec wrote
  ``P<pid>`` and exited 0, as the intermediate does; the child calls setsid,
  step d again), and, in the process, steps b, e (the folder too where the
  clone3 failed), f, g, h, i, k, l, m in that order, with the same errors
  on the same pipe; it holds the journal's open file until its exec, as the
  fork path's child does (``ledger``). Without the birth in a cgroup, the
  process is dpd-exec itself, the worker's direct child: no double fork
  (the worker, a child subreaper, watches it by pidfd either way). Either
  way it leads its session, so a terminal it opens without O_NOCTTY becomes
  its controlling terminal, which the fork path's process cannot get.
  With a ``dpdexec.Server`` (the worker's, by default), the server is
  asked instead of a posix_spawn: it clones the process as the worker's
  own child, born in the first cgroup folder, and the same steps follow
  in the same code; where the server cannot take it, the posix_spawn.
- **the fork path**, below, where there is no dpd-exec (``$DIPROCD_EXEC=none``
  forces it):

1. The worker creates a close-on-exec report pipe and forks an
   intermediate child (``_launch_by_fork``).
2. The intermediate child calls ``setsid`` (a new session, no controlling
   terminal), forks the final child (with cgroup v2, born in its cgroup:
   ``kernel.fork_into_cgroup``), writes the final child's pid on the
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
   e. ``_join_cgroups``: writes its own pid to the ``cgroup.procs`` of its
      cgroups (``cgroup.Tree``: made by the worker before the fork) but
      the one it was born in, so every descendant it will have is inside
      from the start, whatever session or group it moves to; none where
      no hierarchy is writable;
   f. ``chroot`` (when set), then ``_change_dir``: ``chdir("/")`` and
      ``chdir(cwd)``, so a relative ``cwd`` resolves inside the chroot;
   g. ``_set_limits``: the open-files limit the worker was started with
      back, then each of ``limits`` (soft and hard), while still root:
      raising a hard limit takes root, so before the user changes; a limit
      the kernel refuses is a start error naming it;
   h. ``_become_user``: ``setgid``, ``setgroups`` (the user's groups, as
      ``initgroups`` would set them, looked up by the worker), ``setuid``
      (as root); a worker that is not root only runs processes as itself;
   i. ``umask``;
   j. ``_redirect_stdio``: stdin from ``/dev/null``, stdout and stderr
      appended to ``logs``;
   k. ``_close_other_fds``: every other descriptor up to the worker's own
      bound (the pipe closes itself on exec), whatever ``nofile`` is now;
   l. ``_record``: appends the journal line of step b to the worker's
      journal (the record a later worker adopts it by), so no program ever
      runs unrecorded, whenever the worker dies; a failed write stops here;
   m. ``execve`` with a clean environment (PATH, HOME, USER, LOGNAME, SHELL
      of the target user) overlaid with ``env``.
   Any failure writes ``E<step>: <reason>`` on the pipe and exits 127.
   Steps d-i are ``_confine``, shared with ``start_check``.
4. The worker reads the pipe to its end (``Launch.wait``): a successful exec
   closes it with no error, so a failure comes back as a SpawnError with its
   reason, not as a silent death. ``launch`` returns after step 1, so a
   burst of starts overlaps (see Worker._start_waiting).

``start_check(spec)`` runs a process's ``exec`` health check with the fork
path's steps (dpd-exec or not), but as a plain child of the worker (one fork, its own process group, no
journal), its output on a pipe (``health`` reads it, kills the group at
the timeout).
"""

import errno
import os
import resource
import select
import signal
import time

from diprocd import dpdexec, kernel, trust
from diprocd.config import Accounts
from diprocd.errors import SpawnError

# How long the worker waits for the final child to reach exec.
EXEC_TIMEOUT = 10.0

# The users of starts, looked up once a while (config.Accounts).
ACCOUNTS = Accounts()

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
    the fork path's intermediate child (reaped here), ``pid`` dpd-exec's:
    the process itself, or, where it says ``P<pid>`` (born in its cgroup),
    an intermediate reaped here too."""

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
        if self.pid is not None:
            if pid is not None:  # dpd-exec's child, born in its cgroup
                _reap(self.pid)  # dpd-exec, which exits once it said so
            elif error is not None:
                _reap(self.pid)  # dpd-exec, the worker's child, exits at once
            pid = pid or self.pid
        if pid is None:
            raise SpawnError(error or (
                "fork: the intermediate child failed"
                if self.middle_pid is not None else
                "%s server: it ended before starting the process"
                % dpdexec.NAME))
        if error is not None:
            failure = SpawnError(error)
            failure.pid = pid
            raise failure
        return pid


class Plan:
    """What the process needs, worked out by the worker before the fork or
    the posix_spawn (neither the fork path's child nor dpd-exec loads
    anything: no NSS, no JSON)."""

    def __init__(self, spec, journal, program_nofile, cgroups=(),
                 born_inside=False, argv=None):
        root = os.geteuid() == 0
        try:
            # The groups looked up here, not by initgroups() in every child:
            # the child would load the NSS machinery from scratch each time.
            self.user, self.groups = ACCOUNTS.lookup(spec.user, groups=root)
        except (KeyError, OverflowError, ValueError):
            raise SpawnError('user: unknown user "%s"' % spec.user)
        if not root and self.user.pw_uid != os.geteuid():
            raise SpawnError('user: cannot run as "%s": the worker is not '
                             'root' % spec.user)
        self.spec = spec
        kernel.prepare_default_hidden_signals()  # the child looks up nothing
        self.argv = list(argv) if argv else [spec.run] + list(spec.args)
        self.env = clean_environment(spec, self.user)
        self.journal = journal
        self.program_nofile = program_nofile
        self.cgroups = tuple(cgroups)
        # The first cgroup as a folder descriptor, to be born in it.
        self.cgroup_fd = None
        if born_inside and self.cgroups:
            try:
                self.cgroup_fd = os.open(self.cgroups[0], os.O_RDONLY
                                         | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as err:
                raise SpawnError("cgroup: %s: %s" % (self.cgroups[0],
                                                     err.strerror))
            kernel.prepare_fork_into_cgroup()
        # The worker's bound, now: a lower nofile in the child (step g)
        # must not hide the worker's descriptors from step k.
        self.max_fd = kernel.max_fd()
        # (what an error calls it: "nofile [256, 512]", RLIMIT_*, pair)
        self.limits = [("%s %s" % (name, _limit_words(*pair)),
                        getattr(resource, "RLIMIT_" + name.upper()), pair)
                       for name, pair in spec.limits]


def launch(spec, journal=None, program_nofile=None, cgroups=(),
           born_inside=False, helper=None, server=None):
    """Start ``spec`` and return a Launch at once; raise SpawnError for what
    fails before the process exists.

    ``journal`` (a ``ledger.JournalSlot``: an O_APPEND fd and the line to
    complete with the child's pid and start time) makes the process
    record itself before exec. ``program_nofile`` is the open-files limit the
    program gets (the worker raised its own). ``cgroups``: the folders the
    process joins (step e), born in the first one with ``born_inside``.
    ``helper`` is dpd-exec's path (``dpdexec.find``), or None for the fork
    path; ``server`` a ``dpdexec.Server`` of it, which starts the process
    where it can (else dpd-exec is started for it)."""
    plan = Plan(spec, journal, program_nofile, cgroups, born_inside)
    try:
        if by_helper(spec, helper):
            return _launch_by_helper(plan, helper, server)
        return _launch_by_fork(plan)
    finally:
        if plan.cgroup_fd is not None:  # the children have their own
            os.close(plan.cgroup_fd)


def by_helper(spec, helper):
    """Whether dpd-exec starts ``spec`` (else the fork path does): whenever
    it is there, as it does every step a spec asks for."""
    return helper is not None


def _launch_by_helper(plan, helper, server=None):
    """Open the log as the user, then have the dpd-exec server start the
    process, or posix_spawn dpd-exec where it cannot (module docstring)."""
    spec = plan.spec
    try:
        log_fd = _open_log(spec.logs, plan.user, plan.groups)
    except OSError as err:
        raise SpawnError("logs: %s" % _reason(err))
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                served = server is not None and server.start_process(
                    plan, log_fd, write_end)
            except OSError:
                served = False
            # Served: the server's child says its pid on the pipe.
            pid = None if served else dpdexec.start(helper, plan, log_fd,
                                                    write_end)
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
    middle, read_end, write_end = _fork_with_pipe()
    if middle == 0:
        _intermediate(plan, read_end, write_end)
    os.close(write_end)
    return Launch(plan.spec, middle, read_end)


def _fork_with_pipe():
    """(pid, read end, write end): a close-on-exec pipe, then a fork (pid
    0 in the child); SpawnError when the fork fails."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        return os.fork(), read_end, write_end
    except OSError as err:
        os.close(read_end)
        os.close(write_end)
        raise SpawnError("fork: %s" % err.strerror)


def _intermediate(plan, read_end, write_end):
    """Step 2; never returns."""
    try:
        os.close(read_end)
        os.setsid()
        final, born_inside = _fork_final(plan)
        if final == 0:
            _final_child(plan, write_end, born_inside)
        os.write(write_end, b"P%d\n" % final)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _fork_final(plan):
    """(os.fork()'s result, whether the child was born in its cgroup)."""
    if plan.cgroup_fd is not None:
        try:
            return kernel.fork_into_cgroup(plan.cgroup_fd), True
        except OSError:
            pass  # an older kernel: fork, then move (step e)
    return os.fork(), False


def _final_child(plan, report_fd, born_inside=False):
    """Step 3, a-m in order; never returns."""
    spec = plan.spec
    step = ["signals"]  # the step under way, for the report
    try:
        _reset_signals()
        step[0] = "journal"
        line = _journal_line(plan.journal)
        step[0] = "logs"
        null_fd, log_fd = _open_files(spec.logs, plan.user, plan.groups)
        _confine(plan, step,
                 plan.cgroups[1:] if born_inside else plan.cgroups)
        step[0] = "stdio"
        _redirect_stdio(null_fd, log_fd)
        step[0] = "close fds"
        _close_other_fds((report_fd, plan.journal and plan.journal.fd),
                         plan.max_fd)
        step[0] = "journal"
        _record(plan.journal, line)
        step[0] = "exec %s" % plan.argv[0]
        os.execve(plan.argv[0], plan.argv, plan.env)
    except BaseException as err:  # report, whatever it is
        _report_and_exit(report_fd, "E%s: " % step[0], err)


def _confine(plan, step, cgroups=()):
    """Steps d-i: own group, ``cgroups`` joined, chroot, working directory,
    limits, user, umask; ``step[0]`` names the one under way."""
    spec = plan.spec
    step[0] = "setpgid"
    _own_group()
    step[0] = "cgroup"
    _join_cgroups(cgroups)
    if spec.chroot:
        step[0] = "chroot %s" % spec.chroot
        os.chroot(spec.chroot)
    step[0] = "chdir %s" % spec.cwd
    _change_dir(spec.cwd)
    step[0] = "limits"
    _set_limits(plan.program_nofile, plan.limits)
    step[0] = "user %s" % spec.user
    _become_user(plan.user, plan.groups)
    step[0] = "umask"
    os.umask(spec.umask)


def _report_and_exit(fd, prefix, err):
    try:
        os.write(fd, ("%s%s" % (prefix, _reason(err))).encode("utf-8",
                                                             "replace"))
    finally:
        os._exit(127)


def start_check(spec, program_nofile=None):
    """Start ``spec``'s exec health check as a child of the worker, with
    the process's user, chroot, working directory, umask and environment
    (steps a, j, then d-i and k of a start, its limits too: no double
    fork, no cgroup, no journal, no ``logs``: a check is not supervised,
    not recorded, not adopted).
    Returns (pid, fd): the fd (non-blocking) reads its stdout and stderr,
    and a failure before exec (``cannot <step>: <reason>``, exit 127).
    Raise SpawnError for what fails before the fork."""
    plan = Plan(spec, None, program_nofile, argv=spec.check.target)
    pid, read_end, write_end = _fork_with_pipe()
    if pid == 0:
        step = ["signals"]
        try:
            os.close(read_end)
            _reset_signals()
            step[0] = "stdio"  # first: a failure is reported on the pipe
            _redirect_stdio(os.open("/dev/null", os.O_RDONLY), write_end)
            _confine(plan, step)
            step[0] = "close fds"
            _close_other_fds((), plan.max_fd)
            step[0] = "exec %s" % plan.argv[0]
            os.execve(plan.argv[0], plan.argv, plan.env)
        except BaseException as err:
            _report_and_exit(2, "cannot %s: " % step[0], err)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return pid, read_end


def _reason(err):
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _reset_signals():
    for signum in range(1, signal.NSIG):
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):  # glibc's own two: below
            pass
    kernel.default_hidden_signals()
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


def _join_cgroups(folders):
    pid = b"%d" % os.getpid()
    for folder in folders:
        path = os.path.join(folder, "cgroup.procs")
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError as err:
            raise OSError(err.errno, "%s: %s" % (path, err.strerror))


def _change_dir(cwd):
    os.chdir("/")
    os.chdir(cwd)


def _set_limits(program_nofile, limits):
    """The worker's own nofile back, then ``limits`` (``Plan.limits``): the
    spec's nofile wins."""
    if program_nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, program_nofile)
    for label, which, pair in limits:
        try:
            resource.setrlimit(which, pair)
        except (OSError, ValueError) as err:
            raise OSError(getattr(err, "errno", None) or errno.EINVAL,
                          "%s: %s" % (label, _reason(err)))


def _limit_words(soft, hard):
    def one(value):
        return "unlimited" if value == resource.RLIM_INFINITY else str(value)
    return "[%s, %s]" % (one(soft), one(hard))


def _become_user(user, groups):
    if os.geteuid() == 0:
        os.setgid(user.pw_gid)
        os.setgroups(groups)
        os.setuid(user.pw_uid)


def _redirect_stdio(null_fd, log_fd):
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)


def _close_other_fds(keep, max_fd):
    low = 3
    for fd in sorted(fd for fd in keep if fd is not None):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max_fd)


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
    head, nul, tail = text.partition("\0")
    if nul:  # the dpd-exec server's "\0P<pid>", before or after the error
        line, _, rest = tail.partition("\n")
        pid = int(line[1:])
        text = head + rest
    elif text.startswith("P"):
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
