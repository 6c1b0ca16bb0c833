"""The supervisors under test in the benchmarks, and their programs as seen
in /proc, without asking the supervisors.

A benchmark makes one run token; every program carries
``DPD_BENCH_MARKER=<run token>:<label>:<name>`` in its environment, and each
supervisor ``<run token>:<label>`` in its own, so its children carry it
until they exec: at the end, exactly those processes are found in /proc and
killed by pid, never by name, also after Ctrl-C or an error.

How a program is seen running, the same way for every supervisor and
without talking to any (a question over a supervisor's socket would wake its
loop and shorten the very delay being measured): it is a child of the
supervisor (supervisord and circusd fork it; dpd-workerd starts it with
dpd-exec, its child, or by a double fork as the child subreaper:
worker_vs_supervisord's output says which), its ``/proc/PID/comm`` is ``sleep`` (exec is
done), and its environment carries that program's marker.

The supervisors: ``DpdWorker`` (dpd-workerd, one CONFIG), ``Supervisord``
(one ``[program:x]`` per program, in an include folder), ``Circus``
(circusd, one ``[watcher:x]`` with ``numprocesses = 1`` per program) and
``SpawnFloor``, no supervisor: this process starts the same programs with
``os.posix_spawn``, the floor a supervisor written in Python can reach.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from diprocd import cgroup  # noqa: E402
from diprocd.kernel import cpu_ticks, is_alive  # noqa: E402

MARKER_VAR = "DPD_BENCH_MARKER"
SLEEP = "/bin/sleep"
# The program every supervisor runs unless told otherwise.
PROGRAM = [SLEEP, "100000"]
PROGRAM_COMM = b"sleep"

# Polling periods of the benchmark itself: short where a latency of a few
# milliseconds is measured, longer where the supervisor needs the CPU more
# than the measurement needs the precision.
RESTART_POLL = 0.001
COLD_START_POLL = 0.005
COLD_START_TIMEOUT = 300.0
EVENT_TIMEOUT = 30.0
# With exec events (procevents): how long a found program's later execs are
# waited for, and how often /proc is scanned in case the kernel dropped one.
EXEC_SETTLE = 0.005
EXEC_RESCAN = 0.05

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on (a supervisor died, a program never came)."""


class NotFinished(BenchError):
    """Not every program was running by the deadline."""

    def __init__(self, label, running, count, timeout):
        super().__init__("%s: only %d of %d programs running after %.0fs"
                         % (label, running, count, timeout))
        self.running = running


def recording_program(starts_file):
    """``sh -c 'echo $$ >> STARTS; exec sleep 100000'``: a program that
    appends its pid to ``starts_file`` at each start, then becomes sleep."""
    return ["/bin/sh", "-c", "echo $$ >> %s; exec %s 100000"
            % (shlex.quote(starts_file), SLEEP)]


# --- reading /proc -----------------------------------------------------------

def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def children_of(pid):
    """Pids of the children that the main thread of ``pid`` forked."""
    data = _read("/proc/%d/task/%d/children" % (pid, pid))
    return [int(field) for field in data.split()] if data else []


def comm_of(pid):
    data = _read("/proc/%d/comm" % pid)
    return data.strip() if data else None


def marker_of(pid):
    """The value of MARKER_VAR in ``pid``'s environment, or None."""
    data = _read("/proc/%d/environ" % pid)
    if not data:
        return None
    prefix = MARKER_VAR.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode("utf-8", "replace")
    return None


def cpu_seconds(pid):
    """utime + stime of ``pid`` (all its threads, not its children)."""
    return cpu_ticks(pid) / CLOCK_TICKS


def cpu_seconds_precise(pid):
    """Time on CPU of all threads of ``pid`` from their
    /proc/PID/task/TID/schedstat (ns), or None without it."""
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    total = 0
    for tid in tasks:
        data = _read("/proc/%d/task/%s/schedstat" % (pid, tid))
        if not data:
            return None
        total += int(data.split()[0])
    return total / 1e9


def marked_pids(token):
    """Live pids whose environment carries a marker starting with
    ``token``."""
    prefix = ("%s=%s" % (MARKER_VAR, token)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        environ = _read("/proc/%s/environ" % entry)
        if not environ or not is_alive(int(entry)):
            continue
        if any(item.startswith(prefix) for item in environ.split(b"\0")):
            found.append(int(entry))
    return found


def kill_marked(token, timeout=20.0):
    """SIGKILL every process of this run, by pid, until none is left (a
    supervisor's child that was between fork and exec shows up late)."""
    deadline = time.monotonic() + timeout
    quiet_scans = 0
    while quiet_scans < 3:
        pids = marked_pids(token)
        quiet_scans = 0 if pids else quiet_scans + 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pids and time.monotonic() > deadline:
            raise BenchError("processes of this run survive SIGKILL: %s"
                             % pids)
        time.sleep(0.05)


# --- the supervisors under test ------------------------------------------------

class Supervisor:
    """One supervisor under test: how to launch it, ask its status and add a
    program; and the programs it runs, as seen in /proc."""

    label = None
    title = None

    def __init__(self, folder, token, names, user, program=PROGRAM):
        self.folder = folder
        self.token = token
        self.names = list(names)
        self.user = user
        self.program = list(program)
        self.popen = None
        self.output_path = os.path.join(folder, "output.log")
        self._seen = {}   # child pid -> program name, once it has exec'd

    def marker(self, name=None):
        base = "%s:%s" % (self.token, self.label)
        return base if name is None else "%s:%s" % (base, name)

    def command(self):
        raise NotImplementedError

    def status_command(self):
        """The command that prints the state of every program, or None."""
        return None

    def launch(self):
        env = dict(os.environ)
        env[MARKER_VAR] = self.marker()
        with open(self.output_path, "ab") as output:
            self.popen = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                start_new_session=True)

    @property
    def pid(self):
        return self.popen.pid

    def check_alive(self):
        if self.popen.poll() is not None:
            raise BenchError("%s exited with %s; its output:\n%s"
                             % (self.label, self.popen.returncode,
                                self.output_tail()))

    def output_tail(self, lines=30):
        data = _read(self.output_path) or b""
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8",
                                                              "replace")

    def scan(self):
        """Programs running now, as {name: pid}; remembers what it read."""
        current = children_of(self.pid)
        alive = set(current)
        for pid in [p for p in self._seen if p not in alive]:
            del self._seen[pid]
        prefix = self.marker("")
        for pid in current:
            if pid in self._seen or comm_of(pid) != PROGRAM_COMM:
                continue  # known, or not exec'd yet
            marker = marker_of(pid)
            if marker and marker.startswith(prefix):
                self._seen[pid] = marker[len(prefix):]
        return {name: pid for pid, name in self._seen.items()}

    def live_programs(self):
        """[(pid, name)] of the programs running now, zombies left out
        (``scan`` keeps a killed child until it is reaped), a name that
        runs twice listed twice."""
        self.scan()
        return [(pid, name) for pid, name in self._seen.items()
                if is_alive(pid)]

    def wait_running(self, name, not_pid, started, timeout=EVENT_TIMEOUT,
                     poll=RESTART_POLL, events=None):
        """Wait for ``name`` to run as a pid other than ``not_pid``; return
        (pid, seconds since ``started``). With ``events`` (a
        ``procevents.ExecEvents``), the time is the kernel's of the exec
        that made it the program, and nothing polls meanwhile."""
        if events is not None:
            return self._wait_exec(name, not_pid, started, timeout, events)
        deadline = started + timeout
        while True:
            pid = self.scan().get(name)
            now = time.perf_counter()
            if pid is not None and pid != not_pid:
                return pid, now - started
            if now > deadline:
                self.check_alive()
                raise BenchError("%s: %s not running %.0fs after the event"
                                 % (self.label, name, timeout))
            time.sleep(poll)

    def _wait_exec(self, name, not_pid, started, timeout, events):
        """wait_running by exec events: the first exec, after ``started``, of
        a pid that then is this program (its comm and marker); then the
        last exec of that pid within EXEC_SETTLE (when the comm was read
        after a later exec than the event's: ``sh -c '...; exec sleep'``).
        Events the kernel dropped are made up for by a scan every
        EXEC_RESCAN seconds (then the time is the scan's)."""
        deadline = started + timeout
        marker = self.marker(name)
        found = None  # (pid, exec time)
        settle_until = None
        rescan_at = time.perf_counter() + EXEC_RESCAN
        while True:
            now = time.perf_counter()
            if found is not None and now >= settle_until:
                return found[0], found[1] - started
            if now > deadline:
                self.check_alive()
                raise BenchError("%s: %s not running %.0fs after the event"
                                 % (self.label, name, timeout))
            if found is None and now >= rescan_at:
                pid = self.scan().get(name)
                if pid is not None and pid != not_pid:
                    return pid, time.perf_counter() - started
                rescan_at = now + EXEC_RESCAN
            until = settle_until if found is not None else min(deadline,
                                                               rescan_at)
            for pid, when in events.read(until - now):
                if found is not None:
                    if pid == found[0]:
                        found = (pid, when)
                    continue
                if pid != not_pid and when >= started \
                        and comm_of(pid) == PROGRAM_COMM \
                        and marker_of(pid) == marker:
                    found = (pid, when)
                    settle_until = time.perf_counter() + EXEC_SETTLE

    def wait_all_running(self, count, started, timeout=COLD_START_TIMEOUT):
        """Wait for ``count`` programs to run; seconds since ``started``, or
        NotFinished after ``timeout``."""
        deadline = started + timeout
        while True:
            running = len(self.scan())
            now = time.perf_counter()
            if running >= count:
                return now - started
            if now > deadline:
                raise NotFinished(self.label, running, count, timeout)
            self.check_alive()
            time.sleep(COLD_START_POLL)

    def wait_all_replaced(self, old_pids, started, timeout=EVENT_TIMEOUT):
        """Wait for every program of ``old_pids`` ({name: pid}) to run as
        another pid; seconds since ``started``, or NotFinished."""
        deadline = started + timeout
        while True:
            running = self.scan()
            replaced = sum(1 for name, pid in old_pids.items()
                           if running.get(name, pid) != pid)
            now = time.perf_counter()
            if replaced == len(old_pids):
                return now - started
            if now > deadline:
                raise NotFinished(self.label, replaced, len(old_pids),
                                  timeout)
            self.check_alive()
            time.sleep(COLD_START_POLL)

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL; by pid. Programs left behind are killed by
        marker afterwards."""
        if self.popen is None or self.popen.poll() is not None:
            return
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                self.popen.send_signal(signum)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class DpdWorker(Supervisor):
    label = "dpd"
    title = "dpd-workerd"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config_path = os.path.join(self.folder, "worker.json")
        self.pid_file = os.path.join(self.folder, "run", "dpd-workerd.pid")
        os.makedirs(os.path.dirname(self.pid_file))
        self.write_config(self.names)()

    def _daemon(self):
        return [sys.executable, os.path.join(ROOT, "bin", "dpd-workerd")]

    def command(self):
        return self._daemon() + ["-f", self.config_path]

    def status_command(self):
        return self._daemon() + ["--status", self.config_path]

    def write_config(self, names):
        """Write CONFIG next to itself; return a callable that renames it
        into place (the timed step)."""
        config = {
            "pid_file": self.pid_file,
            "log_file": os.path.join(self.folder, "dpd-workerd.log"),
            "procs": [{"name": name, "run": self.program[0],
                       "args": self.program[1:],
                       "user": self.user, "logs": "/dev/null",
                       "env": {MARKER_VAR: self.marker(name)}}
                      for name in names],
        }
        staging = self.config_path + ".new"
        with open(staging, "w") as handle:
            json.dump(config, handle, indent=1)
        return lambda: os.rename(staging, self.config_path)

    def add_program(self, name):
        """Add ``name`` by an atomic rename of CONFIG; time from the rename."""
        self.names.append(name)
        rename = self.write_config(self.names)
        started = time.perf_counter()
        rename()
        return started, None

    def stop(self, timeout=15.0):
        """As any supervisor's, then its cgroups go, with what is left in
        them (folders named after this run's pid file: its own)."""
        super().stop(timeout)
        tree = cgroup.detect(self.pid_file, create=False)
        for name in tree.names():
            tree.remove(name)
        tree.tidy()


def _venv_tool(name, requirement):
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.access(path, os.X_OK):
        raise BenchError("%s not found: run `make venv` (%s is in "
                         "requirements-dev.txt)" % (path, requirement))
    return path


class Supervisord(Supervisor):
    label = "supervisord"
    title = "supervisord"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervisord = _venv_tool("supervisord", "supervisor")
        self.supervisorctl = _venv_tool("supervisorctl", "supervisor")
        self.socket_path = os.path.join(self.folder, "supervisor.sock")
        self.include_dir = os.path.join(self.folder, "conf.d")
        self.config_path = os.path.join(self.folder, "supervisord.conf")
        os.makedirs(self.include_dir)
        os.makedirs(os.path.join(self.folder, "childlogs"))
        with open(self.config_path, "w") as handle:
            handle.write(self._main_config())
        with open(os.path.join(self.include_dir, "programs.conf"), "w") as out:
            out.write("".join(self._program_section(n) for n in self.names))
        self._rpc = None

    def _main_config(self):
        # Every program holds pipes (supervisord always reads the output,
        # even when it logs none): ~3 descriptors each.
        minfds = max(1024, 3 * len(self.names) + 256)
        return (
            "[unix_http_server]\n"
            "file=%(sock)s\n"
            "chmod=0700\n\n"
            "[supervisord]\n"
            "nodaemon=true\n"
            "silent=true\n"
            "logfile=%(folder)s/supervisord.log\n"
            "loglevel=info\n"
            "pidfile=%(folder)s/supervisord.pid\n"
            "childlogdir=%(folder)s/childlogs\n"
            "minfds=%(minfds)d\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface\n\n"
            "[supervisorctl]\n"
            "serverurl=unix://%(sock)s\n\n"
            "[include]\n"
            "files = %(folder)s/conf.d/*.conf\n"
            % {"sock": self.socket_path, "folder": self.folder,
               "minfds": minfds})

    def _program_section(self, name):
        user = "user=%s\n" % self.user if os.geteuid() == 0 else ""
        return (
            "[program:%(name)s]\n"
            "command=%(command)s\n"
            "%(user)s"
            "autostart=true\n"
            "autorestart=true\n"
            "startsecs=0\n"
            "startretries=1000\n"
            "directory=/\n"
            "redirect_stderr=true\n"
            "stdout_logfile=NONE\n"
            "stopsignal=TERM\n"
            "stopwaitsecs=10\n"
            'environment=%(var)s="%(marker)s"\n\n'
            % {"name": name,
               # supervisord expands %(...)s in its values: a literal % is %%
               "command": shlex.join(self.program).replace("%", "%%"),
               "user": user, "var": MARKER_VAR, "marker": self.marker(name)})

    def command(self):
        return [self.supervisord, "-n", "-c", self.config_path]

    def status_command(self):
        return [self.supervisorctl, "-c", self.config_path, "status"]

    def _write_program_file(self, name):
        self.names.append(name)
        with open(os.path.join(self.include_dir, name + ".conf"), "w") as out:
            out.write(self._program_section(name))

    def add_program(self, name):
        """Add ``name``: its own file in the include folder, then
        ``supervisorctl update``, as a user would do it; time from before
        the write. Returns the supervisorctl process to be waited for."""
        started = time.perf_counter()
        self._write_program_file(name)
        ctl = subprocess.Popen(
            [self.supervisorctl, "-c", self.config_path, "update"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        return started, ctl

    def add_program_rpc(self, name):
        """The same over XML-RPC on the unix socket, without supervisorctl."""
        started = time.perf_counter()
        self._write_program_file(name)
        rpc = self.rpc()
        added, _changed, _removed = rpc.supervisor.reloadConfig()[0]
        for group in added:
            rpc.supervisor.addProcessGroup(group)
        return started, None

    def rpc(self):
        if self._rpc is None:
            import xmlrpc.client
            from supervisor.xmlrpc import SupervisorTransport
            transport = SupervisorTransport(None, None,
                                            "unix://" + self.socket_path)
            self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1",
                                                  transport=transport)
        return self._rpc


class Circus(Supervisor):
    """circusd with its defaults (``check_delay`` 1 s, output pipes kept),
    one watcher of one process per program, no statsd, no web."""

    label = "circus"
    title = "circus"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.circusd = _venv_tool("circusd", "circus")
        self.circusctl = _venv_tool("circusctl", "circus")
        self.endpoint = "ipc://" + os.path.join(self.folder, "control.sock")
        self.config_path = os.path.join(self.folder, "circus.ini")
        with open(self.config_path, "w") as handle:
            handle.write(self._config())

    def _config(self):
        # circus reads its file with configparser's interpolation: % is %%.
        command = shlex.join(self.program).replace("%", "%%")
        uid = "uid = %s\n" % self.user if os.geteuid() == 0 else ""
        parts = [
            "[circus]\n"
            "endpoint = %s\n"
            "pubsub_endpoint = ipc://%s\n"
            "statsd = false\n"
            "logoutput = %s\n"
            "loglevel = info\n\n"
            % (self.endpoint, os.path.join(self.folder, "pubsub.sock"),
               os.path.join(self.folder, "circusd.log"))]
        for name in self.names:
            parts.append(
                "[watcher:%(name)s]\n"
                "cmd = %(command)s\n"
                "numprocesses = 1\n"
                "%(uid)s"
                "working_dir = /\n"
                "copy_env = false\n\n"
                "[env:%(name)s]\n"
                "%(var)s = %(marker)s\n\n"
                % {"name": name, "command": command, "uid": uid,
                   "var": MARKER_VAR, "marker": self.marker(name)})
        return "".join(parts)

    def command(self):
        return [self.circusd, self.config_path]

    def status_command(self):
        return [self.circusctl, "--endpoint", self.endpoint, "--timeout",
                "60", "status"]


class SpawnFloor(Supervisor):
    """No supervisor: this process ``os.posix_spawn``\\ s the programs (no
    restart, no status); its cold start is the floor for the others."""

    label = "floor"
    title = "floor: os.posix_spawn from Python"

    def launch(self):
        self._spawned = []
        for name in self.names:
            env = {MARKER_VAR: self.marker(name)}
            self._spawned.append(os.posix_spawn(self.program[0], self.program,
                                                env))

    @property
    def pid(self):
        return os.getpid()

    def check_alive(self):
        pass

    def stop(self, timeout=15.0):
        """SIGKILL the programs spawned and reap them."""
        for pid in getattr(self, "_spawned", ()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in getattr(self, "_spawned", ()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._spawned = []
