"""A cgroup per process, where a hierarchy is writable: the whole tree of a
process, whatever session or group its descendants move to.

``detect(worker_pid_file, log)`` looks at this machine once (at the
worker's start) and returns a ``Tree``, whose ``mechanism`` says how the
worker finds and ends a process's descendants:

- ``cgroup v2``: a cgroup2 hierarchy (``/sys/fs/cgroup``, or the hybrid
  ``/sys/fs/cgroup/unified``) where a folder can be made under the
  worker's own cgroup and has ``cgroup.kill`` (Linux 5.14);
- ``cgroup v1 (freezer)``, ``cgroup v1 (pids)``: a writable v1 hierarchy
  of that controller;
- ``process group``: none of those (not root, a read-only /sys, no
  cgroupfs): the stop signal and SIGKILL go to the process group, as
  before, and a descendant that left the group (``setsid``) survives.

Each process gets its own folder ``<hierarchy>/<worker's cgroup>/diprocd/
<worker>/<name>``, where ``<worker>`` is the worker's pid file's name and
a checksum of its path (two workers on one machine never share one). The
worker makes the folder before the fork (``prepare``); the final child
writes its own pid to each ``cgroup.procs`` (``spawn``, step e), so every
descendant is inside from the start; with v2 it is born in its folder
instead (``clone3`` with ``CLONE_INTO_CGROUP``, by the fork path's
intermediate child or by dpd-exec), which spares the ~10 ms a move costs
(an RCU grace period), in a folder made for that start (``prepare``).

``memory_max`` is ``memory.max`` where the v2 hierarchy has the memory
controller (enabled on the way down by the worker when it may), else v1
``memory.limit_in_bytes`` in a folder of the same name under the worker's
own v1 memory cgroup; ``Tree.memory`` names the one used, or None: then
``memory_max`` is not enforced (``--check`` warns, the worker logs it).

Ending a tree (``kill``): v2 writes ``cgroup.kill``; v1 freezer freezes
the folder, sends SIGKILL to each member, then thaws it (no fork escapes
a frozen folder); v1 pids sends SIGKILL to the members until none is left.
``remove`` ends what is left and removes the folders once empty.

No state is kept here but the paths: what is in a folder is read from
``cgroup.procs`` each time, so a worker restarted after ``kill -9`` finds
the trees its predecessor left (``names``, ``members``).
"""

import os
import signal
import time
import zlib

MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUPS = "/proc/self/cgroup"
FOLDER = "diprocd"

PROCESS_GROUP = "process group"
# The mechanisms ``detect`` tries, in this order.
MECHANISMS = ("cgroup v2", "cgroup v1 (freezer)", "cgroup v1 (pids)")

# How long ``remove`` waits for killed members to leave their folder, and
# the v1 freezer for a folder to be frozen.
SETTLE_TIMEOUT = 1.0
_POLL = 0.005


def worker_folder_name(worker_pid_file):
    """``/run/dpd-workerd.pid`` -> ``dpd-workerd.<crc32 of the path>``."""
    path = os.path.abspath(worker_pid_file)
    stem = os.path.basename(path)
    if stem.endswith(".pid"):
        stem = stem[:-len(".pid")]
    return "%s.%08x" % (stem[:64] or "worker",
                        zlib.crc32(path.encode("utf-8", "surrogateescape")))


class Tree:
    """How this worker groups each process's descendants (module docstring):
    ``base`` (the membership hierarchy's folder of this worker), ``memory_base``
    (the folder memory limits are set under; ``base`` itself for v2), or
    None where there is none."""

    def __init__(self, mechanism, base=None, memory=None, memory_base=None,
                 why=None):
        self.mechanism = mechanism
        self.base = base
        self.memory = memory
        self.memory_base = memory_base
        self.why = why  # why no cgroup, or why no memory controller
        # name -> memory_max set in its folder, for the folders this Tree
        # made and no cgroup.kill hit since: used again as they are.
        self._clean = {}

    @property
    def enabled(self):
        return self.base is not None

    def describe(self):
        """The worker's line in its status file (``ledger``)."""
        return {"mechanism": self.mechanism, "path": self.base,
                "memory": self.memory, "note": self.why}

    def folders(self, name):
        """The folders of process ``name``: membership, then memory (when
        separate)."""
        out = []
        if self.base is not None:
            out.append(os.path.join(self.base, name))
        if self.memory_base is not None and self.memory_base != self.base:
            out.append(os.path.join(self.memory_base, name))
        return out

    def prepare(self, name, memory_max, members=None):
        """Make ``name``'s folders, end what an earlier run left in them
        (``members``, when the caller just read them) and set its memory
        limit; return (the folders the new process joins, the membership
        one first; whether a child can be born in that one). Raise OSError.

        A child born in a v2 folder (``CLONE_INTO_CGROUP``) after a
        ``cgroup.kill`` of that folder is killed at birth (Linux 6.18 here),
        so a folder is made anew unless this Tree made it and killed
        nothing in it since (a restart after the main process died alone:
        the folder is used again as it is, its limit written only when it
        changed); where the old one cannot be removed (members still
        leaving), it is kept and the child moves in instead (step e of
        ``spawn``)."""
        if not self.enabled:
            return [], False
        if members is None:
            members = self.members(name)
        if members:
            self.kill(name)
            _wait_empty(self._procs_file(name))
        folder = os.path.join(self.base, name)
        clean = name in self._clean and os.path.isdir(folder)
        if not clean:
            _rmdir(folder)
            fresh = not os.path.isdir(folder)
            _make(folder)
        else:
            fresh = True
        folders = [folder]
        limit_set = self._clean.get(name, _UNSET) if clean else _UNSET
        if fresh:
            self._clean[name] = memory_max
        else:
            self._clean.pop(name, None)
        if self.memory == "cgroup v2":
            if limit_set != memory_max:
                _write(os.path.join(folder, "memory.max"),
                       "max" if memory_max is None else str(memory_max))
        elif self.memory is not None and memory_max is not None:
            folder = os.path.join(self.memory_base, name)
            _make(folder)
            _write(os.path.join(folder, "memory.limit_in_bytes"),
                   str(memory_max))
            folders.append(folder)
        return folders, fresh

    @property
    def born_inside(self):
        """A child can be born in its (first) folder: cgroup v2's
        ``CLONE_INTO_CGROUP`` (``kernel.fork_into_cgroup``)."""
        return self.mechanism == "cgroup v2"

    def _procs_file(self, name):
        return os.path.join(self.base, name, "cgroup.procs")

    def members(self, name):
        """The pids in ``name``'s folder (none without one)."""
        if not self.enabled:
            return []
        return _read_pids(self._procs_file(name))

    def contains(self, name, pid):
        return pid in self.members(name)

    def names(self):
        """The process folders this worker has (a previous run's too)."""
        if not self.enabled:
            return []
        try:
            return sorted(entry.name for entry in os.scandir(self.base)
                          if entry.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def kill(self, name):
        """SIGKILL every process in ``name``'s folder; the number seen."""
        if not self.enabled:
            return 0
        folder = os.path.join(self.base, name)
        members = self.members(name)
        if not members:
            return 0
        self._clean.pop(name, None)
        if self.mechanism == "cgroup v2":
            _write(os.path.join(folder, "cgroup.kill"), "1")
        elif self.mechanism == "cgroup v1 (freezer)":
            _freeze_kill_thaw(folder)
        else:
            for _ in range(100):  # a forking loop, bounded
                pids = _read_pids(os.path.join(folder, "cgroup.procs"))
                if not pids:
                    break
                for pid in pids:
                    _kill(pid)
        return len(members)

    def remove(self, name):
        """End what is left in ``name``'s folders and remove them; False
        when one could not be removed yet (members still leaving)."""
        if not self.enabled:
            return True
        self._clean.pop(name, None)
        try:
            self.kill(name)
        except OSError:
            pass
        done = True
        for folder in self.folders(name):
            _wait_empty(os.path.join(folder, "cgroup.procs"))
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done

    def tidy(self):
        """Remove the empty process folders, then this worker's folder
        when nothing is left in it."""
        self._clean.clear()
        for name in self.names():
            if not self.members(name):
                for folder in self.folders(name):
                    _rmdir(folder)
        for base in {self.base, self.memory_base} - {None}:
            _rmdir(base)

    def oom_kills(self, name):
        """How many times the kernel killed in ``name``'s folder for
        memory_max (None where it does not say)."""
        if self.memory is None or self.memory_base is None:
            return None
        folder = os.path.join(self.memory_base, name)
        if self.memory == "cgroup v2":
            path, key = os.path.join(folder, "memory.events"), "oom_kill"
        else:
            path, key = os.path.join(folder, "memory.oom_control"), "oom_kill"
        try:
            with open(path) as handle:
                for line in handle:
                    words = line.split()
                    if len(words) == 2 and words[0] == key:
                        return int(words[1])
        except (OSError, ValueError):
            return None
        return None


# --- finding a hierarchy ----------------------------------------------------

def detect(worker_pid_file, create=True, mechanisms=MECHANISMS):
    """The Tree this machine offers the worker of ``worker_pid_file``
    (module docstring), trying ``mechanisms`` in order. With ``create``
    false (``--check``), nothing is made: the answer is what a start would
    most likely find."""
    mounts = _mounts()
    own = _own_cgroups()
    worker = worker_folder_name(worker_pid_file)
    notes = []
    tree = None
    for mechanism in mechanisms:
        # "cgroup v2" -> the v2 hierarchy; "cgroup v1 (pids)" -> pids.
        controller = mechanism.partition("(")[2].rstrip(")") or ""
        mount = mounts.get(controller or "cgroup2")
        if mount is None or controller not in own:
            continue
        base = os.path.join(_inside(mount, own[controller]), FOLDER, worker)
        why = _usable(base, create,
                      "cgroup.procs" if controller else "cgroup.kill")
        if why is not None:
            notes.append("%s: %s" % (mechanism, why))
            continue
        tree = Tree(mechanism, base)
        if not controller:
            memory_why = _enable_memory_v2(mount[0], base, create)
            if memory_why is None:
                tree.memory, tree.memory_base = "cgroup v2", base
            else:
                notes.append(memory_why)
        break
    if tree is None:
        if not notes:
            notes.append("no cgroup hierarchy mounted")
        return Tree(PROCESS_GROUP, why="; ".join(notes))
    if tree.memory is None:
        mount = mounts.get("memory")
        if mount is not None and "memory" in own:
            base = os.path.join(_inside(mount, own["memory"]), FOLDER, worker)
            why = _usable(base, create, "memory.limit_in_bytes")
            if why is None:
                tree.memory, tree.memory_base = "cgroup v1", base
            else:
                notes.append("cgroup v1 memory: %s" % why)
        elif not notes:
            notes.append("no memory controller")
    tree.why = "; ".join(notes) if tree.memory is None else None
    return tree


def _mounts():
    """{"cgroup2": (mount point, root), controller: (mount point, root)}
    from /proc/self/mountinfo (the first mount of each)."""
    out = {}
    for line in _read_lines(MOUNTINFO):
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        root, point, fstype = fields[3], fields[4], rest[0]
        if fstype == "cgroup2":
            out.setdefault("cgroup2", (point, root))
        elif fstype == "cgroup":
            for option in rest[2].split(","):
                out.setdefault(option, (point, root))
    return out


def _own_cgroups():
    """{controller: path} of this process ("" for the v2 hierarchy)."""
    out = {}
    for line in _read_lines(OWN_CGROUPS):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            out[""] = parts[2]
        else:
            for controller in parts[1].split(","):
                out.setdefault(controller, parts[2])
    return out


def _inside(mount, path):
    """The folder of cgroup ``path`` under ``mount`` (point, root)."""
    point, root = mount
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return os.path.normpath(point + "/" + path.lstrip("/"))


def _usable(base, create, needed):
    """None when ``base`` (made if ``create``) is a cgroup folder with
    ``needed`` in it; else why not."""
    if create:
        try:
            _make(base)
        except OSError as err:
            return "cannot make %s: %s" % (base, err.strerror or err)
        if not os.path.exists(os.path.join(base, needed)):
            return "%s has no %s" % (base, needed)
        return None
    existing = base
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK):
        return "%s is not writable" % existing
    if existing == base and not os.path.exists(os.path.join(base, needed)):
        return "%s has no %s" % (base, needed)
    return None


def _enable_memory_v2(point, base, create):
    """Enable the memory controller from the hierarchy's top to ``base``'s
    children; None once it is, else why not (the kernel refuses to enable
    a controller below a cgroup with processes of its own, but for the
    top one: said without trying, so ``--check`` says it too). The worker
    does not move itself out of its own cgroup to get round that: under
    systemd with KillMode=process, a unit cgroup with the controller
    enabled while the processes survive in it would refuse the next
    worker systemd puts there (README, "systemd")."""
    chain, folder = [], base
    while True:
        chain.append(folder)
        if os.path.normpath(folder) == os.path.normpath(point):
            break
        folder = os.path.dirname(folder)
    for folder in reversed(chain):
        enabled = _read_words(os.path.join(folder, "cgroup.subtree_control"))
        if "memory" in enabled:
            continue
        if "memory" not in _read_words(os.path.join(folder,
                                                    "cgroup.controllers")):
            return "cgroup v2 has no memory controller at %s" % folder
        if folder != chain[-1] and _read_pids(os.path.join(folder,
                                                           "cgroup.procs")):
            return ("cannot enable the memory controller below %s: it holds "
                    "processes of its own (as a systemd service's cgroup "
                    "holds the worker)" % folder)
        if not create:
            return None if os.access(os.path.join(
                folder, "cgroup.subtree_control"), os.W_OK) else \
                "cannot enable the memory controller in %s" % folder
        try:
            _write(os.path.join(folder, "cgroup.subtree_control"), "+memory")
        except OSError as err:
            return ("cannot enable the memory controller in %s: %s"
                    % (folder, err.strerror or err))
    return None


# --- small file work ---------------------------------------------------------

_UNSET = object()  # no memory limit written yet (None is "max")


def _make(folder):
    try:
        os.makedirs(folder, 0o755)
    except FileExistsError:
        pass


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _read(path):
    """The text of a cgroup file, "" when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _read_lines(path):
    return _read(path).splitlines()


def _read_words(path):
    return _read(path).split()


def _read_pids(path):
    try:
        return [int(word) for word in _read_words(path)]
    except ValueError:
        return []


def _rmdir(folder):
    try:
        os.rmdir(folder)
    except OSError:
        pass  # gone already, or not empty


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_empty(procs_file, timeout=SETTLE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while _read_pids(procs_file) and time.monotonic() < deadline:
        time.sleep(_POLL)


def _freeze_kill_thaw(folder):
    state = os.path.join(folder, "freezer.state")
    _write(state, "FROZEN")
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while _read_words(state) != ["FROZEN"] and \
                time.monotonic() < deadline:
            time.sleep(_POLL)
        for pid in _read_pids(os.path.join(folder, "cgroup.procs")):
            _kill(pid)
    finally:
        _write(state, "THAWED")

