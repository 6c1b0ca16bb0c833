"""``--check``: a CONFIG as its daemon would take it, and what would fail at
start on this node.

``check(loader, path)`` returns a ``Report``: every problem and every
warning the loader found, each once, in the order found (the problems of
an invalid CONFIG come with the warnings found on the way); for a valid
CONFIG, what it resolves to here (a client's node name, ``%H`` replaced)
and warnings about this machine's files that a start would trip on:

- every daemon: its ``pid_file`` and ``log_file`` can be written (their
  folders are made at start when missing: a warning only when that
  cannot work);
- the master with ``http_listen``: prometheus_client can be imported;
- the worker, for each process: ``run`` (a file with an execute bit),
  ``chroot`` and ``cwd`` (folders; ``run`` and ``cwd`` inside the chroot),
  and the ``logs`` file (its folder is never made, but for the worker's
  ``log_dir``, and a symlink at its name never followed: both start
  errors); ``memory_max`` where no cgroup can enforce it. Its users
  are the validator's: an unknown one is already an error.

The master's node lists name other machines' files, and a client's users
arrive with its list (checked then, see ``client.py``): only what a
CONFIG holds for this machine is looked at here.
"""

import dataclasses
import importlib
import os
import stat

from diprocd import cgroup
from diprocd import config as config_mod
from diprocd.errors import ConfigError


@dataclasses.dataclass
class Report:
    path: str
    errors: list
    warnings: list
    facts: list  # what the CONFIG resolves to here, e.g. the node name

    @property
    def ok(self):
        return not self.errors


def check(loader, path):
    """Load ``path`` with ``loader`` as the daemon would; return a Report."""
    try:
        loaded = loader(path)
    except ConfigError as err:
        return Report(path, _once(err.problems), _once(err.warnings), [])
    warnings = list(loaded.warnings)
    facts = []
    warnings += _daemon_files(loaded)
    if isinstance(loaded, config_mod.WorkerConfig):
        for spec in loaded.procs:
            warnings += _process_files(path, spec, loaded.log_dir)
        warnings += _memory_limits(loaded)
    if isinstance(loaded, config_mod.ClientConfig):
        facts.append('node name "%s"' % loaded.node_name)
    if isinstance(loaded, config_mod.MasterConfig) and loaded.http_listen:
        warnings += _metrics_library(loaded)
    return Report(path, [], _once(warnings), facts)


def _once(messages):
    """Each message once, in the order first found."""
    return list(dict.fromkeys(messages))


def _daemon_files(loaded):
    out = []
    for key in ("pid_file", "log_file"):
        value = getattr(loaded, key)
        why = value and _cannot_write(value)
        if why:
            out.append('%s: key "%s": %s (the start would fail)'
                       % (loaded.path, key, why))
    return out


def _metrics_library(loaded):
    try:
        importlib.import_module("prometheus_client")
    except ImportError as err:
        return ['%s: key "http_listen": needs prometheus_client '
                "(python3-prometheus-client): %s (the start would fail)"
                % (loaded.path, err)]
    return []


def _process_files(path, spec, log_dir):
    """What would stop ``spec`` from starting on this machine."""
    where = '%s: process "%s"' % (path, spec.name)
    out = []

    def warn(field, why):
        out.append('%s: field "%s": %s (its start would fail)'
                   % (where, field, why))

    root = spec.chroot or "/"
    if spec.chroot:
        why = _not_a_folder(spec.chroot)
        if why:
            warn("chroot", why)
            return out  # run and cwd are inside it: nothing more to see
    inside = " in the chroot" if spec.chroot else ""
    why = _not_a_program(_within(root, spec.run))
    if why:
        warn("run", "%s%s %s" % (spec.run, inside, why))
    # The child does chdir("/") after the chroot, then chdir(cwd).
    why = _not_a_folder(_within(root, spec.cwd), named=False)
    if why:
        warn("cwd", "%s%s %s" % (spec.cwd, inside, why))
    if spec.logs != "/dev/null":
        why = _log_cannot_open(spec.logs, log_dir)
        if why:
            warn("logs", why)
    return out


def _memory_limits(loaded):
    """memory_max where no cgroup would enforce it (nothing is made to
    find out: ``cgroup.detect`` without ``create``)."""
    limited = [spec.name for spec in loaded.procs
               if spec.memory_max is not None]
    if not limited:
        return []
    tree = cgroup.detect(loaded.pid_file, create=False)
    if tree.memory is not None:
        return []
    return ['%s: process "%s": field "memory_max": not enforced on this '
            "machine: %s" % (loaded.path, name, tree.why or "no memory cgroup")
            for name in limited]


def _within(root, path):
    return os.path.normpath(os.path.join(root, path.lstrip("/")))


def _inspect(path):
    """os.stat of ``path``, or the reason it cannot be read as a string."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of its path is a file)"
    except OSError as err:
        return "cannot be looked at: %s" % (err.strerror or err)


def _not_a_program(path):
    info = _inspect(path)
    if isinstance(info, str):
        return info
    if stat.S_ISDIR(info.st_mode):
        return "is a folder"
    if not info.st_mode & 0o111:
        return "is not executable"
    return None


def _not_a_folder(path, named=True):
    info = _inspect(path)
    if isinstance(info, str):
        why = info
    elif not stat.S_ISDIR(info.st_mode):
        why = "is not a folder"
    else:
        return None
    return "%s %s" % (path, why) if named else why


def _log_cannot_open(path, log_dir):
    """Why the worker would not open ``path`` as a process's logs (see
    spawn.py: no symlink followed, no folder made but ``log_dir``), or
    None."""
    if os.path.islink(path):
        return "%s is a symbolic link (never followed)" % path
    folder = os.path.dirname(path)
    if folder == log_dir:  # the worker makes it when missing
        return _cannot_write(path)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        return "%s is not a folder" % folder
    if not os.path.isdir(folder):
        return "folder %s does not exist (never made)" % folder
    return _cannot_write(path)


def _cannot_write(path):
    """Why opening ``path`` for writing (created when missing, its folder
    too) would fail here, or None."""
    info = _inspect(path)
    if isinstance(info, str):
        return _folder_cannot_be_made(os.path.dirname(path))
    if stat.S_ISDIR(info.st_mode):
        return "%s is a folder" % path
    if not os.access(path, os.W_OK):
        return "%s is not writable by this user" % path
    return None


def _folder_cannot_be_made(folder):
    """Why ``folder`` could not be written into, made first if missing (as
    ``os.makedirs`` would), or None."""
    existing = folder
    info = _inspect(existing)
    while isinstance(info, str):
        parent = os.path.dirname(existing)
        if parent == existing:
            return "%s: %s" % (folder, info)
        existing = parent
        info = _inspect(existing)
    if not stat.S_ISDIR(info.st_mode):
        if existing == folder:
            return "%s is not a folder" % folder
        return "folder %s cannot be made: %s is not a folder" % (folder,
                                                                  existing)
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    if existing == folder:
        return "folder %s is not writable by this user" % folder
    return ("folder %s does not exist and cannot be made: %s is not writable "
            "by this user" % (folder, existing))
