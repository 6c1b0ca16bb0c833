"""The figures the side-by-side benchmarks take of the supervisors in
``supervisors.py`` (cold start, idle CPU and RSS, restart after kill -9,
the status command), how they print, and a benchmark's run: one token, one
temporary folder, and every supervisor and program of the run killed by pid
at the end, also after Ctrl-C, TERM or an error."""

import compileall
import math
import os
import platform
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from procevents import ExecEvents
from supervisors import (RESTART_POLL, ROOT, BenchError, cpu_seconds,
                         cpu_seconds_precise, kill_marked, _read)
from diprocd.kernel import rss_bytes

# Let the supervisor finish its bookkeeping (status file, log) between two
# measured events, so one does not pay for the previous one.
SETTLE = 0.2


def progress(message):
    print("[bench] " + message, file=sys.stderr, flush=True)


def program_user():
    """The user the programs run as: nobody when we are root (the
    supervisors then drop privileges for each), else ourselves."""
    if os.geteuid() == 0:
        return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


# --- the measurements -------------------------------------------------------------

def measure_cold_start(supervisor, count, timeout=None):
    """Seconds from launching ``supervisor`` to ``count`` programs running
    (NotFinished after ``timeout`` s, if given)."""
    started = time.perf_counter()
    supervisor.launch()
    if timeout is None:
        return supervisor.wait_all_running(count, started)
    return supervisor.wait_all_running(count, started, timeout=timeout)


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


# How the last measure_restarts saw a new process running, for the notes.
RESTART_SEEN = ["not measured"]


def measure_restarts(supervisors, victims, progress):
    """Kill -9 the programs named in ``victims`` ({label: [name]}), taking
    turns between the supervisors, each time waiting for the new process;
    latencies in seconds, {label: [seconds]}."""
    latencies = {s.label: [] for s in supervisors}
    kills = max(len(names) for names in victims.values())
    events = ExecEvents.open()
    RESTART_SEEN[0] = ("seen by the kernel's time of its exec (exec events)"
                       if events is not None else
                       "polled every %g ms (exec events need root)"
                       % (RESTART_POLL * 1000))
    progress("restart: the new process %s" % RESTART_SEEN[0])
    try:
        _kill_in_turns(supervisors, victims, kills, latencies, events,
                       progress)
    finally:
        if events is not None:
            events.close()
    return latencies


def _kill_in_turns(supervisors, victims, kills, latencies, events, progress):
    for index in range(kills):
        for supervisor in supervisors:
            names = victims[supervisor.label]
            if index >= len(names):
                continue
            name = names[index]
            old_pid = supervisor.scan().get(name)
            if old_pid is None:
                old_pid, _ = supervisor.wait_running(name, None,
                                                     time.perf_counter())
            if events is not None:
                events.drain()
            started = time.perf_counter()
            os.kill(old_pid, signal.SIGKILL)
            _, elapsed = supervisor.wait_running(name, old_pid, started,
                                                 events=events)
            latencies[supervisor.label].append(elapsed)
            time.sleep(SETTLE)
        progress("restart %d/%d: %s" % (index + 1, kills, ", ".join(
            "%s %.1f ms" % (label, values[-1] * 1000)
            for label, values in latencies.items() if values)))


def measure_command(argv, runs, timeout=60.0):
    """Wall-clock seconds of up to ``runs`` runs of ``argv`` (output
    discarded), and the exit status of the last; a run over ``timeout``
    is None, and the last."""
    times = []
    status = None
    for _ in range(runs):
        started = time.perf_counter()
        try:
            status = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL,
                                    timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            times.append(None)
            break
        times.append(time.perf_counter() - started)
    return times, status


# --- reporting -----------------------------------------------------------------------

def percentile(values, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def format_ms(seconds):
    value = seconds * 1000
    if value >= 100:
        return "%.0f ms" % value
    if value >= 10:
        return "%.1f ms" % value
    return "%.2f ms" % value


def format_ratio(value, reference):
    if not reference:
        return "-"
    ratio = value / reference
    return "%.3f" % ratio if ratio < 0.1 else "%.2f" % ratio


def format_goals(checks):
    """One line per goal, for the terminal: ``checks`` is [(what, met,
    value)]."""
    return "\n".join("%-40s %-4s %s" % (what, "met" if met else "MISS", value)
                     for what, met, value in checks)


def report(table, goals, markdown=None):
    """Print the table and the goals; write the table to ``markdown``."""
    print(table)
    print()
    print(goals)
    if markdown:
        with open(markdown, "w") as handle:
            handle.write(table + "\n")


def package_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


def machine_description(packages=("supervisor",)):
    debian = (_read("/etc/debian_version") or b"?").decode().strip()
    model = "?"
    for line in (_read("/proc/cpuinfo") or b"").decode().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return ("Debian %s, %d cores (%s), Linux %s, Python %s, %s"
            % (debian, os.cpu_count(), model, platform.release(),
               platform.python_version(), ", ".join(
                   "%s %s" % (name, package_version(name))
                   for name in packages)))


# --- a benchmark's run ---------------------------------------------------------------

def add_run_options(parser):
    """The options every side-by-side benchmark has."""
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed for the programs killed")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the Markdown table to FILE")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs) at the end")


def raise_open_files_limit():
    """Raise our soft open-files limit to the hard one, for every
    supervisor launched after (circus raises none itself; supervisord's
    ``minfds`` and dpd-workerd raise theirs up to the same hard limit).
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def compile_package():
    """Byte-compile diprocd (``__pycache__``, git-ignored) as the Debian
    package's install does (py3compile) and pip does for the peers: where
    PYTHONDONTWRITEBYTECODE is set, every command (``dpd-workerd
    --status``) would otherwise compile its modules at each start."""
    compileall.compile_dir(os.path.join(ROOT, "diprocd"), quiet=1)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def run_benchmark(body, keep=False):
    """Call ``body(folder, token, supervisors)`` with a fresh temporary
    folder, a run token and an empty list that ``body`` fills with the
    supervisors it launches; at the end stop them and kill every process of
    the run by pid. Returns the exit status: 0, 1 (BenchError) or 130."""
    token = uuid.uuid4().hex
    folder = tempfile.mkdtemp(prefix="dpd-bench-")
    supervisors = []
    compile_package()
    # Ctrl-C raises KeyboardInterrupt already; TERM and HUP clean up too,
    # unless HUP was ignored on purpose (nohup).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupt)
    status = 1
    try:
        body(folder, token, supervisors)
        status = 0
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        status = 130
    except BenchError as err:
        progress("error: %s" % err)
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
    return status

