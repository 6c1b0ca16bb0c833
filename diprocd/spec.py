"""ProcessSpec: one process definition, with every default in one place.

A spec is a frozen dataclass, so two specs compare equal exactly when the
worker would run the same thing: that equality *is* the reload diff.
"""

import dataclasses
import functools
import signal
import zlib

import simplejson as json

# Field name -> default, in the order the seed's README documents them.
# ``None`` means "derived when the file is loaded" (user, pid_file).
DEFAULTS = {
    "name": None,
    "run": None,
    "args": (),
    "user": None,
    "chroot": None,
    "env": (),
    "pid_file": None,
    "logs": "/dev/null",
    "cwd": "/",
    "write_pid": True,
    "daemon": False,
    "restart": True,
    "stop_signal": int(signal.SIGTERM),
    "stop_timeout": 10.0,
    "umask": 0o022,
    "depends": (),
}

REQUIRED = ("name", "run")


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """One supervised process, as the worker runs it (defaults resolved)."""

    name: str
    run: str
    args: tuple = DEFAULTS["args"]
    user: str = None
    chroot: str = None
    env: tuple = DEFAULTS["env"]  # sorted (key, value) pairs: hashable
    pid_file: str = None
    logs: str = DEFAULTS["logs"]
    cwd: str = DEFAULTS["cwd"]
    write_pid: bool = DEFAULTS["write_pid"]
    daemon: bool = DEFAULTS["daemon"]
    restart: bool = DEFAULTS["restart"]
    stop_signal: int = DEFAULTS["stop_signal"]
    stop_timeout: float = DEFAULTS["stop_timeout"]
    umask: int = DEFAULTS["umask"]
    depends: tuple = DEFAULTS["depends"]

    @property
    def env_dict(self):
        return dict(self.env)

    def to_json(self):
        """A JSON-ready dict of every field (the state file keeps it)."""
        # Not dataclasses.asdict: it deep-copies, ten times slower, and the
        # worker fingerprints every spec of a 500-process file at start.
        out = {field.name: getattr(self, field.name)
               for field in dataclasses.fields(self)}
        out["args"] = list(self.args)
        out["env"] = dict(self.env)
        out["depends"] = list(self.depends)
        out["stop_signal"] = signal.Signals(self.stop_signal).name
        out["umask"] = "0o%03o" % self.umask
        return out

    def fingerprint(self):
        """A short stable digest of the definition, to notice changes across
        worker restarts."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self):
        # cached_property writes the instance __dict__ directly, which a
        # frozen dataclass allows; it is not a field, so equality ignores it.
        # Two checksums, 64 bits: enough to notice a change, and zlib keeps
        # OpenSSL (hashlib) out of the worker, whose size every fork copies.
        data = json.dumps(self.to_json(), sort_keys=True).encode("utf-8")
        return "%08x%08x" % (zlib.crc32(data), zlib.adler32(data))
