"""The fields of a process definition, once, and ProcessSpec.

``FIELDS`` is the one table of the process fields: name, type, doc line,
default. The validator (``config.PROC_FIELDS``), ``ProcessSpec`` and, through
``schema.py``, the README's and the man page's field tables and the JSON
Schemas are made from it.

A spec is a frozen dataclass, so two specs compare equal exactly when the
worker would run the same thing: that equality *is* the reload diff.
"""

import dataclasses
import functools
import signal
import zlib

import simplejson as json


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a process definition: what the validator checks, the
    spec holds, and the docs and the JSON Schemas say (``schema.py``
    generates those from FIELDS)."""

    name: str
    # What it accepts: a key of config.FIELD_TYPES, whose check turns the
    # file's value into the spec's.
    type: str
    doc: str  # one line of Markdown (only `code`), for the field tables
    default: object = None  # the spec's value when the field is absent
    # The default in words, when it is not a value (None: the value, or
    # "required" for a required field).
    default_doc: str = None
    required: bool = False
    null_is_default: bool = False  # null stands for the default
    # Added after the seed: at its default it is left out of the
    # fingerprint, so that a definition that does not use it keeps the
    # fingerprint an older worker recorded, and a worker upgraded to this
    # field adopts what the last one started instead of restarting it.
    added_later: bool = False


# The fields, in the order the seed's README documents them.
FIELDS = (
    Field("name", "name", "unique name; no `/`, not `.` nor `..`, at most "
          "200 bytes (it names the default pid file)", required=True),
    Field("run", "path", "the program, an absolute path (inside the chroot)",
          required=True),
    Field("args", "strings", "list of arguments", ()),
    Field("user", "user", "user name or uid to run as", None,
          "`nobody` when the worker is root, else the worker's own user",
          null_is_default=True),
    Field("chroot", "normal path", "folder to chroot into", None, "none",
          null_is_default=True),
    Field("env", "environment", "variables added to a clean environment "
          "(PATH, HOME, USER, LOGNAME, SHELL of the user)", ()),
    Field("pid_file", "normal path", "where the pid is written (replaced "
          "atomically; a symlink there is replaced, never followed)", None,
          "`<name>.pid` beside the worker's pid file", null_is_default=True),
    Field("logs", "normal path", "stdout and stderr are appended there "
          "(opened before the chroot with the user's rights, never through "
          "a symlink at its name, in a folder that must exist: see \"File "
          "safety\")", "/dev/null", null_is_default=True),
    Field("cwd", "text", "working directory; a relative path resolves "
          "inside the chroot", "/"),
    Field("write_pid", "boolean", "the worker writes `pid_file` (set "
          "`false` if the program does)", True),
    Field("daemon", "boolean", "the program forks to the background; "
          "requires `write_pid: false` and a `pid_file`, which the worker "
          "waits for (10 s at most) and whose pid it supervises", False),
    Field("restart", "boolean", "start it again when it dies, after "
          "`restart_delay`; never more than 5 starts within any 60 s: a "
          "start beyond that waits (`backoff`)", True),
    Field("restart_delay", "timeout", "seconds before a restart, doubled "
          "for each quick failure in a row (a failed start, or an exit "
          "before `restart_delay_reset`) up to `restart_delay_max`, each "
          "made up to 10 % longer or shorter at random; `0`: at once, "
          "until the start limit holds it back", 0.0, added_later=True),
    Field("restart_delay_max", "timeout", "the longest delay before a "
          "restart; also caps `restart_delay`", 300.0, added_later=True),
    Field("restart_delay_reset", "timeout", "seconds of running after "
          "which an exit is no quick failure: the delay starts over", 60.0,
          added_later=True),
    Field("give_up_after", "count", "quick failures in a row after which "
          "it is `given-up` (until a new definition, `SIGHUP`, `dpdctl "
          "restart` or a worker restart)", None, "never",
          null_is_default=True, added_later=True),
    Field("stop_signal", "signal", "signal sent to the process group to "
          "stop it (`\"TERM\"`, `\"SIGINT\"`, `1`...)", int(signal.SIGTERM)),
    Field("stop_timeout", "timeout", "seconds before `SIGKILL`", 10.0),
    Field("umask", "umask", "the file mode mask, an octal string or a "
          "number", 0o022),
    Field("depends", "names", "names that must be running before this one "
          "starts; stopped in reverse order when removed together", ()),
)

# Field name -> the spec's default (``None`` for user and pid_file: derived
# when the file is loaded, on the worker's machine).
DEFAULTS = {field.name: field.default for field in FIELDS}
REQUIRED = tuple(field.name for field in FIELDS if field.required)
ADDED_LATER = tuple(field for field in FIELDS if field.added_later)


def _fields_of_the_table(cls):
    """Declare FIELDS on ``cls`` for @dataclass: one attribute each, its
    default unless required."""
    cls.__annotations__ = {field.name: object for field in FIELDS}
    for field in FIELDS:
        if not field.required:
            setattr(cls, field.name, field.default)
    return cls


@dataclasses.dataclass(frozen=True)
@_fields_of_the_table
class ProcessSpec:
    """One supervised process, as the worker runs it (defaults resolved):
    one attribute per field of FIELDS. ``env`` holds sorted (key, value)
    pairs and the lists are tuples, so that a spec is hashable."""

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
        worker restarts (and upgrades: see ``Field.added_later``)."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self):
        # cached_property writes the instance __dict__ directly, which a
        # frozen dataclass allows; it is not a field, so equality ignores it.
        # Two checksums, 64 bits: enough to notice a change, and zlib keeps
        # OpenSSL (hashlib) out of the worker, whose size every fork copies.
        fields = self.to_json()
        for field in ADDED_LATER:
            if getattr(self, field.name) == field.default:
                del fields[field.name]
        data = json.dumps(fields, sort_keys=True).encode("utf-8")
        return "%08x%08x" % (zlib.crc32(data), zlib.adler32(data))
