#!/usr/bin/env python3
"""Benchmark: dpd-workerd against supervisord, side by side, in one run.

Both supervisors run from one temporary folder on the same N programs
(``/bin/sleep 100000`` as the same user, output to /dev/null or discarded).
Every program carries ``DPD_BENCH_MARKER=<run token>:<supervisor>:<name>`` in
its environment, and each supervisor carries ``<run token>:<supervisor>`` in
its own, so its children carry it until they exec: at the end, exactly those
processes are found in /proc and killed by pid, never by name, also after
Ctrl-C or an error.

How a program is seen running, the same way for both supervisors and without
talking to either (a question over supervisord's socket would wake its loop
and shorten the very delay being measured): it is a child of the supervisor
(supervisord forks it; dpd-workerd starts it with dpd-exec, its child, or by
a double fork as the child subreaper: the line "dpd-workerd starts processes
with" of the output says which),
its ``/proc/PID/comm`` is ``sleep`` (exec is done), and its environment
carries that program's marker.

Figures, in the order they are measured:

cold start   from launching the supervisor to all N programs running;
             dpd-workerd first, then supervisord (one at a time: 2 cores).
idle CPU     utime+stime of the supervisor itself (/proc/PID/stat) over
             ``--idle-seconds``, both measured over the same window, as ms
             per minute; RSS is VmRSS at the end of that window.
restart      ``--kills`` kill -9 of random programs (no program twice), taking
             turns between the supervisors: from the kill to the new process
             running, polled every millisecond.
reload       ``--reloads`` times add one program: dpd-workerd: atomic rename
             of CONFIG, from the rename to the new process running;
             supervisord: write a file in its include folder and run
             ``supervisorctl update``, from the write to the new process
             running (supervisorctl's own start-up included, as a user sees
             it); and, for reference, the same done over XML-RPC
             (``reloadConfig`` + ``addProcessGroup``) without supervisorctl.

Usage: ``.venv/bin/python bench/worker_vs_supervisord.py [--n 500]
[--idle-seconds 60] [--kills 50] [--reloads 20] [--markdown FILE]``.
"""

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diprocd import cgroup  # noqa: E402
from diprocd.kernel import cpu_ticks, rss_bytes, is_alive  # noqa: E402
from diprocd.ledger import read_document, status_path  # noqa: E402

MARKER_VAR = "DPD_BENCH_MARKER"
PROGRAM = "/bin/sleep"
PROGRAM_ARGS = ["100000"]
PROGRAM_COMM = b"sleep"

# Polling periods of the benchmark itself: short where a latency of a few
# milliseconds is measured, longer where the supervisor needs the CPU more
# than the measurement needs the precision.
RESTART_POLL = 0.001
COLD_START_POLL = 0.005
# Let the supervisor finish its bookkeeping (status file, log) between two
# measured events, so one does not pay for the previous one.
SETTLE = 0.2
COLD_START_TIMEOUT = 300.0
EVENT_TIMEOUT = 30.0
# Goals of issue 2 for dpd-workerd at N=500.
GOAL_RESTART_MEDIAN_MS = 20.0
GOAL_COLD_START_RATIO = 0.5
GOAL_IDLE_CPU_MS_PER_MIN = 20.0
GOAL_RSS_MB = 30.0
GOAL_RELOAD_MEDIAN_MS = 50.0

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on (a supervisor died, a program never came)."""


# --- reading /proc -----------------------------------------------------------

def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def children_of(pid):
    """Pids of the direct children of single-threaded process ``pid``."""
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
    """Time on CPU from /proc/PID/schedstat (ns), or None without it.
    Only the main thread: both supervisors under test have one."""
    data = _read("/proc/%d/schedstat" % pid)
    return int(data.split()[0]) / 1e9 if data else None


def marked_pids(token):
    """Live pids whose environment carries this run's marker."""
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
    """One supervisor under test: how to launch it and add a program; and
    the programs it runs, as seen in /proc."""

    label = None

    def __init__(self, folder, token, names, user):
        self.folder = folder
        self.token = token
        self.names = list(names)
        self.user = user
        self.popen = None
        self.output_path = os.path.join(folder, "output.log")
        self._seen = {}   # child pid -> program name, once it has exec'd

    def marker(self, name):
        return "%s:%s:%s" % (self.token, self.label, name)

    def command(self):
        raise NotImplementedError

    def launch(self):
        env = dict(os.environ)
        env[MARKER_VAR] = "%s:%s" % (self.token, self.label)
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
        prefix = "%s:%s:" % (self.token, self.label)
        for pid in current:
            if pid in self._seen or comm_of(pid) != PROGRAM_COMM:
                continue  # known, or not exec'd yet
            marker = marker_of(pid)
            if marker and marker.startswith(prefix):
                self._seen[pid] = marker[len(prefix):]
        return {name: pid for pid, name in self._seen.items()}

    def wait_running(self, name, not_pid, started, timeout=EVENT_TIMEOUT,
                     poll=RESTART_POLL):
        """Wait for ``name`` to run as a pid other than ``not_pid``; return
        (pid, seconds since ``started``)."""
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

    def wait_all_running(self, count, started):
        deadline = started + COLD_START_TIMEOUT
        while True:
            running = len(self.scan())
            now = time.perf_counter()
            if running >= count:
                return now - started
            if now > deadline:
                raise BenchError("%s: only %d of %d programs running after "
                                 "%.0fs" % (self.label, running, count,
                                            COLD_START_TIMEOUT))
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

    def __init__(self, *args):
        super().__init__(*args)
        self.config_path = os.path.join(self.folder, "worker.json")
        self.pid_file = os.path.join(self.folder, "run", "dpd-workerd.pid")
        os.makedirs(os.path.dirname(self.pid_file))
        self.write_config(self.names)()

    def command(self):
        return [sys.executable, os.path.join(ROOT, "bin", "dpd-workerd"),
                "-f", self.config_path]

    def stop(self, timeout=15.0):
        """As any supervisor's, then its cgroups go, with what is left in
        them (folders named after this run's pid file: its own)."""
        super().stop(timeout)
        tree = cgroup.detect(self.pid_file, create=False)
        for name in tree.names():
            tree.remove(name)
        tree.tidy()

    def write_config(self, names):
        """Write CONFIG next to itself; return a callable that renames it
        into place (the timed step)."""
        config = {
            "pid_file": self.pid_file,
            "log_file": os.path.join(self.folder, "dpd-workerd.log"),
            "procs": [{"name": name, "run": PROGRAM, "args": PROGRAM_ARGS,
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


class Supervisord(Supervisor):
    label = "supervisord"

    def __init__(self, *args):
        super().__init__(*args)
        bin_dir = os.path.dirname(sys.executable)
        self.supervisord = os.path.join(bin_dir, "supervisord")
        self.supervisorctl = os.path.join(bin_dir, "supervisorctl")
        for path in (self.supervisord, self.supervisorctl):
            if not os.access(path, os.X_OK):
                raise BenchError("%s not found: run `make venv` (supervisor is "
                                 "in requirements-dev.txt)" % path)
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
            % {"name": name, "command": " ".join([PROGRAM] + PROGRAM_ARGS),
               "user": user, "var": MARKER_VAR, "marker": self.marker(name)})

    def command(self):
        return [self.supervisord, "-n", "-c", self.config_path]

    def _write_program_file(self, name):
        self.names.append(name)
        with open(os.path.join(self.include_dir, name + ".conf"), "w") as out:
            out.write(self._program_section(name))

    def add_program(self, name):
        """Write an include file and run ``supervisorctl update``; time from
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


# --- the measurements -------------------------------------------------------------

def measure_cold_start(supervisor, count):
    started = time.perf_counter()
    supervisor.launch()
    return supervisor.wait_all_running(count, started)


def measure_idle(supervisors, seconds):
    """CPU (ms per minute, from /proc/PID/stat and from schedstat) and RSS
    of each supervisor over the same idle window."""
    before = {s.label: (cpu_seconds(s.pid), cpu_seconds_precise(s.pid))
              for s in supervisors}
    time.sleep(seconds)
    result = {}
    for supervisor in supervisors:
        supervisor.check_alive()
        cpu, precise = before[supervisor.label]
        per_minute = 60.0 / seconds
        precise_after = cpu_seconds_precise(supervisor.pid)
        result[supervisor.label] = {
            "cpu_ms_per_min": (cpu_seconds(supervisor.pid) - cpu) * 1000
            * per_minute,
            "cpu_ms_per_min_precise": None if precise is None else
            (precise_after - precise) * 1000 * per_minute,
            "rss_bytes": rss_bytes(supervisor.pid),
        }
    return result


def measure_restarts(supervisors, kills, rng, progress):
    """Kill -9 random programs, taking turns; latencies in seconds."""
    latencies = {s.label: [] for s in supervisors}
    victims = {s.label: rng.sample(s.names, kills) for s in supervisors}
    for index in range(kills):
        for supervisor in supervisors:
            name = victims[supervisor.label][index]
            old_pid = supervisor.scan().get(name)
            if old_pid is None:
                old_pid, _ = supervisor.wait_running(name, None,
                                                     time.perf_counter())
            started = time.perf_counter()
            os.kill(old_pid, signal.SIGKILL)
            _, elapsed = supervisor.wait_running(name, old_pid, started)
            latencies[supervisor.label].append(elapsed)
            time.sleep(SETTLE)
        progress("restart %d/%d: %s" % (index + 1, kills, ", ".join(
            "%s %.1f ms" % (label, values[-1] * 1000)
            for label, values in latencies.items())))
    return latencies


def measure_reloads(supervisor, reloads, add, prefix, progress):
    """Add ``reloads`` programs one at a time with ``add(name)``; seconds
    from the change to the new program running."""
    latencies = []
    for index in range(reloads):
        name = "%s%02d" % (prefix, index + 1)
        started, ctl = add(name)
        _, elapsed = supervisor.wait_running(name, None, started)
        latencies.append(elapsed)
        if ctl is not None:
            output, _ = ctl.communicate(timeout=EVENT_TIMEOUT)
            if ctl.returncode != 0:
                raise BenchError("supervisorctl update failed: %s"
                                 % output.decode("utf-8", "replace"))
        time.sleep(SETTLE)
        progress("reload %s %d/%d: %.1f ms" % (prefix, index + 1, reloads,
                                               elapsed * 1000))
    return latencies


# --- reporting -----------------------------------------------------------------------

def percentile(values, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds):
    value = seconds * 1000
    if value >= 100:
        return "%.0f ms" % value
    if value >= 10:
        return "%.1f ms" % value
    return "%.2f ms" % value


def _ratio(dpd, other):
    if not other:
        return "-"
    ratio = dpd / other
    return "%.3f" % ratio if ratio < 0.1 else "%.2f" % ratio


def _yes(met):
    return "**yes**" if met else "**no**"


def machine_description():
    debian = (_read("/etc/debian_version") or b"?").decode().strip()
    model = "?"
    for line in (_read("/proc/cpuinfo") or b"").decode().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return ("Debian %s, %d cores (%s), Linux %s, Python %s, supervisor %s"
            % (debian, os.cpu_count(), model, platform.release(),
               platform.python_version(), _supervisor_version()))


def _supervisor_version():
    try:
        from importlib.metadata import version
        return version("supervisor")
    except Exception:
        return "?"


def render_table(args, results):
    cold, idle, restart, reload = (results["cold"], results["idle"],
                                   results["restart"], results["reload"])
    dpd_restart = restart["dpd"]
    sup_restart = restart["supervisord"]
    rows = []

    def row(what, dpd, sup, dpd_text, sup_text, goal, met):
        rows.append("| %s | %s | %s | %s | %s | %s |"
                    % (what, dpd_text, sup_text, _ratio(dpd, sup), goal,
                       _yes(met) if met is not None else "-"))

    median_dpd = statistics.median(dpd_restart)
    median_sup = statistics.median(sup_restart)
    row("restart after kill -9, median (%d kills)" % args.kills,
        median_dpd, median_sup, _ms(median_dpd), _ms(median_sup),
        "< %.0f ms" % GOAL_RESTART_MEDIAN_MS,
        median_dpd * 1000 < GOAL_RESTART_MEDIAN_MS)
    p90_dpd, p90_sup = percentile(dpd_restart, 0.9), percentile(sup_restart,
                                                                 0.9)
    row("restart after kill -9, p90", p90_dpd, p90_sup, _ms(p90_dpd),
        _ms(p90_sup), "-", None)
    row("cold start of %d programs" % args.n, cold["dpd"],
        cold["supervisord"], "%.2f s" % cold["dpd"],
        "%.2f s" % cold["supervisord"],
        "<= %.1f x supervisord" % GOAL_COLD_START_RATIO,
        cold["dpd"] <= GOAL_COLD_START_RATIO * cold["supervisord"])
    cpu_dpd = idle["dpd"]["cpu_ms_per_min"]
    cpu_sup = idle["supervisord"]["cpu_ms_per_min"]
    row("idle CPU of the supervisor (%d s)" % args.idle_seconds, cpu_dpd,
        cpu_sup, "%.0f ms/min" % cpu_dpd, "%.0f ms/min" % cpu_sup,
        "< %.0f ms/min" % GOAL_IDLE_CPU_MS_PER_MIN,
        cpu_dpd < GOAL_IDLE_CPU_MS_PER_MIN)
    rss_dpd = idle["dpd"]["rss_bytes"] / 1e6
    rss_sup = idle["supervisord"]["rss_bytes"] / 1e6
    row("RSS of the supervisor with %d programs" % args.n, rss_dpd, rss_sup,
        "%.1f MB" % rss_dpd, "%.1f MB" % rss_sup, "< %.0f MB" % GOAL_RSS_MB,
        rss_dpd < GOAL_RSS_MB)
    reload_dpd = statistics.median(reload["dpd"])
    reload_ctl = statistics.median(reload["supervisorctl"])
    reload_rpc = statistics.median(reload["xmlrpc"])
    row("add a program: change to running, median (%d)" % args.reloads,
        reload_dpd, reload_ctl, _ms(reload_dpd), _ms(reload_ctl),
        "< %.0f ms" % GOAL_RELOAD_MEDIAN_MS,
        reload_dpd * 1000 < GOAL_RELOAD_MEDIAN_MS)
    row("add a program, supervisord over XML-RPC (no supervisorctl)",
        reload_dpd, reload_rpc, _ms(reload_dpd), _ms(reload_rpc), "-", None)

    precise = [idle[label]["cpu_ms_per_min_precise"]
               for label in ("dpd", "supervisord")]
    lines = [
        "| N=%d programs | dpd-workerd | supervisord | ratio dpd/supervisord "
        "| goal (dpd-workerd) | met |" % args.n,
        "|---|---:|---:|---:|---|---|",
    ] + rows + [
        "",
        "Machine: %s; 1-minute load average %.2f before the run, %.2f "
        "after." % ((machine_description(),) + tuple(results["load"])),
        "dpd-workerd starts processes with %s." % results.get("spawner"),
        "Programs: `%s` as `%s`; dpd-workerd: output to /dev/null; "
        "supervisord: `startsecs=0`, `autorestart=true`, `startretries=1000`, "
        "`stdout_logfile=NONE` with `redirect_stderr=true` (it still reads "
        "the pipes), `-n`, unix socket only." % (
            " ".join([PROGRAM] + PROGRAM_ARGS), args.user),
        "A program counts as running when it is a child of the supervisor "
        "whose /proc comm is `sleep` (exec done) and whose environment "
        "carries its marker; the benchmark never asks the supervisors.",
        "Restart: kill -9 of a random program to its new process running, "
        "polled every 1 ms. Cold start: from launching the supervisor to all "
        "%d running. Idle CPU: utime+stime in /proc/PID/stat (10 ms ticks) "
        "over the same %d s for both%s. RSS: VmRSS at the end of that window."
        % (args.n, args.idle_seconds,
           "" if None in precise else
           " (schedstat: dpd-workerd %.1f, supervisord %.1f ms/min)"
           % tuple(precise)),
        "Add a program: dpd-workerd: from the atomic rename of CONFIG to the "
        "new program running; supervisord: from writing its file in the "
        "include folder, then running `supervisorctl update`, to the new "
        "program running (supervisorctl's start-up included); the XML-RPC "
        "line does `reloadConfig` + `addProcessGroup` over the unix socket "
        "instead.",
    ]
    return "\n".join(lines)


def goals_summary(results):
    """One line per goal, for the terminal."""
    restart = statistics.median(results["restart"]["dpd"]) * 1000
    cold = results["cold"]
    idle = results["idle"]["dpd"]
    reload = statistics.median(results["reload"]["dpd"]) * 1000
    checks = [
        ("restart median < 20 ms", restart < GOAL_RESTART_MEDIAN_MS,
         "%.2f ms" % restart),
        ("cold start <= half of supervisord's",
         cold["dpd"] <= GOAL_COLD_START_RATIO * cold["supervisord"],
         "%.2f s vs %.2f s" % (cold["dpd"], cold["supervisord"])),
        ("idle CPU < 20 ms/min", idle["cpu_ms_per_min"]
         < GOAL_IDLE_CPU_MS_PER_MIN, "%.0f ms/min" % idle["cpu_ms_per_min"]),
        ("RSS < 30 MB", idle["rss_bytes"] / 1e6 < GOAL_RSS_MB,
         "%.1f MB" % (idle["rss_bytes"] / 1e6)),
        ("reload to started < 50 ms median", reload < GOAL_RELOAD_MEDIAN_MS,
         "%.1f ms" % reload),
    ]
    return "\n".join("%-40s %-4s %s" % (what, "met" if met else "MISS", value)
                     for what, met, value in checks)


# --- running it all ---------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500,
                        help="number of programs (default 500)")
    parser.add_argument("--idle-seconds", type=float, default=60,
                        help="idle CPU window (default 60)")
    parser.add_argument("--kills", type=int, default=50,
                        help="kill -9 of random programs, each (default 50)")
    parser.add_argument("--reloads", type=int, default=20,
                        help="programs added one at a time, each (default 20)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for the programs killed")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the Markdown table to FILE")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs) at the end")
    args = parser.parse_args(argv)
    if args.n < 1 or args.kills < 1 or args.reloads < 1:
        parser.error("--n, --kills and --reloads must be at least 1")
    if args.kills > args.n:
        parser.error("--kills must not exceed --n (no program is killed "
                     "twice: dpd-workerd allows 5 starts a minute)")
    args.user = "nobody" if os.geteuid() == 0 else _own_user()
    return args


def _own_user():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def progress(message):
    print("[bench] " + message, file=sys.stderr, flush=True)


def run(args, folder, token, supervisors_out):
    names = ["prog%04d" % i for i in range(1, args.n + 1)]
    for label in ("dpd", "supervisord"):
        os.makedirs(os.path.join(folder, label))
    dpd = DpdWorker(os.path.join(folder, "dpd"), token, names, args.user)
    supervisors_out.append(dpd)
    sup = Supervisord(os.path.join(folder, "supervisord"), token, names,
                      args.user)
    supervisors_out.append(sup)
    rng = random.Random(args.seed)

    results = {"cold": {}, "reload": {}, "load": [os.getloadavg()[0]]}
    for supervisor in (dpd, sup):
        progress("cold start of %d programs under %s" % (args.n,
                                                         supervisor.label))
        results["cold"][supervisor.label] = measure_cold_start(supervisor,
                                                               args.n)
        progress("%s: all running after %.2f s" % (
            supervisor.label, results["cold"][supervisor.label]))
    results["spawner"] = (read_document(status_path(dpd.pid_file))
                          or {}).get("spawner")
    time.sleep(2 * SETTLE)
    progress("idle CPU and RSS over %.0f s" % args.idle_seconds)
    results["idle"] = measure_idle((dpd, sup), args.idle_seconds)
    progress("restart after kill -9, %d each" % args.kills)
    results["restart"] = measure_restarts((dpd, sup), args.kills, rng,
                                          progress)
    progress("adding programs, %d each" % args.reloads)
    results["reload"]["dpd"] = measure_reloads(
        dpd, args.reloads, dpd.add_program, "dpdextra", progress)
    results["reload"]["supervisorctl"] = measure_reloads(
        sup, args.reloads, sup.add_program, "ctlextra", progress)
    results["reload"]["xmlrpc"] = measure_reloads(
        sup, args.reloads, sup.add_program_rpc, "rpcextra", progress)
    for supervisor in (dpd, sup):
        supervisor.check_alive()
    results["load"].append(os.getloadavg()[0])
    return results


def run_cleanly(body, supervisors, token, folder, keep=False):
    """Run ``body()``; return the exit status (0, 1 on a BenchError, 130
    interrupted). Whatever happens, the supervisors in ``supervisors`` are
    stopped and every program of the run killed (by marker), then
    ``folder`` removed unless ``keep``."""
    # Ctrl-C raises KeyboardInterrupt already; TERM and HUP clean up too,
    # unless HUP was ignored on purpose (nohup).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        body()
        return 0
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    except BenchError as err:
        progress("error: %s" % err)
        return 1
    finally:
        # Cleanup must finish even on a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        progress("stopping the supervisors and every program of this run")
        for supervisor in supervisors:
            supervisor.stop()
        kill_marked(token)
        if keep:
            progress("temporary folder kept: %s" % folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    token = uuid.uuid4().hex
    folder = tempfile.mkdtemp(prefix="dpd-bench-")
    supervisors = []

    def body():
        results = run(args, folder, token, supervisors)
        table = render_table(args, results)
        print(table)
        print()
        print(goals_summary(results))
        if args.markdown:
            with open(args.markdown, "w") as handle:
                handle.write(table + "\n")
    return run_cleanly(body, supervisors, token, folder, args.keep)


if __name__ == "__main__":
    sys.exit(main())
