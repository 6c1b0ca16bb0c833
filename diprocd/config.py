"""Reading and validating diprocd's JSON files into specs.

One validator serves the worker, the client and the master alike:
``validate_procs`` checks a list of process definitions and returns every
problem it finds, each naming the file, the process and the field.
"""

import collections
import os
import pwd
import re
import signal

import simplejson as json

from diprocd.errors import ConfigError
from diprocd.spec import DEFAULTS, REQUIRED, ProcessSpec

# The largest configuration file we agree to parse (a sanity bound).
MAX_FILE_BYTES = 16 * 1024 * 1024

# A ZeroMQ endpoint, as the master binds it and the client connects to it.
ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc|pgm|epgm|ws|wss)://\S+$")

WorkerConfig = collections.namedtuple(
    "WorkerConfig", "path pid_file log_file procs warnings")


def read_json_file(path):
    """Return the parsed JSON object in ``path`` or raise ConfigError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError("%s: cannot read: %s" % (path, err.strerror or err))
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError("%s: larger than %d bytes" % (path, MAX_FILE_BYTES))
    return parse_json_text(data, path)


def parse_json_text(data, where):
    """Parse bytes or text as a JSON object; errors name ``where``."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        obj = json.loads(data)
    except UnicodeDecodeError as err:
        raise ConfigError("%s: not UTF-8: %s" % (where, err))
    except json.JSONDecodeError as err:
        raise ConfigError("%s: not JSON: line %d column %d: %s"
                          % (where, err.lineno, err.colno, err.msg))
    if not isinstance(obj, dict):
        raise ConfigError("%s: must be a JSON object, got %s"
                          % (where, _type_name(obj)))
    return obj


def check_keys(obj, where, required, optional, problems, warnings):
    """Check a top-level object's keys: missing required keys are problems,
    unknown ones are warnings."""
    for key in required:
        if key not in obj:
            problems.append('%s: missing required key "%s"' % (where, key))
    for key in obj:
        if key not in required and key not in optional:
            warnings.append('%s: unknown key "%s" (ignored)' % (where, key))


def check_abs_path(obj, key, where, problems, required=True):
    """Check that ``obj[key]`` is an absolute path string."""
    value = obj.get(key)
    if value is None:
        if required:
            problems.append('%s: missing required key "%s"' % (where, key))
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        problems.append('%s: key "%s": must be an absolute path, got %s'
                        % (where, key, json.dumps(value)))
        return None
    return value


def check_endpoint(obj, key, where, problems):
    value = obj.get(key)
    if value is None:
        return None  # check_keys reported it missing
    if not isinstance(value, str) or not ENDPOINT_RE.match(value):
        problems.append('%s: key "%s": must be a ZeroMQ endpoint such as '
                        '"tcp://10.0.0.1:5555", got %s'
                        % (where, key, json.dumps(value)))
        return None
    return value


def check_seconds(obj, key, where, default, problems, low=0.05, high=86400):
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        problems.append('%s: key "%s": must be a number of seconds (%g to %g), '
                        'got %s' % (where, key, low, high, json.dumps(value)))
        return default
    return float(value)


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


def parse_signal(value):
    """'TERM', 'SIGTERM', 15 -> signal number; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return signal.Signals(value).value
    if isinstance(value, str):
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
        text = value[2:] if value.lower().startswith("0o") else value
        result = int(text, 8)
    elif isinstance(value, int):
        result = value
    else:
        raise ValueError(value)
    if not 0 <= result <= 0o777:
        raise ValueError(value)
    return result


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string",
            bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def validate_procs(raw, where, pid_dir=None, check_users=True):
    """Validate a list of process definitions.

    ``where`` names the file (and node) in messages. ``pid_dir`` is the folder
    of default pid files (``<name>.pid``); with ``None`` (the master, which
    does not know the node's folders) the default is left unset.
    ``check_users`` looks users up in this machine's passwd database.

    Returns ``(specs, problems, warnings)``: specs of the valid processes, and
    one message per problem or warning.
    """
    problems, warnings, specs = [], [], []
    if not isinstance(raw, list):
        problems.append('%s: "procs" must be a list, got %s'
                        % (where, _type_name(raw)))
        return specs, problems, warnings
    seen = set()
    for index, item in enumerate(raw):
        spec = _validate_one(item, index, where, pid_dir, check_users,
                             seen, problems, warnings)
        if spec is not None:
            specs.append(spec)
    names = {s.name for s in specs}
    for spec in specs:
        for dep in spec.depends:
            if dep == spec.name:
                problems.append('%s: process "%s": field "depends": a process '
                                'cannot depend on itself' % (where, spec.name))
            elif dep not in names and dep not in seen:
                problems.append('%s: process "%s": field "depends": no process '
                                'named "%s"' % (where, spec.name, dep))
    owners = {}
    for spec in specs:
        if spec.pid_file is None:
            continue
        if spec.pid_file in owners:
            problems.append('%s: process "%s": field "pid_file": %s is also '
                            'the pid file of process "%s"' % (
                                where, spec.name, spec.pid_file,
                                owners[spec.pid_file]))
        owners.setdefault(spec.pid_file, spec.name)
    cycle = find_cycle(specs)
    if cycle:
        problems.append('%s: field "depends": dependency cycle: %s'
                        % (where, " -> ".join(cycle)))
    return specs, problems, warnings


def _validate_one(item, index, where, pid_dir, check_users, seen,
                  problems, warnings):
    if not isinstance(item, dict):
        problems.append("%s: process #%d: must be an object, got %s"
                        % (where, index + 1, _type_name(item)))
        return None
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        label = "process #%d" % (index + 1)
        problems.append('%s: %s: field "name": required, a non-empty string'
                        % (where, label))
        return None
    label = 'process "%s"' % name
    if "/" in name or name in (".", "..") or "\0" in name:
        problems.append('%s: %s: field "name": must not contain "/" nor be '
                        '"." or ".."' % (where, label))
        return None
    if name in seen:
        problems.append('%s: %s: field "name": duplicate name' % (where, label))
        return None
    seen.add(name)
    before = len(problems)

    def bad(field, why):
        problems.append('%s: %s: field "%s": %s' % (where, label, field, why))

    for key in item:
        if key not in DEFAULTS:
            warnings.append('%s: %s: unknown field "%s" (ignored)'
                            % (where, label, key))
    values = {"name": name}
    for key in REQUIRED:
        if key not in item:
            bad(key, "required")
    run = item.get("run")
    if run is not None:
        if not isinstance(run, str) or not os.path.isabs(run):
            bad("run", "must be an absolute path, got %s" % json.dumps(run))
        values["run"] = run
    if "args" in item:
        if not _is_str_list(item["args"]):
            bad("args", "must be a list of strings")
        else:
            values["args"] = tuple(item["args"])
    user = item.get("user")
    if user is not None:
        if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
            bad("user", "must be a user name or a uid")
        else:
            if check_users:
                try:
                    lookup_user(user)
                except (KeyError, OverflowError):
                    bad("user", 'unknown user "%s"' % user)
            values["user"] = str(user)
    elif check_users:
        values["user"] = default_user()
    for key in ("chroot", "pid_file", "logs"):
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not os.path.isabs(value):
            bad(key, "must be an absolute path, got %s" % json.dumps(value))
        else:
            values[key] = os.path.normpath(value)
    if "pid_file" not in values and pid_dir is not None:
        values["pid_file"] = os.path.join(pid_dir, name + ".pid")
    if "env" in item:
        env = item["env"]
        if not isinstance(env, dict) or not all(
                isinstance(v, str) for v in env.values()):
            bad("env", "must be an object of string values")
        elif any("=" in k or "\0" in k or not k for k in env):
            bad("env", "variable names must be non-empty, without '='")
        else:
            values["env"] = tuple(sorted(env.items()))
    if "cwd" in item:
        if not isinstance(item["cwd"], str) or not item["cwd"]:
            bad("cwd", "must be a non-empty string")
        else:
            values["cwd"] = item["cwd"]
    for key in ("write_pid", "daemon", "restart"):
        if key in item:
            if not isinstance(item[key], bool):
                bad(key, "must be true or false, got %s" % json.dumps(item[key]))
            else:
                values[key] = item[key]
    if values.get("daemon") and values.get("write_pid", True):
        bad("daemon", 'a daemon writes its own pid file: set "write_pid" '
            'to false')
    if values.get("daemon") and "pid_file" not in item:
        bad("pid_file", "required with \"daemon\": the daemon's own pid file")
    if "stop_signal" in item:
        try:
            values["stop_signal"] = parse_signal(item["stop_signal"])
        except (ValueError, KeyError):
            bad("stop_signal", "unknown signal %s"
                % json.dumps(item["stop_signal"]))
    if "stop_timeout" in item:
        value = item["stop_timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 86400:
            bad("stop_timeout", "must be a number of seconds (0 to 86400)")
        else:
            values["stop_timeout"] = float(value)
    if "umask" in item:
        try:
            values["umask"] = parse_umask(item["umask"])
        except (ValueError, TypeError):
            bad("umask", 'must be an octal string such as "022", got %s'
                % json.dumps(item["umask"]))
    if "depends" in item:
        if not _is_str_list(item["depends"]):
            bad("depends", "must be a list of process names")
        else:
            values["depends"] = tuple(item["depends"])
    if len(problems) != before:
        return None
    return ProcessSpec(**values)


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


WORKER_KEYS = ("pid_file", "log_file", "procs")


def validate_worker_procs(raw, where, worker_pid_file):
    """``validate_procs`` as the worker applies it on this machine (users
    looked up, pid files defaulting beside ``worker_pid_file``), plus the
    check that no process claims the worker's own pid file. The client calls
    it on every update before writing the worker's file."""
    pid_dir = os.path.dirname(worker_pid_file) if worker_pid_file else None
    specs, problems, warnings = validate_procs(raw, where, pid_dir=pid_dir,
                                               check_users=True)
    if worker_pid_file:
        for spec in specs:
            if spec.pid_file == worker_pid_file:
                problems.append('%s: process "%s": field "pid_file": is the '
                                "worker's own pid file" % (where, spec.name))
    return specs, problems, warnings


def load_worker_config(path):
    """Read and validate a worker CONFIG; raise ConfigError with every
    problem, or return a WorkerConfig (whose warnings the caller logs)."""
    obj = read_json_file(path)
    problems, warnings = [], []
    check_keys(obj, path, ("pid_file", "procs"), WORKER_KEYS,
               problems, warnings)
    pid_file = check_abs_path(obj, "pid_file", path, problems)
    log_file = check_abs_path(obj, "log_file", path, problems, required=False)
    specs, proc_problems, proc_warnings = validate_worker_procs(
        obj.get("procs", []), path, pid_file)
    problems += proc_problems
    warnings += proc_warnings
    if problems:
        raise ConfigError(problems)
    return WorkerConfig(path, pid_file, log_file, tuple(specs), warnings)
