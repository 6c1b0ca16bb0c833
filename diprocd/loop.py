"""The event loop the three daemons share: readers, named timers, signals
and watched files, in one thread, around one poller.

A daemon registers what it waits for and the loop does the waiting:

- ``add_reader(obj, callback)``: ``callback()`` when ``obj`` (a descriptor,
  or for the ZeroMQ daemons a socket) is readable; ``add_writer`` the
  same when it is writable (a non-blocking connect done: the worker's
  health checks); one of the two at a time for one descriptor;
- ``call_at(key, when, callback)``: a one-shot timer on the monotonic
  clock, replaced when set again under the same key; the earliest timer
  is the poll timeout, so an idle daemon sleeps in the kernel;
- ``handle_signals({signum: callback})``: handlers that only record (the
  wake-up pipe of ``daemon.SignalPipe``); the loop runs the callbacks;
- ``watch_file(path, callback)``: ``callback()`` once a change of the file
  has settled (inotify on its folder, else a cheap stat poll), at once
  when the file is known whole (renamed onto, or its writer closed it);
- ``every_turn(callback)``: ``callback(now)`` before each wait, returning
  the daemon's own next deadline or None (the worker ticks its processes
  and writes its status there).

The poller is pluggable: ``EpollPoller`` here (stdlib: the worker imports no
messaging library); the master and the client pass ``bus.ZmqPoller``.

An unexpected exception in a callback is logged with its traceback and the
loop goes on: a supervisor that dies supervises nothing. A storm of them
(``ERROR_STORM``: a bug that fires at every turn) still ends the daemon, so
that cron starts a fresh one rather than it spinning.
"""

import collections
import logging
import select
import time

from diprocd.daemon import SignalPipe
from diprocd.watch import COMPLETE, PARTIAL, FileWatch

# Let a burst of writes to a watched file settle before reading it: an
# in-place write may come in several chunks. A rename onto the file, or its
# writer's close, needs no wait (watch.COMPLETE).
FILE_SETTLE = 0.01
# More than this many unexpected errors within this many seconds: give up.
ERROR_STORM = (100, 10.0)


class ErrorStorm(Exception):
    """Callbacks keep failing: the daemon exits rather than spin."""


class EpollPoller:
    """Descriptors only, any number of them (no select(): its 1024 limit
    is below the worker's pidfd count)."""

    def __init__(self):
        self._epoll = select.epoll()

    def register(self, fd, writable=False):
        self._epoll.register(fd, select.EPOLLOUT if writable
                             else select.EPOLLIN)

    def unregister(self, fd):
        self._epoll.unregister(fd)

    def poll(self, timeout):
        """Ready descriptors within ``timeout`` seconds (None: no limit)."""
        events = self._epoll.poll(-1 if timeout is None else timeout)
        return [fd for fd, _ in events]

    def close(self):
        self._epoll.close()


class Loop:
    """See the module docstring."""

    def __init__(self, poller=None, clock=time.monotonic, log=None):
        self.poller = poller or EpollPoller()
        self.clock = clock
        self.log = log or logging.getLogger("diprocd")
        self.errors = 0
        self._recent_errors = collections.deque()
        self._readers = {}
        self._timers = {}     # key -> (when, callback)
        self._turn_hooks = []
        self._signals = None
        self._watches = []
        self.running = True  # until stop()

    # --- what to wait for --------------------------------------------------
    def add_reader(self, obj, callback):
        self.poller.register(obj)
        self._readers[obj] = callback

    def remove_reader(self, obj):
        if self._readers.pop(obj, None) is not None:
            self.poller.unregister(obj)

    def add_writer(self, obj, callback):
        """``callback()`` once ``obj`` is writable (or in error); removed
        with ``remove_reader``: a descriptor waits for one thing at once."""
        self.poller.register(obj, writable=True)
        self._readers[obj] = callback

    remove_writer = remove_reader

    def call_at(self, key, when, callback):
        self._timers[key] = (when, callback)

    def call_later(self, key, delay, callback):
        self.call_at(key, self.clock() + delay, callback)

    def cancel(self, key):
        self._timers.pop(key, None)

    def pending(self, key):
        """When timer ``key`` fires, or None."""
        entry = self._timers.get(key)
        return entry[0] if entry else None

    def every_turn(self, callback):
        self._turn_hooks.append(callback)

    def handle_signals(self, handlers):
        """Install record-only handlers for ``handlers``' signals."""
        self._signals = SignalPipe(tuple(handlers))

        def dispatch():
            for signum in self._signals.drain():
                handler = handlers.get(signum)
                if handler is not None:
                    self._call(handler, signum)
        self.add_reader(self._signals.fileno(), dispatch)

    def watch_file(self, path, callback, settle=FILE_SETTLE):
        """Call ``callback()`` ``settle`` seconds after ``path`` changed
        (later changes within that time are folded in), or in this turn
        when inotify says the file is whole. Returns the watch, for
        ``unwatch_file``."""
        watch = FileWatch(path)
        key = ("file", id(watch))

        def changed(how=PARTIAL):
            if how == COMPLETE:
                self.call_at(key, self.clock(), callback)
            elif self.pending(key) is None:
                self.call_later(key, settle, callback)
        if watch.fileno() is not None:
            def events():
                how = watch.read_events()
                if how is not None:
                    changed(how)
            self.add_reader(watch.fileno(), events)
        else:
            def poll():
                self.call_later(("stat", id(watch)), watch.poll_interval,
                                poll)
                if watch.changed():
                    changed()
            self.call_later(("stat", id(watch)), watch.poll_interval, poll)
        self._watches.append(watch)
        return watch

    def unwatch_file(self, watch):
        if watch.fileno() is not None:
            self.remove_reader(watch.fileno())
        self.cancel(("file", id(watch)))
        self.cancel(("stat", id(watch)))
        self._watches.remove(watch)
        watch.close()

    # --- running -----------------------------------------------------------
    def run(self):
        """Turn until ``stop()``."""
        while self.running:
            self.turn()

    def turn(self):
        """Run the turn hooks, wait for the first event or deadline, then
        run the readers that are ready and the timers that are due."""
        deadlines = []
        for hook in self._turn_hooks:
            due = self._call(hook, self.clock())
            if due is not None:
                deadlines.append(due)
        if not self.running:
            return
        deadlines.extend(when for when, _ in self._timers.values())
        timeout = None
        if deadlines:
            timeout = max(0.0, min(deadlines) - self.clock())
        for obj in self.poller.poll(timeout):
            callback = self._readers.get(obj)
            if callback is not None:  # removed earlier in this batch
                self._call(callback)
        now = self.clock()
        for key, (when, callback) in sorted(self._timers.items(),
                                            key=lambda item: item[1][0]):
            if when <= now and self._timers.get(key, (None,))[0] == when:
                del self._timers[key]
                self._call(callback)

    def _call(self, callback, *args):
        try:
            return callback(*args)
        except Exception:
            self.errors += 1
            self.log.exception("internal error in %s (the loop goes on)",
                               getattr(callback, "__qualname__", callback))
            now = self.clock()
            self._recent_errors.append(now)
            limit, window = ERROR_STORM
            while self._recent_errors[0] < now - window:
                self._recent_errors.popleft()
            if len(self._recent_errors) > limit:
                raise ErrorStorm("%d internal errors within %gs"
                                 % (len(self._recent_errors), window))
            return None

    def stop(self):
        self.running = False

    def close(self):
        for watch in list(self._watches):
            self.unwatch_file(watch)
        if self._signals is not None:
            self.remove_reader(self._signals.fileno())
            self._signals.close()
            self._signals = None
        self.poller.close()
