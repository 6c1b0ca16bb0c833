"""The restart policy's arithmetic: how long a process waits before its
next start, and when it is given up. Pure: no clock, no I/O (``Process``
asks it, with its own clock; a fake random source in unit tests).

A *quick failure* is a start that failed (before exec, or a daemon
without its pid file) or an exit the worker did not ask for before the
process ran ``restart_delay_reset`` seconds. Quick failures in a row are
counted; an exit after a longer run starts the count over.

- After the k-th quick failure in a row the delay is
  ``restart_delay * 2**(k-1)``, at most ``restart_delay_max``; after an
  exit that ended a longer run it is ``restart_delay``.
- Each delay is then multiplied by a random factor from 0.9 to 1.1
  (``JITTER``) and capped at ``restart_delay_max`` again, so that a fleet
  whose programs failed together does not restart in step.
- ``restart_delay: 0`` (the default) restarts at once, as the seed did,
  until the 5-starts-within-60-s rule (``process.StartLimiter``) stops a
  start. From then on, until the count starts over, a ``restart_delay``
  below ``LIMIT_FLOOR`` (1 s) counts as that: after the 5th failure in a
  row 16 s (the rule's minute is longer), then 32, 64 ... s: a crash loop
  settles at one start per ``restart_delay_max``.
- ``give_up_after: N`` gives the process up at its N-th quick failure in a
  row; null (the default) never does.
"""

import random

JITTER = 0.1        # each delay is multiplied by 1 - JITTER .. 1 + JITTER
LIMIT_FLOOR = 1.0   # seconds: the base delay once the start limit was hit
_MAX_DOUBLINGS = 64  # 2**64 s is past any restart_delay_max


class Backoff:
    """The quick failures in a row of one process and what they imply."""

    def __init__(self, rand=random.random):
        self.rand = rand  # () -> a float in [0, 1)
        self.failures = 0
        self.limited = False  # the start limit stopped a start meanwhile

    def reset(self):
        """Start over: a long run, a new definition, SIGHUP, dpdctl restart."""
        self.failures = 0
        self.limited = False

    def ended(self, spec, ran_for):
        """The process ended after ``ran_for`` seconds (None: a start that
        failed): count a quick failure, or start over after a long run."""
        if ran_for is not None and ran_for >= spec.restart_delay_reset:
            self.reset()
        else:
            self.failures += 1

    def exhausted(self, spec):
        """``give_up_after`` quick failures in a row happened."""
        return spec.give_up_after is not None \
            and self.failures >= spec.give_up_after

    def delay(self, spec):
        """Seconds to wait before the next start (jittered, capped)."""
        base = spec.restart_delay
        if self.limited:
            base = max(base, LIMIT_FLOOR)
        if base <= 0:
            return 0.0
        doublings = min(max(0, self.failures - 1), _MAX_DOUBLINGS)
        raw = min(spec.restart_delay_max, base * 2.0 ** doublings)
        factor = 1 + JITTER * (2 * self.rand() - 1)
        return min(spec.restart_delay_max, raw * factor)
