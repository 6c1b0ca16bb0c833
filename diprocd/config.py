"""Reading and validating diprocd's three JSON files.

One module for the three daemons' files and for the process lists in them:

- ``load_worker_config``, ``load_master_config``, ``load_client_config``
  read a file into a ``WorkerConfig``, ``MasterConfig`` or ``ClientConfig``
  (one base, ``DaemonConfig``) or raise ConfigError with every problem,
  an unsafe file (``trust``: writable or owned by others) among them;
- each file's top-level keys are checked from one table per file
  (``WORKER_KEYS``, ``MASTER_KEYS``, ``CLIENT_KEYS``), and a process's
  fields from the one table of them, ``spec.FIELDS`` (``PROC_FIELDS``: a
  check for each field's type, ``FIELD_TYPES``), with the same small checks
  (absolute path, seconds, endpoint, ...);
- ``validate_procs`` checks a list of process definitions the same way for
  the worker, the client and the master.

Every message names the file (and node), the process and the field.
"""

import dataclasses
import functools
import ipaddress
import os
import pwd
import re
import signal
import socket
import time
import zlib

import simplejson as json

from diprocd import jsonin, keys, protocol, trust
from diprocd.daemon import beside_pid_file
from diprocd.watch import file_signature
from diprocd.errors import ConfigError, ProtocolError
from diprocd.spec import (DEFAULTS, FIELDS, LIMIT_NAMES, REQUIRED, UNLIMITED,
                          CheckSpec, ProcessSpec)

# The largest configuration file we agree to parse (a sanity bound).
MAX_FILE_BYTES = 16 * 1024 * 1024

# A ZeroMQ endpoint, as the master binds it and the client connects to it
# (also the schema's pattern: "$(?!\n)", see the small checks below).
ENDPOINT_PATTERN = r"^(tcp|ipc|inproc|pgm|epgm|ws|wss)://\S+$(?!\n)"
ENDPOINT_RE = re.compile(ENDPOINT_PATTERN)

# A process name becomes a file name (its default pid file): a bound.
MAX_NAME_BYTES = 200

DEFAULT_HEARTBEAT = 15.0
DEFAULT_SILENT_AFTER = 15.0
DEFAULT_STATUS_INTERVAL = 5.0


class Invalid(ValueError):
    """One value is wrong; the message says why, the caller says where."""


# --- reading ------------------------------------------------------------------

def read_json_file(path):
    """Return the parsed JSON object in ``path`` or raise ConfigError."""
    return parse_json_text(read_file_bytes(path), path)


def read_file_bytes(path, check=False, owners=()):
    """The bytes of a config file (bounded), or raise ConfigError. With
    ``check``, a daemon's own CONFIG: refused unless the file read (its
    fstat) passes ``trust``'s rules, ``owners`` (uids) trusted besides root
    and the daemon's user."""
    try:
        with open(path, "rb") as handle:
            if check:
                trust.check_opened(handle.fileno(), path, "config",
                                   owners=owners)
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError("%s: cannot read: %s" % (path, err.strerror or err))
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError("%s: larger than %d bytes" % (path, MAX_FILE_BYTES))
    return data


def parse_json_text(data, where):
    """Parse bytes or text as a JSON object (``jsonin``: what the daemons
    cannot carry is refused there); errors name ``where``."""
    obj = jsonin.loads(data, where, ConfigError, MAX_FILE_BYTES)
    if not isinstance(obj, dict):
        raise ConfigError("%s: must be a JSON object, got %s"
                          % (where, _type_name(obj)))
    return obj


# --- the small checks, shared by every table ------------------------------------
#
# Each carries, as ``check.schema``, the JSON Schema of the values it
# accepts: schema.py builds the three files' schemas from them, and
# tests/test_schema.py checks that a check and its schema agree. Patterns are
# written to mean the same to Python's ``re`` (jsonschema) and to ECMA-262
# (editors): ``$(?!\n)`` is the end, where Python's ``$`` alone would let a
# trailing newline through.

NOT_NUL = "^[^\\u0000]*$"  # a string without NUL (the class takes \n)


def accepts(schema):
    """Attach ``schema`` to the check it decorates."""
    def attach(check):
        check.schema = schema
        return check
    return attach


@accepts({"title": "absolute path", "type": "string",
          "pattern": "^/[^\\u0000]*$"})
def absolute_path(value):
    if not isinstance(value, str) or not os.path.isabs(value):
        raise Invalid("must be an absolute path, got %s" % json.dumps(value))
    _no_nul(value)
    return value


def _no_nul(text):
    if "\0" in text:
        raise Invalid("must not contain a NUL byte, got %s" % json.dumps(text))


@accepts(absolute_path.schema)
def normal_path(value):
    return os.path.normpath(absolute_path(value))


def seconds(low, high):
    @accepts({"title": "seconds", "type": "number", "minimum": low,
              "maximum": high})
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise Invalid("must be a number of seconds (%g to %g), got %s"
                          % (low, high, json.dumps(value)))
        return float(value)
    return check


def count(low, high):
    @accepts({"title": "count", "type": "integer", "minimum": low,
              "maximum": high})
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) \
                or not low <= value <= high:
            raise Invalid("must be a whole number (%d to %d), got %s"
                          % (low, high, json.dumps(value)))
        return value
    return check


@accepts({"title": "ZeroMQ endpoint", "type": "string",
          "pattern": ENDPOINT_PATTERN})
def endpoint(value):
    if not isinstance(value, str) or not ENDPOINT_RE.match(value):
        raise Invalid('must be a ZeroMQ endpoint such as '
                      '"tcp://10.0.0.1:5555", got %s' % json.dumps(value))
    return value


# dpd-masterd's HTTP listener: an IPv4 address or host name, or an IPv6
# address in brackets, and a port (1 to 65535).
HTTP_LISTEN_PATTERN = (
    r"^([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):"
    r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
    r"|655[0-2][0-9]|6553[0-5])$(?!\n)")
HTTP_LISTEN_RE = re.compile(HTTP_LISTEN_PATTERN)


@accepts({"title": "HOST:PORT", "type": "string",
          "pattern": HTTP_LISTEN_PATTERN})
def host_port(value):
    if not isinstance(value, str) or not HTTP_LISTEN_RE.match(value):
        raise Invalid('must be "HOST:PORT" such as "127.0.0.1:9556" or '
                      '"[::1]:9556", got %s' % json.dumps(value))
    return value


def split_host_port(value):
    """``"[::1]:9556"`` -> ``("::1", 9556)`` (a checked ``host_port``)."""
    host, port = value.rsplit(":", 1)
    return host.strip("[]"), int(port)


# A health check's host: an IPv4 address, an IPv6 address in brackets, or
# "localhost" (127.0.0.1); never a name to resolve, which could block the
# worker's loop on DNS (README, "Health checks").
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CHECK_HOST = r"(%s(\.%s){3}|\[[0-9A-Fa-f:.]+\]|localhost)" % (_OCTET, _OCTET)
_PORT = (r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
         r"|655[0-2][0-9]|6553[0-5])")
CHECK_TCP_PATTERN = r"^%s:%s$(?!\n)" % (_CHECK_HOST, _PORT)
CHECK_TCP_RE = re.compile(CHECK_TCP_PATTERN)
# http:// only; the path, if any, printable ASCII without spaces.
CHECK_HTTP_PATTERN = r"^http://%s(:%s)?(/[!-~]*)?$(?!\n)" % (_CHECK_HOST,
                                                              _PORT)
CHECK_HTTP_RE = re.compile(CHECK_HTTP_PATTERN)
CHECK_KINDS = ("exec", "tcp", "http")
# key -> (low, high) of a check's numbers (seconds; failures: a count).
CHECK_NUMBERS = {"interval": (0.01, 86400), "timeout": (0.01, 3600),
                 "failures": (1, 1000), "grace": (0, 86400)}


def _check_number(key, value):
    low, high = CHECK_NUMBERS[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "failures":
        if not number or not low <= value <= high or value != int(value):
            raise Invalid('"failures": must be a whole number from %d to %d,'
                          ' got %s' % (low, high, json.dumps(value)))
        return int(value)
    if not number or not low <= value <= high:
        raise Invalid('"%s": must be a number of seconds (%g to %g), got %s'
                      % (key, low, high, json.dumps(value)))
    return float(value)


def _check_target(kind, value):
    if kind == "exec":
        if not isinstance(value, list) or not value or not all(
                isinstance(item, str) and "\0" not in item for item in value) \
                or not value[0].startswith("/"):
            raise Invalid('"exec": must be a list of strings, the first an '
                          'absolute path (inside the chroot), got %s'
                          % json.dumps(value))
        return tuple(value)
    if kind == "tcp":
        if not isinstance(value, str) or not CHECK_TCP_RE.match(value):
            raise Invalid('"tcp": must be "ADDRESS:PORT" such as '
                          '"127.0.0.1:80" or "[::1]:80" (an address or '
                          'localhost, not a name), got %s' % json.dumps(value))
        return value
    if isinstance(value, str) and value[:8].lower() == "https://":
        raise Invalid('"http": https is not supported (the worker carries '
                      'no TLS library): check a plain http:// port, or run '
                      'a client in an "exec" check, got %s' % json.dumps(value))
    if not isinstance(value, str) or not CHECK_HTTP_RE.match(value):
        raise Invalid('"http": must be a URL such as '
                      '"http://127.0.0.1:8080/health" (an address or '
                      'localhost, not a name), got %s' % json.dumps(value))
    return value


@accepts({"title": "health check", "type": "object",
          "properties": {
              "exec": {"type": "array", "minItems": 1,
                       "prefixItems": [absolute_path.schema],
                       "items": {"type": "string", "pattern": NOT_NUL}},
              "tcp": {"type": "string", "pattern": CHECK_TCP_PATTERN},
              "http": {"type": "string", "pattern": CHECK_HTTP_PATTERN},
              "interval": {"type": "number", "minimum": 0.01,
                           "maximum": 86400},
              "timeout": {"type": "number", "minimum": 0.01,
                          "maximum": 3600},
              "failures": {"type": "integer", "minimum": 1, "maximum": 1000},
              "grace": {"type": "number", "minimum": 0, "maximum": 86400}},
          "additionalProperties": False,
          "oneOf": [{"required": [kind]} for kind in CHECK_KINDS]})
def health_check(value):
    """``{"tcp": "127.0.0.1:80", "interval": 5}`` -> a spec.CheckSpec."""
    if not isinstance(value, dict):
        raise Invalid('must be an object such as {"tcp": "127.0.0.1:80"}, '
                      'got %s' % _type_name(value))
    known = CHECK_KINDS + tuple(CHECK_NUMBERS)
    for key in value:
        if key not in known:
            raise Invalid('unknown key %s (one of %s)' % (
                json.dumps(key), ", ".join(known)))
    kinds = [kind for kind in CHECK_KINDS if kind in value]
    if len(kinds) != 1:
        raise Invalid('needs exactly one of "exec", "tcp" and "http", got %s'
                      % (" and ".join('"%s"' % k for k in kinds) or "none"))
    numbers = {key: _check_number(key, value[key]) for key in CHECK_NUMBERS
               if key in value}
    return CheckSpec(kinds[0], _check_target(kinds[0], value[kinds[0]]),
                     **numbers)


@accepts({"title": "boolean", "type": "boolean"})
def boolean(value):
    if not isinstance(value, bool):
        raise Invalid("must be true or false, got %s" % json.dumps(value))
    return value


def string_list(why, title="list of strings"):
    @accepts({"title": title, "type": "array",
              "items": {"type": "string", "pattern": NOT_NUL}})
    def check(value):
        if not isinstance(value, list) or not all(isinstance(v, str)
                                                  for v in value):
            raise Invalid(why)
        for item in value:
            _no_nul(item)
        return tuple(value)
    return check


@accepts({"title": "path", "type": "string", "minLength": 1,
          "pattern": NOT_NUL})
def non_empty_string(value):
    if not isinstance(value, str) or not value:
        raise Invalid("must be a non-empty string")
    _no_nul(value)
    return value


@accepts({"title": "object of strings", "type": "object",
          "propertyNames": {"pattern": "^[^=\\u0000]+$"},
          "additionalProperties": {"type": "string", "pattern": NOT_NUL}})
def environment(value):
    if not isinstance(value, dict) or not all(isinstance(v, str)
                                              for v in value.values()):
        raise Invalid("must be an object of string values")
    if any("=" in k or "\0" in k or not k for k in value):
        raise Invalid("variable names must be non-empty, without '='")
    if any("\0" in text for text in value.values()):
        # Not shown: an env value may be a secret, and messages reach logs,
        # dpdctl status and the dashboard.
        raise Invalid("values must not contain a NUL byte")
    return tuple(sorted(value.items()))


@accepts({"title": "user name or uid", "anyOf": [
    {"type": "string", "minLength": 1, "pattern": NOT_NUL},
    {"type": "integer", "minimum": 0}]})
def user_name(value):
    if isinstance(value, bool) or not isinstance(value, (str, int)) \
            or value == "" or (isinstance(value, int) and value < 0):
        raise Invalid("must be a user name or a uid")
    if isinstance(value, str):
        _no_nul(value)
    return str(value)


def _any_case(word):
    """A pattern matching ``word`` in any case, ASCII letters only."""
    return "".join("[%s%s]" % (c.upper(), c.lower()) if c.isalpha() else c
                   for c in word)


@accepts({"title": "signal name or number", "anyOf": [
    {"type": "string", "pattern": "^(%s)?(%s)$(?!\\n)" % (
        _any_case("SIG"), "|".join(_any_case(name[3:]) for name in sorted(
            signal.Signals.__members__)))},
    {"type": "integer", "enum": sorted({int(s) for s in signal.Signals})}]})
def stop_signal(value):
    try:
        return parse_signal(value)
    except (ValueError, KeyError):
        raise Invalid("unknown signal %s" % json.dumps(value))


# A umask as a string: octal digits, "0o" before them or not, at most 0o777
# (the schema's pattern too: no sign, space or "_", which int() would take).
UMASK_PATTERN = r"^(0[oO])?0*[0-7]{1,3}$(?!\n)"
UMASK_RE = re.compile(UMASK_PATTERN)


@accepts({"title": "octal string or number", "anyOf": [
    {"type": "string", "pattern": UMASK_PATTERN},
    {"type": "integer", "minimum": 0, "maximum": 0o777}]})
def umask(value):
    try:
        return parse_umask(value)
    except (ValueError, TypeError):
        raise Invalid('must be an octal string such as "022", got %s'
                      % json.dumps(value))


@accepts({"title": "node name (%H: the hostname, %%: a %)",
          "type": "string", "minLength": 1, "pattern": NOT_NUL})
def node_name(value):
    if not isinstance(value, str):
        raise Invalid("must be a string, got %s" % json.dumps(value))
    try:
        return protocol.check_node_name(resolve_node_name(value))
    except ProtocolError as err:
        raise Invalid(str(err))


# Bytes and limits: below 2**63, what the kernel's 64-bit values hold.
MAX_BYTES = 2 ** 63 - 1


@accepts({"title": "bytes", "type": "integer", "minimum": 1,
          "maximum": MAX_BYTES})
def byte_count(value):
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_BYTES:
        raise Invalid("must be a whole number of bytes (1 or more), got %s"
                      % json.dumps(value))
    return value


LIMIT_VALUE = {"anyOf": [{"type": "integer", "minimum": 0,
                          "maximum": MAX_BYTES},
                         {"const": "unlimited"}]}


@accepts({"title": "object {limit: N, \"unlimited\" or [soft, hard]}",
          "type": "object",
          "propertyNames": {"enum": list(LIMIT_NAMES)},
          "additionalProperties": {"anyOf": [
              LIMIT_VALUE, {"type": "array", "items": LIMIT_VALUE,
                            "minItems": 2, "maxItems": 2}]}})
def limits(value):
    """{"nofile": 4096, "core": [0, "unlimited"]} -> sorted (name, (soft,
    hard)) pairs; a single value sets both."""
    if not isinstance(value, dict):
        raise Invalid("must be an object such as {\"nofile\": 4096}, got %s"
                      % json.dumps(value))
    out = []
    for name, given in sorted(value.items()):
        if name not in LIMIT_NAMES:
            raise Invalid('unknown limit "%s" (known: %s)'
                          % (name, ", ".join(LIMIT_NAMES)))
        pair = given if isinstance(given, list) else [given, given]
        if len(pair) != 2:
            raise Invalid('limit "%s": a list must be [soft, hard], got %s'
                          % (name, json.dumps(given)))
        soft, hard = (_limit_value(name, item) for item in pair)
        if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
            raise Invalid('limit "%s": soft %s is above hard %s'
                          % (name, json.dumps(pair[0]), json.dumps(pair[1])))
        out.append((name, (soft, hard)))
    return tuple(out)


def _limit_value(name, value):
    if value == "unlimited":
        return UNLIMITED
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_BYTES:
        raise Invalid('limit "%s": must be a number (0 or more) or '
                      '"unlimited", got %s' % (name, json.dumps(value)))
    return value


@accepts({"title": "absolute path or null (/dev/null)", "anyOf": [
    normal_path.schema, {"type": "null"}]})
def logs_path(value):
    return "/dev/null" if value is None else normal_path(value)


def parse_signal(value):
    """'TERM', 'SIGTERM', 15 -> signal number; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return signal.Signals(value).value
    if isinstance(value, str):
        if not value.isascii():  # "\u017figterm".upper() is "SIGTERM"
            raise ValueError(value)
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        return signal.Signals[name].value
    raise ValueError(value)


def parse_umask(value):
    """'022', '0o022' or an int 0..0o777 -> int; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        if not UMASK_RE.match(value):
            raise ValueError(value)
        result = int(value[2:] if value[1:2] in ("o", "O") else value, 8)
    elif isinstance(value, int):
        result = value
    else:
        raise ValueError(value)
    if not 0 <= result <= 0o777:
        raise ValueError(value)
    return result


def resolve_node_name(raw):
    """``%H`` -> socket.gethostname(); ``%%`` -> ``%``."""
    hostname = socket.gethostname()
    # Split, not a placeholder character: a NUL in the name must stay one
    # (and be refused), not turn into a "%".
    return "%".join(part.replace("%H", hostname) for part in raw.split("%%"))


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string",
            bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


# --- users ------------------------------------------------------------------------

def running_as_root():
    return os.geteuid() == 0


def default_user():
    """``nobody`` when the worker is root, else the worker's own user."""
    if running_as_root():
        return "nobody"
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def lookup_user(user):
    """Return the passwd entry of a user name or uid, or raise KeyError."""
    if isinstance(user, int) or (isinstance(user, str) and user.isdigit()):
        return pwd.getpwuid(int(user))
    return pwd.getpwnam(user)


class Accounts:
    """Users as a start needs them: (passwd entry, groups as ``initgroups``
    would set them, or None without ``groups``), each looked up once and
    kept while /etc/passwd and /etc/group stay the same files with the same
    times, and for at most ``TTL`` seconds (a user of another NSS source,
    LDAP say, changes without them: nscd keeps a user 600 s). A user not
    found is looked up again each time (KeyError, OverflowError or
    ValueError, as ``lookup_user``)."""

    TTL = 60.0
    FILES = ("/etc/passwd", "/etc/group")

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._known = {}  # (user, groups wanted) -> (entry, groups, when)
        self._files = None

    def lookup(self, user, groups=False):
        files = tuple(file_signature(path) for path in self.FILES)
        if files != self._files:
            self._known.clear()
            self._files = files
        key = (user, groups)
        now = self.clock()
        known = self._known.get(key)
        if known is not None and now - known[2] < self.TTL:
            return known[0], known[1]
        entry = lookup_user(user)
        found = os.getgrouplist(entry.pw_name, entry.pw_gid) if groups \
            else None
        self._known[key] = (entry, found, now)
        return entry, found


# --- process lists ------------------------------------------------------------------

@accepts({"title": "string", "type": "string", "maxLength": MAX_NAME_BYTES,
          "allOf": [{"pattern": "\\S"}, {"pattern": "^[^/\\u0000]*$"}],
          "not": {"enum": [".", ".."]}})
def process_name(value):
    """A process's name: it labels every message and names a pid file."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("required, a non-empty string")
    if "/" in value or value in (".", "..") or "\0" in value:
        raise Invalid('must not contain "/" nor be "." or ".."')
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise Invalid("longer than %d bytes (it names a pid file)"
                      % MAX_NAME_BYTES)
    return value


# What each type of process field accepts (spec.FIELDS gives each field
# its type): a check, value -> the spec's value, raising Invalid.
FIELD_TYPES = {
    "name": process_name,
    "path": absolute_path,
    "normal path": normal_path,
    "strings": string_list("must be a list of strings"),
    "names": string_list("must be a list of process names",
                         "list of process names"),
    "user": user_name,
    "environment": environment,
    "text": non_empty_string,
    "boolean": boolean,
    "signal": stop_signal,
    "timeout": seconds(0, 86400),
    "count": count(1, 10 ** 9),
    "umask": umask,
    "check": health_check,
    "limits": limits,
    "bytes": byte_count,
    "logs": logs_path,
}

# A process's fields: name -> check, from spec.FIELDS. The name is checked
# first, on its own (``_process_label``: it labels the other messages); the
# defaults that depend on the machine (user, pid_file) in _validate_one.
PROC_FIELDS = {field.name: FIELD_TYPES[field.type] for field in FIELDS
               if field.name != "name"}

# Fields where null means "the default" (as the seed's examples write them).
NULL_IS_DEFAULT = tuple(field.name for field in FIELDS
                        if field.null_is_default)


class _Where:
    """Collects one file's problems and warnings, each naming where."""

    def __init__(self, where):
        self.where = where
        self.problems = []
        self.warnings = []
        self.users = set()  # found on this machine: looked up once a file

    def problem(self, label, field, why):
        self.problems.append('%s: %s: field "%s": %s'
                             % (self.where, label, field, why))


def validate_procs(raw, where, pid_dir=None, check_users=True,
                   log_dir=None):
    """Validate a list of process definitions.

    ``where`` names the file (and node) in messages. ``pid_dir`` is the folder
    of default pid files (``<name>.pid``); with ``None`` (the master, which
    does not know the node's folders) the default is left unset.
    ``check_users`` looks users up in this machine's passwd database.
    ``log_dir`` is the folder of default ``logs`` (``<name>.log``); with
    ``None``, a process without ``logs`` gets ``/dev/null``.

    Returns ``(specs, problems, warnings)``: specs of the valid processes, and
    one message per problem or warning.
    """
    out = _Where(where)
    specs = []
    if not isinstance(raw, list):
        out.problems.append('%s: "procs" must be a list, got %s'
                            % (where, _type_name(raw)))
        return specs, out.problems, out.warnings
    seen = set()
    for index, item in enumerate(raw):
        spec = _validate_one(item, index, out, (pid_dir, log_dir),
                             check_users, seen)
        if spec is not None:
            specs.append(spec)
    _check_list(specs, seen, out)
    return specs, out.problems, out.warnings


def _process_label(item, index, out, seen):
    """'process "NAME"' for a valid, new name; else None (reported)."""
    if not isinstance(item, dict):
        out.problems.append("%s: process #%d: must be an object, got %s"
                            % (out.where, index + 1, _type_name(item)))
        return None
    name = item.get("name")
    try:
        process_name(name)
    except Invalid as err:
        if isinstance(name, str) and name.strip():
            label = 'process "%s"' % name
            label = label if len(label) <= 60 else label[:60] + '..."'
        else:
            label = "process #%d" % (index + 1)
        out.problem(label, "name", err)
        return None
    label = 'process "%s"' % name
    if name in seen:
        out.problem(label, "name", "duplicate name")
        return None
    seen.add(name)
    return label


def _validate_one(item, index, out, folders, check_users, seen):
    label = _process_label(item, index, out, seen)
    if label is None:
        return None
    before = len(out.problems)
    for key in item:
        if key not in DEFAULTS:
            out.warnings.append('%s: %s: unknown field "%s" (ignored)'
                                % (out.where, label, key))
    for key in REQUIRED:
        if item.get(key) is None:
            out.problem(label, key, "required")
    values = {"name": item["name"]}
    for key, check in PROC_FIELDS.items():
        if key not in item or (item[key] is None and (
                key in NULL_IS_DEFAULT or key in REQUIRED)):
            continue
        try:
            values[key] = check(item[key])
        except Invalid as err:
            out.problem(label, key, err)
    _machine_defaults(values, item, label, out, folders, check_users)
    if values.get("daemon") and values.get("write_pid", True):
        out.problem(label, "daemon", 'a daemon writes its own pid file: set '
                    '"write_pid" to false')
    if values.get("daemon") and "pid_file" not in item:
        out.problem(label, "pid_file",
                    "required with \"daemon\": the daemon's own pid file")
    if len(out.problems) != before:
        return None
    return ProcessSpec(**values)


def _machine_defaults(values, item, label, out, folders, check_users):
    """The user (looked up on this machine), the default pid file and the
    default logs (``folders``: their folders, or None)."""
    pid_dir, log_dir = folders
    if "user" in values and check_users:
        if values["user"] not in out.users:
            try:
                lookup_user(values["user"])
                out.users.add(values["user"])
            except (KeyError, OverflowError, ValueError):
                out.problem(label, "user",
                            'unknown user "%s"' % values["user"])
    elif "user" not in values and item.get("user") is None and check_users:
        values["user"] = default_user()
    if "pid_file" not in values and pid_dir is not None:
        values["pid_file"] = os.path.join(pid_dir, values["name"] + ".pid")
    if "logs" not in item and log_dir is not None:
        values["logs"] = os.path.join(log_dir, values["name"] + ".log")


def _check_list(specs, seen, out):
    """What involves several processes: dependencies, shared pid files."""
    names = {s.name for s in specs}
    for spec in specs:
        for dep in spec.depends:
            if dep == spec.name:
                out.problem('process "%s"' % spec.name, "depends",
                            "a process cannot depend on itself")
            elif dep not in names and dep not in seen:
                out.problem('process "%s"' % spec.name, "depends",
                            'no process named "%s"' % dep)
    owners = {}
    for spec in specs:
        if spec.pid_file is None:
            continue
        if spec.pid_file in owners:
            out.problem('process "%s"' % spec.name, "pid_file",
                        '%s is also the pid file of process "%s"'
                        % (spec.pid_file, owners[spec.pid_file]))
        owners.setdefault(spec.pid_file, spec.name)
    cycle = find_cycle(specs)
    if cycle:
        out.problems.append('%s: field "depends": dependency cycle: %s'
                            % (out.where, " -> ".join(cycle)))


def find_cycle(specs):
    """Return one dependency cycle as a list of names, or None."""
    graph = {s.name: s.depends for s in specs}
    state = {}

    def visit(node, path):
        state[node] = "active"
        path.append(node)
        for dep in graph.get(node, ()):
            if dep not in graph or dep == node:
                continue
            if state.get(dep) == "active":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for name in graph:
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return None


def validate_worker_procs(raw, where, worker_pid_file, log_dir=None):
    """``validate_procs`` as the worker applies it on this machine (users
    looked up, pid files defaulting beside ``worker_pid_file``), plus the
    check that no process claims the worker's own pid file. The client calls
    it on every update before writing the worker's file. ``log_dir``: the
    worker's (``worker_log_dir``), for the default ``logs``."""
    pid_dir = os.path.dirname(worker_pid_file) if worker_pid_file else None
    specs, problems, warnings = validate_procs(raw, where, pid_dir=pid_dir,
                                               check_users=True,
                                               log_dir=log_dir)
    if worker_pid_file:
        for spec in specs:
            if spec.pid_file == worker_pid_file:
                problems.append('%s: process "%s": field "pid_file": is the '
                                "worker's own pid file" % (where, spec.name))
    return specs, problems, warnings


# --- the three files ------------------------------------------------------------------

@dataclasses.dataclass
class DaemonConfig:
    """What every daemon's file has: its path, pid file and log file, and
    the warnings found while reading it (the daemon logs them)."""

    path: str
    pid_file: str
    log_file: str = None
    warnings: list = dataclasses.field(default_factory=list)
    # The bytes it was read from: a daemon compares them with the file once
    # it watches it, so a write made while it started is not missed.
    data: bytes = dataclasses.field(default=None, repr=False, compare=False)
    # The uids trusted to own the file besides root and the daemon's user
    # (dpd-workerd --config-owner): a re-read trusts the same.
    owners: tuple = ()

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def crc32(self):
        """The CRC-32 of the bytes it was read from (None without them),
        worked out once."""
        return None if self.data is None else zlib.crc32(self.data)

    def on_disk_differs(self):
        """True when CONFIG no longer holds the bytes this was read from."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read(MAX_FILE_BYTES + 1) != self.data
        except OSError:
            return False  # gone or unreadable: nothing new to apply


@dataclasses.dataclass
class WorkerConfig(DaemonConfig):
    procs: tuple = ()
    log_dir: str = None  # resolved: worker_log_dir()


# The folder of the processes' default logs, beside the worker's log file.
LOG_DIR_NAME = "procs"


def worker_log_dir(log_dir, log_file):
    """The worker's ``log_dir``: as given, else ``procs`` in the folder of
    its ``log_file`` (/var/log/diprocd/dpd-workerd.log ->
    /var/log/diprocd/procs), else None (no default logs: /dev/null)."""
    if log_dir is not None:
        return log_dir
    if log_file is not None:
        return os.path.join(os.path.dirname(log_file), LOG_DIR_NAME)
    return None


@dataclasses.dataclass
class MasterConfig(DaemonConfig):
    master_stats: str = None
    master_updates: str = None
    master_control: str = None  # dpdctl's endpoint (default: ipc, see below)
    nodes: dict = None  # node name -> raw process list (validated JSON)
    heartbeat: float = DEFAULT_HEARTBEAT
    silent_after: float = DEFAULT_SILENT_AFTER
    curve: keys.MasterCurve = None  # None: no CURVE
    http_listen: str = None  # "HOST:PORT" of metrics and dashboard; None: off

    def exposure(self):
        """What dpdctl status warns about (also among the warnings)."""
        return exposure_warnings(
            self.curve, (self.master_updates, self.master_stats))


@dataclasses.dataclass
class ClientConfig(DaemonConfig):
    master_stats: str = None
    master_updates: str = None
    node_name: str = None  # resolved: "%H" replaced by this machine's hostname
    conf_file: str = None
    status_interval: float = DEFAULT_STATUS_INTERVAL
    curve: keys.ClientCurve = None  # None: no CURVE

    def connection(self):
        return (self.master_stats, self.master_updates, self.node_name,
                self.curve)


@dataclasses.dataclass(frozen=True)
class Key:
    check: object        # value -> the config's value; raises Invalid
    required: bool = False
    default: object = None


@accepts({"title": "object {node name: [process, ...]}", "type": "object"})
def _nodes_object(value):
    if not isinstance(value, dict):
        raise Invalid("must be an object {node name: [process, ...]}")
    return value


@accepts({"title": "the JSON Schema of this file (for editors)",
          "type": "string"})
def schema_reference(value):
    if not isinstance(value, str):
        raise Invalid("must be a string (a URI), got %s" % json.dumps(value))
    return value


COMMON_KEYS = {"$schema": Key(schema_reference),
               "pid_file": Key(absolute_path, required=True),
               "log_file": Key(absolute_path)}
ENDPOINT_KEYS = {"master_stats": Key(endpoint, required=True),
                 "master_updates": Key(endpoint, required=True),
                 "curve_secret_key": Key(absolute_path)}
WORKER_KEYS = dict(COMMON_KEYS, log_dir=Key(normal_path),
                   procs=Key(None, required=True, default=[]))
MASTER_KEYS = dict(COMMON_KEYS, **ENDPOINT_KEYS,
                   master_control=Key(endpoint),
                   nodes=Key(_nodes_object, required=True, default={}),
                   heartbeat=Key(seconds(0.05, 86400),
                                 default=DEFAULT_HEARTBEAT),
                   silent_after=Key(seconds(0.1, 86400),
                                    default=DEFAULT_SILENT_AFTER),
                   curve_clients_dir=Key(absolute_path),
                   curve_operators_dir=Key(absolute_path),
                   http_listen=Key(host_port))
CLIENT_KEYS = dict(COMMON_KEYS, **ENDPOINT_KEYS,
                   node_name=Key(node_name, required=True),
                   conf_file=Key(absolute_path, required=True),
                   status_interval=Key(seconds(0.1, 86400),
                                       default=DEFAULT_STATUS_INTERVAL),
                   curve_master_key=Key(absolute_path))


def _read_keys(path, table, owners=(), check=True):
    """Read ``path`` (checked by ``trust`` unless not ``check``) and check
    its keys against ``table``: returns the values (defaults for the
    missing optional ones; "data" and "owners" too), the problems and the
    warnings (unknown keys)."""
    owners = tuple(owners)
    data = read_file_bytes(path, check, owners)
    obj = parse_json_text(data, path)
    values, problems, warnings = {"data": data, "owners": owners}, [], []
    for key, rule in table.items():
        if key not in obj:
            if rule.required:
                problems.append('%s: missing required key "%s"' % (path, key))
            values[key] = rule.default
            continue
        if rule.check is None:
            values[key] = obj[key]
            continue
        try:
            values[key] = rule.check(obj[key])
        except Invalid as err:
            problems.append('%s: key "%s": %s' % (path, key, err))
            values[key] = rule.default
    for key in obj:
        if key not in table:
            warnings.append('%s: unknown key "%s" (ignored)' % (path, key))
    return values, problems, warnings


def load_pid_file(path, with_crc32=False):
    """The "pid_file" of any daemon's CONFIG, checked as the loaders check
    it, the rest unread and the file's safety (``trust``) unchecked (an
    operator must still be able to stop a daemon whose CONFIG broke or
    became unsafe); raise ConfigError. ``with_crc32``: (pid_file, the
    CRC-32 of the bytes read)."""
    values, problems, _ = _read_keys(path, {"pid_file": COMMON_KEYS[
        "pid_file"]}, check=False)
    if problems:
        raise ConfigError(problems)
    if with_crc32:
        return values["pid_file"], zlib.crc32(values["data"])
    return values["pid_file"]


def load_worker_config(path, owners=()):
    """Read and validate a worker CONFIG (``owners``: uids trusted to own
    it besides root and the worker's user, see ``trust``); raise
    ConfigError with every problem, or return a WorkerConfig (whose
    warnings the caller logs)."""
    values, problems, warnings = _read_keys(path, WORKER_KEYS, owners)
    values["log_dir"] = worker_log_dir(values["log_dir"], values["log_file"])
    specs, proc_problems, proc_warnings = validate_worker_procs(
        values["procs"], path, values["pid_file"], values["log_dir"])
    problems += proc_problems
    warnings += proc_warnings
    if problems:
        raise ConfigError(problems, warnings)
    return _config(WorkerConfig, path, dict(values, procs=tuple(specs)),
                   warnings)


def _config(cls, path, values, warnings):
    """A ``cls`` (a DaemonConfig) from ``_read_keys``' values."""
    return cls(path=path, warnings=warnings, **{
        field.name: values[field.name] for field in dataclasses.fields(cls)
        if field.name in values})


def load_master_config(path, owners=()):
    """Read and validate the master CONFIG (``owners`` as for the worker's);
    raise ConfigError with every problem (naming file, node, process and
    field) or return MasterConfig."""
    values, problems, warnings = _read_keys(path, MASTER_KEYS, owners)
    if values["master_control"] is None and values["pid_file"]:
        values["master_control"] = default_master_control(values["pid_file"])
    endpoints = [values[k] for k in ("master_stats", "master_updates",
                                     "master_control") if values[k]]
    if len(set(endpoints)) != len(endpoints):
        problems.append('%s: keys "master_stats", "master_updates" and '
                        '"master_control" must differ' % path)
    for node, procs in values["nodes"].items():
        where = '%s: node "%s"' % (path, node)
        try:
            protocol.check_node_name(node)
        except ProtocolError as err:
            problems.append("%s: %s" % (where, err))
            continue
        # Users are the node's business: the client checks them there.
        _, node_problems, node_warnings = validate_procs(
            procs, where, pid_dir=None, check_users=False)
        problems += node_problems
        warnings += node_warnings
        if not node_problems:
            problems += _list_size_problems(node, procs, values["heartbeat"],
                                            where)
    curve, curve_problems, curve_warnings = keys.master_curve(
        path, values["curve_secret_key"], values["curve_clients_dir"],
        values["curve_operators_dir"])
    problems += curve_problems + _control_problems(path, values, curve)
    warnings += curve_warnings
    if curve is not None:
        warnings += ['%s: node "%s" has no key in %s: its list is not sent '
                     "(a key file %s.key lets it in)" % (
                         path, node, curve.clients.folder, node)
                     for node in sorted(values["nodes"])
                     if node not in curve.clients.keys]
    warnings += exposure_warnings(curve, (values["master_updates"],
                                          values["master_stats"]))
    if values["http_listen"] and not is_local_endpoint(
            "tcp://" + values["http_listen"]):
        warnings.append('%s: key "http_listen": %s reaches the network: the '
                        "metrics and the dashboard have no authentication "
                        "(they show the fleet, never an env value)"
                        % (path, values["http_listen"]))
    if problems:
        raise ConfigError(problems, warnings)
    values["curve"] = curve
    return _config(MasterConfig, path, values, warnings)


def _control_problems(path, values, curve):
    """dpdctl's endpoint off this machine only with CURVE and operators."""
    control = values["master_control"]
    if not control or control.startswith("ipc://") or (
            values["curve_secret_key"] and values["curve_operators_dir"]):
        return []  # (a broken key file or folder is its own problem)
    return ['%s: key "master_control": %s reaches the network: it needs '
            'CURVE with "curve_operators_dir" (the operators\' public keys), '
            "or an ipc:// endpoint" % (path, control)]


def is_local_endpoint(value):
    """True for an endpoint nothing outside this machine can reach: ipc,
    inproc, tcp on a loopback address (or the interface lo)."""
    if value.startswith(("ipc://", "inproc://")):
        return True
    if not value.startswith("tcp://"):
        return False
    host = value[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "*": reachable from elsewhere


def exposure_warnings(curve, endpoints):
    """Say, without CURVE, which endpoints carry readable traffic."""
    exposed = [e for e in endpoints if e and not is_local_endpoint(e)]
    if curve is not None or not exposed:
        return []
    return ["without CURVE, traffic on %s is unauthenticated and readable by "
            "anyone who can reach it (process lists, their env secrets, "
            "status): set the curve_* keys, see the README's \"Security\""
            % ", ".join(exposed)]


def default_master_control(pid_file):
    """``/run/dpd-masterd.pid`` -> ``ipc:///run/dpd-masterd.control``: a
    socket file whose rights (0660) say who may steer the cluster."""
    return "ipc://" + beside_pid_file(pid_file, ".control")


def load_master_control(path):
    """The master's control endpoint from its CONFIG, the rest unread and
    the file's safety unchecked, as for ``load_pid_file`` (as dpdctl reads
    it); raise ConfigError."""
    values, problems, _ = _read_keys(path, {
        "pid_file": COMMON_KEYS["pid_file"],
        "master_control": MASTER_KEYS["master_control"]}, check=False)
    if problems:
        raise ConfigError(problems)
    return values["master_control"] or default_master_control(
        values["pid_file"])


def load_master_key_file(path):
    """The master's "curve_secret_key" path from its CONFIG, the rest
    unread (as dpdctl reads it), or None; raise ConfigError."""
    values, problems, _ = _read_keys(path, {
        "curve_secret_key": ENDPOINT_KEYS["curve_secret_key"]})
    if problems:
        raise ConfigError(problems)
    return values["curve_secret_key"]


def _list_size_problems(node, procs, heartbeat, where):
    """Clients drop a message over the protocol's bound: refuse it here."""
    size = len(protocol.encode_update(protocol.Update(
        node, "e" * protocol.MAX_EPOCH_CHARS, 2 ** 53, procs, heartbeat))[2])
    if size > protocol.MAX_MESSAGE_BYTES:
        return ["%s: its list encodes to %d bytes, more than the %d a client "
                "accepts" % (where, size, protocol.MAX_MESSAGE_BYTES)]
    return []


def load_client_config(path, owners=()):
    """Read and validate the client CONFIG (``owners`` as for the worker's);
    raise ConfigError with every problem or return a ClientConfig."""
    values, problems, warnings = _read_keys(path, CLIENT_KEYS, owners)
    conf_file = values["conf_file"]
    if conf_file and conf_file in (values["pid_file"], values["log_file"],
                                   os.path.abspath(path)):
        problems.append('%s: key "conf_file": must be the worker\'s own file, '
                        "not this client's" % path)
    if conf_file and not problems and not os.path.exists(conf_file):
        warnings.append('%s: key "conf_file": %s does not exist yet; copy the '
                        "empty worker example there" % (path, conf_file))
    curve, curve_problems = keys.client_curve(
        path, values["curve_secret_key"], values["curve_master_key"])
    problems += curve_problems
    warnings += exposure_warnings(curve, (values["master_updates"],
                                          values["master_stats"]))
    if problems:
        raise ConfigError(problems, warnings)
    values["curve"] = curve
    return _config(ClientConfig, path, values, warnings)
