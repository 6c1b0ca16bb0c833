"""The exception types of diprocd.

Every error a user can meet is one of these, with a message that names where
(file, process, field) and what went wrong.
"""


class DiprocdError(Exception):
    """Base class of every diprocd error."""


class ConfigError(DiprocdError):
    """A configuration file is unreadable or invalid.

    ``problems`` lists every problem found, each a complete message; ``str()``
    joins them one per line. ``warnings`` are those found on the way, so
    that ``--check`` can show them beside the problems.
    """

    def __init__(self, problems, warnings=()):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


class SpawnError(DiprocdError):
    """A process could not be started (fork, chroot, setuid, exec...)."""


class ProtocolError(DiprocdError):
    """A message on the master/client channel is malformed or foreign."""


class AlreadyRunning(DiprocdError):
    """Another instance holds the daemon's pid file lock."""

    def __init__(self, pid_file, pid):
        self.pid_file = pid_file
        self.pid = pid
        super().__init__("already running (pid %s)" % (pid if pid else "unknown"))
