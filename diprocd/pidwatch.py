"""Knowing when a supervised pid ends, and how.

- A pidfd per pid, registered with the loop: the kernel wakes the worker
  the moment the process exits (milliseconds, no polling).
- Where the kernel has no pidfd, the pid's start time is checked every
  ``PID_POLL_INTERVAL`` seconds instead.
- ``reap()`` (on SIGCHLD) collects every dead child: the statuses of
  watched pids are kept for their exit report; orphans re-parented to the
  worker (it is a child subreaper) just go.

``on_exit(target, pid, kind, how)`` reports each end once; ``how`` is words
such as "exit status 1" or "killed by SIGKILL".
"""

import os
import select

from diprocd import kernel

PID_POLL_INTERVAL = 0.5
_POLL_KEY = "pidwatch.poll"


class PidWatch:
    def __init__(self, loop, on_exit, log):
        self.loop = loop
        self.on_exit = on_exit
        self.log = log
        self._said_polling = False
        self._by_fd = {}       # fd -> (target, pid, kind)
        self._fd_of_pid = {}   # pid -> fd
        self._polled = {}      # pid -> (target, kind, ticks): no pidfd
        self._reaped = {}      # pid -> how it ended (reaped on SIGCHLD)

    def watch(self, target, pid, kind):
        fd = self._fd_of_pid.get(pid)
        if fd is not None:
            # A daemon whose pid file names its launcher: one pid, one pidfd.
            self._by_fd[fd] = (target, pid, kind)
            return
        if pid in self._polled:
            self._polled[pid] = (target, kind, self._polled[pid][2])
            return
        try:
            fd = kernel.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone and reaped by someone else.
            self.on_exit(target, pid, kind, self._reaped.pop(
                pid, "status unknown"))
            return
        if fd is None:
            if not self._said_polling:
                self._said_polling = True
                self.log.info("no pidfd: checking supervised pids every "
                              "%.1fs", PID_POLL_INTERVAL)
            self._polled[pid] = (target, kind, kernel.start_ticks(pid))
            if self.loop.pending(_POLL_KEY) is None:
                self.loop.call_later(_POLL_KEY, PID_POLL_INTERVAL, self._poll)
            return
        self._by_fd[fd] = (target, pid, kind)
        self._fd_of_pid[pid] = fd
        self.loop.add_reader(fd, lambda: self._on_pidfd(fd))

    def unwatch(self, pid):
        self._polled.pop(pid, None)
        fd = self._fd_of_pid.pop(pid, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            del self._by_fd[fd]
            os.close(fd)

    def forget(self, pid):
        """A start that failed after its pid existed: drop its status."""
        self._reaped.pop(pid, None)

    def watched(self):
        return set(self._fd_of_pid) | set(self._polled)

    def _on_pidfd(self, fd):
        entry = self._by_fd.get(fd)
        if entry is None or not _readable(fd):
            # Unwatched earlier in this batch of events (its fd number may
            # even be a new process's pidfd by now): not an exit.
            return
        target, pid, kind = entry
        how = None
        try:
            result = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
            if result is not None:
                how = kernel.describe_waitid(result)
        except ChildProcessError:
            pass  # not our child (adopted), or already reaped on SIGCHLD
        if how is None:
            how = self._reaped.pop(pid, None) or (
                "status unknown (not the worker's child)")
        self.unwatch(pid)
        self.on_exit(target, pid, kind, how)

    def _poll(self):
        for pid, (target, kind, ticks) in list(self._polled.items()):
            if kernel.start_ticks(pid) != ticks:
                self._polled.pop(pid, None)
                self.on_exit(target, pid, kind, self._reaped.pop(
                    pid, "status unknown"))
        if self._polled:
            self.loop.call_later(_POLL_KEY, PID_POLL_INTERVAL, self._poll)

    def reap(self):
        """Reap every dead child; keep the statuses of watched ones."""
        watched = self.watched()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in watched:
                self._reaped[pid] = kernel.describe_wait_status(status)

    def close(self):
        for pid in list(self._fd_of_pid):
            self.unwatch(pid)


def _readable(fd):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
