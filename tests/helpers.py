"""The tests' one place for helpers.

- Waiting: ``wait_for`` polls a condition until a deadline, never a bare
  sleep; ``holds_within`` says whether it held in time.
- Processes: every process a test starts carries the test's own marker in
  its environment (``DPD_TEST_MARKER=<uuid>``, see ``marked_env``);
  ``kill_marked`` ends exactly those processes, found by pid through /proc,
  never by name; ``marked_processes`` gives their command lines and
  ``zombie_children`` the zombies a daemon left unreaped. ``start_daemon``
  and ``run_command`` run ``bin/<command>`` with the marker;
  ``patched_python`` is a wrapper that monkeypatches diprocd in the
  daemon's process first, ``wrapped_helper`` the dpd-exec path's like
  (``fork_path`` says which path the workers take, from DIPROCD_EXEC). Whether a pid is alive:
  ``diprocd.kernel.is_alive``. ``rebindable_endpoints`` are ports for a
  master that is killed and bound again.
- Documents: ``process_doc``, ``worker_doc``, ``client_doc`` and
  ``master_doc`` build the daemons' JSON with keyword overrides,
  ``valid_config`` a CONFIG any of the three commands starts with;
  ``write_json`` writes one as an editor would (atomic rename);
  ``clean_copy`` copies the files git knows of the tree (the .deb's source).
- Daemons: ``Node`` is one node's folder, its dpd-workerd and (in the
  distributed tests) its dpd-clientd; ``Master`` is one dpd-masterd.
"""

import contextlib
import functools
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

from diprocd import cgroup
from diprocd.daemon import read_pid
from diprocd.kernel import is_alive, proc_stat
from diprocd.master import nodes_file_path
from diprocd.ledger import read_document, status_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
MARKER_VAR = "DPD_TEST_MARKER"


# -- waiting -------------------------------------------------------------------

def wait_for(condition, timeout=10.0, interval=0.01, what=None):
    """Poll ``condition()`` until it returns a true value; return it. After
    ``timeout`` seconds raise AssertionError naming ``what``: a string, or a
    callable returning one, called only then, so that the message tells the
    state at the end of the wait, not at its start."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if callable(what):
                what = what()
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what or condition))
        time.sleep(interval)


def holds_within(condition, timeout, interval=0.01):
    """True once ``condition()`` holds within ``timeout`` seconds, else
    False: for a check that reports what it sees rather than fail."""
    try:
        wait_for(condition, timeout, interval)
    except AssertionError:
        return False
    return True


# -- processes -------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def endpoint():
    """A ZeroMQ endpoint on a free loopback port."""
    return "tcp://127.0.0.1:%d" % free_port()


def rebindable_endpoints(count):
    """``count`` ZeroMQ endpoints on free loopback ports below the kernel's
    ephemeral range, for a master that is killed and started again: while
    it is down, its clients reconnect every 0.1 s, and a connection's own
    port, taken from that range, may be the master's (even connected to
    itself), which the new master then cannot bind."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        first_ephemeral = int(handle.read().split()[0])
    chooser = random.SystemRandom()
    ports = set()
    while len(ports) < count:
        port = chooser.randrange(10000, first_ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.add(port)
    return ["tcp://127.0.0.1:%d" % port for port in sorted(ports)]


def marked_pids(marker, var=MARKER_VAR):
    """Pids of live processes whose environment carries ``var=marker``."""
    needle = ("%s=%s" % (var, marker)).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in environ.split(b"\0") and is_alive(int(entry)):
            pids.append(int(entry))
    return pids


def process_argv(pid):
    """The command line of ``pid`` as a list of strings; None when it is
    gone, [] for a zombie."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return [arg.decode("utf-8", "replace") for arg in data.split(b"\0")[:-1]]


def marked_processes(marker):
    """{pid: argv} of the live processes carrying ``marker``."""
    found = {}
    for pid in marked_pids(marker):
        argv = process_argv(pid)
        if argv:
            found[pid] = argv
    return found


def zombie_children(parents):
    """[(pid, parent)] of the zombies whose parent is one of ``parents``."""
    parents = set(parents)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat.state == "Z" and stat.ppid in parents:
                found.append((stat.pid, stat.ppid))
    return found


def kill_marked(marker, timeout=10.0):
    """SIGKILL every process carrying ``marker`` and wait until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = marked_pids(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError("processes with marker %s survive: %s"
                                 % (marker, pids))
        time.sleep(0.02)


def marked_env(marker, extra=None):
    env = dict(os.environ)
    env[MARKER_VAR] = marker
    env["PYTHONPATH"] = ROOT
    env.update(extra or {})
    return env


def command_argv(command, args):
    """The argv of ``bin/<command> args...`` run by this Python."""
    return [sys.executable, os.path.join(BIN, command)] + list(args)


def start_daemon(command, marker, args, log_path, extra_env=None,
                 wrapper=None):
    """Start ``bin/<command> args...`` with the marker, in a session of its
    own, its output appended to ``log_path``; return the Popen.

    ``wrapper`` is an argv prefix the command runs under, such as
    ``["unshare", "--uts", "--"]`` or ``["sh", "-c", 'setup && exec "$@"',
    "sh"]``: a wrapper that execs the command keeps the Popen's pid."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(wrapper or ()) + command_argv(command, args),
            env=marked_env(marker, extra_env), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def patched_python(*lines):
    """A wrapper for ``start_daemon``: this Python runs the command line it
    is given (``python bin/dpd-workerd ARGS``) in-process, after ``lines``
    of code (monkeypatches of diprocd)."""
    code = "\n".join(lines + (
        "import runpy, sys", "sys.argv = sys.argv[2:]",
        "runpy.run_path(sys.argv[0], run_name='__main__')"))
    return [sys.executable, "-c", code]


def proc_limits(pid):
    """{"Max open files": (soft, hard)...} of /proc/PID/limits."""
    out = {}
    with open("/proc/%d/limits" % pid) as handle:
        lines = handle.read().splitlines()[1:]
    for line in lines:
        name, soft, hard = line[:26].strip(), line[26:47].split()[0], \
            line[47:68].split()[0]
        out[name] = (soft, hard)
    return out


def fork_path():
    """Whether the workers the tests start use spawn.py's fork path rather
    than dpd-exec (tests/conftest.py sets DIPROCD_EXEC)."""
    return os.environ.get("DIPROCD_EXEC") == "none"


def wrapped_helper(folder, *lines):
    """The environment that makes a worker start each process with a shell
    script running ``lines`` first, then exec'ing the real dpd-exec (same
    pid, same descriptors): the dpd-exec path's ``patched_python``. Without
    the dpd-exec server (which would run the script once, for itself): each
    start posix_spawns the script; the server's children go on from the
    same code (lib/dpd-exec.c, start_program)."""
    path = os.path.join(str(folder), "dpd-exec-wrapped")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n%s\nexec '%s' \"$@\"\n" % (
            "\n".join(lines), os.environ["DIPROCD_EXEC"]))
    os.chmod(path, 0o755)
    return {"DIPROCD_EXEC": path, "DIPROCD_EXEC_SERVER": "none"}


def run_command(command, args, marker=None, timeout=30, **kwargs):
    """Run ``bin/<command> args...`` to completion; return CompletedProcess."""
    return subprocess.run(
        command_argv(command, args), env=marked_env(marker or "none"),
        capture_output=True, text=True, timeout=timeout, **kwargs)


@functools.lru_cache(maxsize=None)
def stop_daemon(daemon, signum=signal.SIGTERM, timeout=10):
    """Signal a daemon we started (if it still runs); return its exit code."""
    if daemon.poll() is None:
        daemon.send_signal(signum)
    return daemon.wait(timeout=timeout)


# -- files ------------------------------------------------------------------------

def clean_copy(dest):
    """Copy the files git knows (tracked, or new and not ignored) to dest."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = os.path.join(ROOT, name)
        if not os.path.lexists(source):
            continue  # deleted in the work tree
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return str(dest)


def write_json(path, obj, mode=None):
    """Atomic rename, as a careful editor would do; with ``mode``, the new
    file has it before it takes the name (nobody sees it otherwise)."""
    tmp = str(path) + ".tmp-test"
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=1)
    if mode is not None:
        os.chmod(tmp, mode)
    os.rename(tmp, str(path))


RAISE = object()


def read_json(path, default=RAISE):
    """A JSON file's value; ``default`` (if given) when it cannot be read
    or parsed yet."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        if default is RAISE:
            raise
        return default


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def read_text(path, default=RAISE):
    """A file's text; ``default`` (if given) when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        if default is RAISE:
            raise
        return default


# -- the daemons' documents ------------------------------------------------------

def process_doc(marker, name, run, *args, **fields):
    """One process definition, ``marker`` in its ``env`` (the worker gives
    its processes a clean environment: the marker must be passed on)."""
    doc = dict(fields, name=name, run=run, args=list(args))
    doc["env"] = dict(fields.get("env", {}), **{MARKER_VAR: marker})
    return doc


def worker_doc(folder, procs=(), **overrides):
    """A worker CONFIG: pid file in ``folder``/run (the status file, the
    journal and the processes' pid files go beside it), log file in
    ``folder``."""
    doc = {"pid_file": os.path.join(str(folder), "run", "dpd-workerd.pid"),
           "log_file": os.path.join(str(folder), "worker.log"),
           "procs": list(procs)}
    doc.update(overrides)
    return doc


def client_doc(folder, node_name="node1", **overrides):
    """A client CONFIG for ``folder``/worker.json. Its master endpoints are
    two fixed ports nothing listens on, for validation; a running client
    gets its master's (``master_stats=``, ``master_updates=``)."""
    doc = {"pid_file": os.path.join(str(folder), "client.pid"),
           "master_stats": "tcp://127.0.0.1:5001",
           "master_updates": "tcp://127.0.0.1:5002",
           "node_name": node_name,
           "conf_file": os.path.join(str(folder), "worker.json")}
    doc.update(overrides)
    return doc


def master_doc(folder, nodes, **overrides):
    """A master CONFIG on two free loopback ports."""
    doc = {"pid_file": os.path.join(str(folder), "master.pid"),
           "master_stats": endpoint(), "master_updates": endpoint(),
           "nodes": nodes}
    doc.update(overrides)
    return doc


def valid_config(command, folder):
    """A CONFIG ``command`` starts with: files in ``folder``, free loopback
    ports, no process to supervise (a client's worker file written)."""
    doc = {"pid_file": os.path.join(str(folder), "run", command + ".pid"),
           "log_file": os.path.join(str(folder), command + ".log")}
    if command == "dpd-workerd":
        doc["procs"] = []
    else:
        doc["master_stats"] = "tcp://127.0.0.1:%d" % free_port()
        doc["master_updates"] = "tcp://127.0.0.1:%d" % free_port()
    if command == "dpd-masterd":
        doc["nodes"] = {"node1": []}
    if command == "dpd-clientd":
        doc["node_name"] = "node1"
        doc["conf_file"] = os.path.join(str(folder), "worker.json")
        write_json(doc["conf_file"], {
            "pid_file": os.path.join(str(folder), "w.pid"), "procs": []})
    return doc


# -- the daemons -------------------------------------------------------------------

class Master:
    """One dpd-masterd in ``folder``: master.json, master.pid, its output in
    master.log and its view of the nodes (``view()``)."""

    def __init__(self, folder, marker, nodes=None, **settings):
        self.dir = pathlib.Path(folder)
        self.marker = marker
        self.config_path = str(self.dir / "master.json")
        self.log_path = str(self.dir / "master.log")
        self.doc = master_doc(folder, nodes or {}, **settings)
        self.pid_file = self.doc["pid_file"]
        self.daemon = None
        self.started = None

    @property
    def stats(self):
        return self.doc["master_stats"]

    @property
    def updates(self):
        return self.doc["master_updates"]

    @property
    def nodes(self):
        return self.doc["nodes"]

    def write(self, nodes=None, **settings):
        """Save the master file (atomic rename) with these changes."""
        self.doc = dict(self.doc, **settings)
        if nodes is not None:
            self.doc["nodes"] = nodes
        write_json(self.config_path, self.doc)

    def start(self):
        """Write the master file unless it exists; start ``-f -v``."""
        if not os.path.exists(self.config_path):
            self.write()
        self.daemon = start_daemon("dpd-masterd", self.marker,
                                   ["-f", "-v", self.config_path],
                                   self.log_path)
        self.started = time.monotonic()
        return self.daemon

    def stop(self, signum=signal.SIGTERM):
        """Stop it; return its exit code."""
        return stop_daemon(self.daemon, signum)

    def log(self):
        return read_text(self.log_path, default="")

    def view(self):
        """Its nodes file: every node's last report, or None."""
        return read_json(nodes_file_path(self.pid_file), default=None)


class Node:
    """One node in ``folder``: a dpd-workerd on worker.json (its pid, status
    and journal files in run/, its output in worker.out) and, when a test
    asks for one, a dpd-clientd on client.json (its output in client.log)
    that rewrites worker.json. ``name`` is the node's name at the master."""

    def __init__(self, folder, marker, name="node1"):
        self.dir = pathlib.Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marker = marker
        self.name = name
        self.config_path = str(self.dir / "worker.json")
        self.pid_file = str(self.dir / "run" / "dpd-workerd.pid")
        self.status_path = status_path(self.pid_file)
        self.log_path = str(self.dir / "worker.out")
        self.client_config_path = str(self.dir / "client.json")
        self.client_log_path = str(self.dir / "client.log")
        self.daemon = None  # the worker
        self.client = None
        self.procs = []

    # -- the worker's CONFIG ---------------------------------------------------

    def proc(self, name, run, *args, **fields):
        """A process definition carrying this node's marker."""
        return process_doc(self.marker, name, run, *args, **fields)

    def write(self, procs, **extra):
        """Save worker.json (atomic rename) with ``procs``."""
        self.procs = procs
        os.makedirs(os.path.dirname(self.pid_file), exist_ok=True)
        write_json(self.config_path, worker_doc(
            self.dir, procs, pid_file=self.pid_file, **extra))

    def conf_bytes(self):
        return read_bytes(self.config_path)

    # -- the worker ------------------------------------------------------------

    def start(self, *flags, verbose=True, wait=True, wrapper=None, env=None):
        """Start ``dpd-workerd -f [-v] flags... CONFIG`` (``env`` added to
        its environment); with ``wait``, return once its status file names
        it (it watches CONFIG by then)."""
        args = ["-f"] + (["-v"] if verbose else []) + list(flags)
        self.daemon = start_daemon("dpd-workerd", self.marker,
                                   args + [self.config_path], self.log_path,
                                   extra_env=env, wrapper=wrapper)
        if wait:
            wait_for(self.worker_up, what="the worker's status file")
        return self.daemon

    def worker_up(self):
        """True once the status file names this worker (it watches CONFIG
        by then)."""
        if self.daemon.poll() is not None:
            raise AssertionError("the worker exited: " + self.log())
        return self.status_doc().get("worker_pid") == self.daemon.pid

    def worker_pid(self):
        """The pid in the worker's pid file, or None."""
        return read_pid(self.pid_file)

    def stop(self, signum=signal.SIGTERM):
        """Signal the worker (SIGKILL: kill -9) and wait for it."""
        return stop_daemon(self.daemon, signum)

    def log(self):
        """The worker's output."""
        return read_text(self.log_path, default="")

    # -- what the worker runs ----------------------------------------------------

    def status_doc(self):
        """The worker's whole status file (diprocd.ledger), or {}."""
        return read_document(self.status_path) or {}

    def status(self):
        """{process name: its status entry}, {} before the first status."""
        return self.status_doc().get("procs", {})

    def state(self, name):
        return self.status().get(name, {})

    def wait_state(self, name, state, timeout=10, alive=False, **expect):
        """Wait for process ``name`` in ``state`` with the ``expect``ed
        fields (and, with ``alive``, a pid alive); return its status
        entry."""
        def ok():
            entry = self.state(name)
            if entry.get("state") != state:
                return None
            if any(entry.get(k) != v for k, v in expect.items()):
                return None
            if alive and not (entry.get("pid") and is_alive(entry["pid"])):
                return None
            return entry
        return wait_for(ok, timeout, what=lambda: "%s to be %s %s; status: %s;"
                        " log:\n%s" % (name, state, expect, self.state(name),
                                       self.log()[-3000:]))

    def wait_running(self, name, **kw):
        """Wait for ``name`` to run with a live pid (the status is written
        up to STATUS_INTERVAL after a change: until then it names the pid
        a restart ended); return its pid."""
        return self.wait_state(name, "running", alive=True, **kw)["pid"]

    def running(self):
        """{process name: pid} of the processes running on this node."""
        return {name: entry["pid"] for name, entry in self.status().items()
                if entry.get("state") == "running" and entry.get("pid")
                and is_alive(entry["pid"])}

    def wait_only_running(self, names, timeout=10):
        """Wait until the node runs exactly ``names``; return {name: pid}."""
        names = set(names)
        return wait_for(lambda: set(self.running()) == names and
                        self.running(), timeout=timeout,
                        what=lambda: "node %s running exactly %s (has %s)"
                        % (self.name, sorted(names), sorted(self.running())))

    def instances(self, tag):
        """Live marked processes whose command line contains ``tag``."""
        return [pid for pid, argv in marked_processes(self.marker).items()
                if tag in "\0".join(argv)]

    # -- the client ------------------------------------------------------------

    def write_client(self, master_stats, master_updates, **overrides):
        """Save client.json: this node's client of the master at these
        endpoints, reporting every 0.5 s."""
        settings = dict(node_name=self.name, master_stats=master_stats,
                        master_updates=master_updates,
                        conf_file=self.config_path, status_interval=0.5)
        settings.update(overrides)
        write_json(self.client_config_path, client_doc(self.dir, **settings))

    def join(self, master, verbose=True, **client_settings):
        """A whole node of ``master``: an empty worker file, the worker
        (up), then its client (a client started with its worker may
        rewrite the file while the worker starts)."""
        self.write([])
        self.start(verbose=verbose)
        self.write_client(master.stats, master.updates, **client_settings)
        return self.start_client()

    def start_client(self, wrapper=None):
        """Start ``dpd-clientd -f -v`` on client.json."""
        self.client = start_daemon("dpd-clientd", self.marker,
                                   ["-f", "-v", self.client_config_path],
                                   self.client_log_path, wrapper=wrapper)
        return self.client

    def client_log(self):
        return read_text(self.client_log_path, default="")

    def close(self):
        """Kill what is left of its daemons (the marker ends the rest) and
        remove its worker's cgroups, with what is left in them (a folder
        named after this node's pid file: its own)."""
        for daemon in (self.daemon, self.client):
            if daemon is not None and daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        tree = cgroup.detect(self.pid_file, create=False)
        for name in tree.names():
            tree.remove(name)
        tree.tidy()


@contextlib.contextmanager
def running_cluster(master, nodes, **client_settings):
    """``master`` started and each of ``nodes`` joined to it; on exit the
    nodes' daemons killed and the master stopped."""
    master.start()
    try:
        for node in nodes:
            node.join(master, **client_settings)
        yield
    finally:
        for node in nodes:
            node.close()
        master.stop()
