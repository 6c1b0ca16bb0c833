#!/usr/bin/env python3
"""Benchmark: dpd-workerd, supervisord and circus side by side in one run,
at several numbers of programs N (issue 13's scaling table).

For each N in ``--n`` (ascending), from one temporary folder, every
supervisor runs the same N programs ``sh -c 'echo $$ >> STARTS; exec sleep
100000'`` (as ``nobody`` when run as root), STARTS a file of its own: each
start of a program appends one line. How the programs are marked, seen
running (in /proc, never asking the supervisor) and killed at the end (by
pid, never by name): see ``supervisors.py``. Before launching anything the
benchmark raises its soft open-files limit to the hard one, so every
supervisor inherits it (circus raises none itself).

Per N, in this order:

floor        cold start only: this process ``os.posix_spawn``\\ s the same N
             programs (as itself, no supervisor), then kills them.
cold start   from launching the supervisor to all N programs running; one
             supervisor at a time (2 cores), the others already up and idle.
             A peer (supervisord, circus) that does not finish within
             ``--peer-timeout`` s (60) is stopped, and is not run at a
             larger N: the table says so. dpd-workerd has 300 s.
idle CPU     utime+stime of each supervisor (/proc/PID/stat, all threads)
             over the same ``--idle-seconds`` window, as ms per minute (and
             from schedstat, in ns); RSS is VmRSS at the end of it.
restart      ``--kills`` kill -9 of random programs each (``--peer-kills``
             for the peers), taking turns: from the kill to the new process
             running, the kernel's time of its exec (``procevents``: exec
             events, as root; else /proc polled every millisecond, the
             output says which); median and p99 (nearest
             rank: with fewer than 100 kills, the largest).
status       ``--status-runs`` runs of each status command, wall clock,
             median: ``dpd-workerd --status CONFIG``, ``supervisorctl
             status``, ``circusctl status`` (each a fresh Python process).
burst        ``--burst`` programs (default N/10) killed at once, other than
             those of ``restart``: from the kills to all of them running
             again (60 s at most). Then "no restart missed": every program
             runs exactly once (N distinct pids, no name twice) and STARTS
             has exactly N + kills + burst lines (no start lost, none
             doubled).

The ratios are against supervisord at the same N. ``--markdown FILE``
writes the table, ``--plot FILE`` a PNG of the figures against N
(matplotlib, requirements-bench.txt), ``--json FILE`` every raw figure.

Usage: ``.venv/bin/python bench/scaling.py [--n 100,500,2000,5000]
[--idle-seconds 60] [--kills 50] [--peer-kills 20] [--markdown FILE]
[--plot FILE] [--json FILE]``.
"""

import argparse
import importlib.util
import json
import os
import random
import signal
import statistics
import sys
import time

from figures import (RESTART_SEEN, SETTLE, add_run_options, format_goals, format_ms,
                     format_ratio, machine_description, measure_command,
                     measure_cold_start, measure_idle, measure_restarts,
                     percentile, program_user, progress, report,
                     raise_open_files_limit, run_benchmark)
from supervisors import (BenchError, Circus, DpdWorker, NotFinished,
                         SpawnFloor, Supervisord, kill_marked,
                         recording_program)

SUPERVISORS = (SpawnFloor, DpdWorker, Supervisord, Circus)
LABELS = [cls.label for cls in SUPERVISORS]
TITLES = {cls.label: cls.title for cls in SUPERVISORS}
PEERS = ("supervisord", "circus")
REFERENCE = "supervisord"
BURST_TIMEOUT = 60.0
STATUS_TIMEOUT = 60.0

# Goals of issue 13 for dpd-workerd.
GOAL_COLD_RATIO_500 = 0.25
GOAL_RESTART_MEDIAN_MS_500 = 3.0
GOAL_RESTART_P99_MS_500 = 10.0
GOAL_RSS_MB_5000 = 60.0
GOAL_IDLE_MS_PER_MIN_5000 = 5.0
GOAL_STATUS_MS_5000 = 200.0


# --- one N -------------------------------------------------------------------------

def starts_file(folder, user):
    """An empty STARTS file in ``folder`` that the programs' user may
    append to."""
    import pwd
    path = os.path.join(folder, "starts")
    with open(path, "w"):
        pass
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def count_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def pick_victims(rng, supervisors, kills, burst):
    """{label: (restart victims, burst victims)}, disjoint when N allows."""
    picked = {}
    for supervisor in supervisors:
        count = kills[supervisor.label]
        names = rng.sample(supervisor.names, len(supervisor.names))
        restart = names[:count]
        rest = names[count:] if len(names) - count >= burst else names
        picked[supervisor.label] = (restart, rest[:burst])
    return picked


def measure_burst(supervisor, names):
    """Kill -9 ``names`` at once; seconds to all running again, and how
    many came back within BURST_TIMEOUT."""
    old = {name: pid for name, pid in supervisor.scan().items()
           if name in set(names)}
    started = time.perf_counter()
    for pid in old.values():
        os.kill(pid, signal.SIGKILL)
    try:
        return supervisor.wait_all_replaced(old, started,
                                            timeout=BURST_TIMEOUT), len(old)
    except NotFinished as err:
        return None, err.running


def check_accounting(supervisor, starts, expected_starts, timeout=10.0):
    """Every program runs once and STARTS has the expected lines; waits up
    to ``timeout`` for the last lines and reaps to land."""
    deadline = time.monotonic() + timeout
    while True:
        live = supervisor.live_programs()
        running = len(live)
        distinct = len({name for _pid, name in live})
        lines = count_lines(starts)
        ok = (running == distinct == len(supervisor.names)
              and lines == expected_starts)
        if ok or time.monotonic() > deadline:
            return {"running": running, "distinct": distinct,
                    "starts": lines, "expected_starts": expected_starts,
                    "ok": ok}
        time.sleep(0.1)


def run_size(args, n, folder, token, supervisors_out, dropped, rng,
             results):
    """Every figure at one N, into ``results`` ({label: figures}) as they
    come, so that what was measured before an error is kept."""
    names = ["p%05d" % index for index in range(1, n + 1)]
    base = os.path.join(folder, "n%d" % n)
    os.makedirs(base)
    os.chmod(base, 0o711)
    results["load_before"] = os.getloadavg()[0]
    up = []
    starts = {}
    for cls in SUPERVISORS:
        label = cls.label
        if label not in args.only:
            continue
        if label in dropped:
            results[label] = {"skipped": dropped[label]}
            continue
        sub = os.path.join(base, label)
        os.makedirs(sub)
        os.chmod(sub, 0o711)
        starts[label] = starts_file(sub, args.user)
        supervisor = cls(sub, token, names, args.user,
                         program=recording_program(starts[label]))
        supervisors_out.append(supervisor)
        timeout = args.peer_timeout if label in PEERS else None
        progress("N=%d: cold start under %s" % (n, label))
        try:
            cold = measure_cold_start(supervisor, n, timeout)
        except NotFinished as err:
            progress("N=%d: %s" % (n, err))
            results[label] = {"cold_unfinished": err.running,
                              "timeout": timeout}
            dropped[label] = ("not run: cold start at N=%d not done in "
                              "%g s" % (n, timeout))
            stop(supervisor, supervisors_out)
            continue
        progress("N=%d: %s: all running after %.2f s" % (n, label, cold))
        results[label] = {"cold": cold}
        if label == SpawnFloor.label:
            stop(supervisor, supervisors_out)
        else:
            up.append(supervisor)
        time.sleep(SETTLE)
    if not up:
        return
    time.sleep(2 * SETTLE)
    progress("N=%d: idle CPU and RSS over %.0f s" % (n, args.idle_seconds))
    for label, figures in measure_idle(up, args.idle_seconds).items():
        results[label].update(figures)

    kills = {s.label: min(n, args.peer_kills if s.label in PEERS
                          else args.kills) for s in up}
    burst = args.burst if args.burst is not None else max(1, n // 10)
    victims = pick_victims(rng, up, kills, burst)
    progress("N=%d: restart after kill -9: %s" % (n, ", ".join(
        "%s %d" % item for item in kills.items())))
    latencies = measure_restarts(
        up, {label: pair[0] for label, pair in victims.items()}, progress)
    for label, values in latencies.items():
        results[label]["restart"] = values

    for supervisor in up:
        argv = supervisor.status_command()
        if argv is None:
            continue
        times, status = measure_command(argv, args.status_runs,
                                        timeout=STATUS_TIMEOUT)
        results[supervisor.label]["status"] = {
            "times": times, "exit": status,
            "median": None if None in times else statistics.median(times)}
        progress("N=%d: %s status: %s (exit %s)" % (
            n, supervisor.label, ", ".join(
                "-" if t is None else format_ms(t) for t in times), status))

    for supervisor in up:
        label = supervisor.label
        restart_names, burst_names = victims[label]
        time.sleep(SETTLE)
        seconds, back = measure_burst(supervisor, burst_names)
        progress("N=%d: %s: burst of %d kill -9: %d back%s" % (
            n, label, len(burst_names), back,
            "" if seconds is None else " after %.2f s" % seconds))
        results[label]["burst"] = {"killed": len(burst_names), "back": back,
                                   "seconds": seconds}
        results[label]["accounting"] = check_accounting(
            supervisor, starts[label],
            n + len(restart_names) + len(burst_names))
    results["load_after"] = os.getloadavg()[0]
    for supervisor in up:
        stop(supervisor, supervisors_out)


def stop(supervisor, supervisors_out):
    """Stop ``supervisor`` and kill every process of its (by marker)."""
    supervisor.stop(timeout=5.0)
    kill_marked(supervisor.marker())
    supervisors_out.remove(supervisor)


# --- the table ---------------------------------------------------------------------

def _cell(value, reference, text):
    if value is None:
        return "-"
    ratio = None if reference is None else format_ratio(value, reference)
    if ratio in (None, "-"):
        return text(value)
    return "%s (%s×)" % (text(value), ratio)


def figures_of(entry):
    """The plotted and tabled figures of one supervisor at one N (None
    where not measured), in seconds, ms/min and MB."""
    restart = entry.get("restart")
    status = entry.get("status") or {}
    return {
        "cold": entry.get("cold"),
        "restart_median": statistics.median(restart) if restart else None,
        "restart_p99": percentile(restart, 0.99) if restart else None,
        # schedstat (ns) where the kernel has it: ticks of 10 ms are too
        # coarse for a goal of 5 ms a minute
        "idle_cpu": entry.get("cpu_ms_per_min")
        if entry.get("cpu_ms_per_min_precise") is None
        else entry["cpu_ms_per_min_precise"],
        "rss": entry["rss_bytes"] / 1e6 if entry.get("rss_bytes") else None,
        "status": status.get("median"),
        "burst": (entry.get("burst") or {}).get("seconds"),
    }


def _not_run(entry, n):
    if "skipped" in entry:
        return entry["skipped"]
    return "not done in %g s: %d of %d running" % (
        entry["timeout"], entry["cold_unfinished"], n)


def render_table(args, results):
    header = ("| N | supervisor | cold start | restart after kill -9, median "
              "| restart, p99 | idle CPU | RSS | status command | burst of "
              "kill -9: all back | no restart missed |")
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n, by_label in sorted(results["sizes"].items()):
        reference = figures_of(by_label.get(REFERENCE, {}))
        for label in LABELS:
            entry = by_label.get(label)
            if entry is None:
                continue
            title = TITLES[label]
            if "cold" not in entry:
                lines.append("| %d | %s | %s | | | | | | | |" % (
                    n, title, _not_run(entry, n)))
                continue
            mine = figures_of(entry)
            others = {} if label == REFERENCE else reference

            def cell(key, text):
                return _cell(mine[key], others.get(key), text)

            burst = entry.get("burst")
            accounting = entry.get("accounting")
            lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                         % (n, title,
                            cell("cold", lambda v: "%.2f s" % v),
                            cell("restart_median", format_ms),
                            cell("restart_p99", format_ms),
                            cell("idle_cpu", lambda v: "%.1f ms/min" % v),
                            cell("rss", lambda v: "%.1f MB" % v),
                            _status_cell(entry, cell),
                            _burst_cell(burst),
                            _accounting_cell(accounting)))
    for n, by_label in sorted(results["sizes"].items()):
        if "error" in by_label:
            lines.append("")
            lines.append("At N=%d the run stopped early: %s" % (
                n, by_label["error"].replace("\n", " ")[:400]))
    notes = [
        "",
        "Machine: %s; 1-minute load average per N (before, after): %s."
        % (machine_description(("supervisor", "circus")), ", ".join(
            "N=%d %.2f, %.2f" % (n, sizes["load_before"],
                                 sizes.get("load_after", float("nan")))
            for n, sizes in sorted(results["sizes"].items()))),
        "Programs: `sh -c 'echo $$ >> STARTS; exec sleep 100000'` as `%s`, "
        "one STARTS file per supervisor; open-files limit %d for every "
        "supervisor. dpd-workerd: output to /dev/null. supervisord: "
        "`startsecs=0`, `autorestart=true`, `stdout_logfile=NONE`, "
        "`redirect_stderr=true`, `-n`. circus: one watcher per program, "
        "`numprocesses = 1`, its defaults otherwise (`check_delay` 1 s), "
        "no statsd. The floor: `os.posix_spawn` from the benchmark itself, "
        "as root, no supervisor." % (args.user, results["nofile"]),
        "Ratios (×) against supervisord at the same N. Cold start: launch to "
        "all N running (a program runs when it is a child of the "
        "supervisor, has exec'd sleep and carries its marker: the "
        "benchmark never asks the supervisors); peers only up to %g s. "
        "Restart: %d kill -9 (peers %d), from the kill to the new process "
        "running, %s; p99 nearest rank. Idle CPU: "
        "CPU time of all threads from schedstat (ns) over the same %.0f s "
        "for all (utime+stime in the JSON); RSS: VmRSS after it. "
        "Status: median of %d runs, wall clock, of `dpd-workerd --status`, "
        "`supervisorctl status`, `circusctl status`. Burst: N/10 programs "
        "(or `--burst`) killed at once, to all running again. No restart "
        "missed: N distinct programs running and STARTS has N + kills + "
        "burst lines." % (args.peer_timeout, args.kills, args.peer_kills,
                          RESTART_SEEN[0], args.idle_seconds,
                          args.status_runs),
    ]
    return "\n".join(lines + notes)


def _status_cell(entry, cell):
    status = entry.get("status")
    if status and status["median"] is None:
        return "over %g s" % STATUS_TIMEOUT
    return cell("status", format_ms)


def _burst_cell(burst):
    if not burst:
        return "-"
    if burst["seconds"] is None:
        return "%d of %d in %.0f s" % (burst["back"], burst["killed"],
                                       BURST_TIMEOUT)
    return "%d in %.2f s" % (burst["killed"], burst["seconds"])


def _accounting_cell(accounting):
    if not accounting:
        return "-"
    if accounting["ok"]:
        return "yes (%d starts)" % accounting["starts"]
    return "**no**: %d running, %d distinct, %d starts of %d" % (
        accounting["running"], accounting["distinct"], accounting["starts"],
        accounting["expected_starts"])


def goals_summary(results):
    """issue 13's goals for dpd-workerd, at the N this run had."""
    sizes = results["sizes"]
    checks = []

    def dpd(n):
        entry = sizes.get(n, {}).get("dpd")
        return figures_of(entry) if entry and "cold" in entry else None

    at500, ref500 = dpd(500), figures_of(sizes.get(500, {}).get(REFERENCE,
                                                                 {}))
    if at500 and ref500["cold"]:
        ratio = at500["cold"] / ref500["cold"]
        checks.append(("N=500 cold start <= 0.25x supervisord",
                       ratio <= GOAL_COLD_RATIO_500, "%.2fx" % ratio))
    if at500:
        checks.append(("N=500 restart median <= 3 ms",
                       at500["restart_median"] * 1000
                       <= GOAL_RESTART_MEDIAN_MS_500,
                       format_ms(at500["restart_median"])))
        checks.append(("N=500 restart p99 <= 10 ms",
                       at500["restart_p99"] * 1000 <= GOAL_RESTART_P99_MS_500,
                       format_ms(at500["restart_p99"])))
    at5000 = dpd(5000)
    if at5000:
        accounting = sizes[5000]["dpd"]["accounting"]
        checks += [
            ("N=5000 no restart missed", accounting["ok"]
             and at5000["burst"] is not None, _accounting_cell(accounting)),
            ("N=5000 RSS <= 60 MB", at5000["rss"] <= GOAL_RSS_MB_5000,
             "%.1f MB" % at5000["rss"]),
            ("N=5000 idle CPU <= 5 ms/min",
             at5000["idle_cpu"] <= GOAL_IDLE_MS_PER_MIN_5000,
             "%.0f ms/min" % at5000["idle_cpu"]),
            ("N=5000 --status < 200 ms", at5000["status"] is not None
             and at5000["status"] * 1000 < GOAL_STATUS_MS_5000,
             "-" if at5000["status"] is None else
             format_ms(at5000["status"])),
        ]
    return format_goals(checks)


# --- the plot ----------------------------------------------------------------------

PANELS = (
    ("cold", "cold start (s)", 1.0, "log"),
    ("restart_median", "restart after kill -9, median (ms)", 1000.0, "log"),
    ("restart_p99", "restart after kill -9, p99 (ms)", 1000.0, "log"),
    ("idle_cpu", "idle CPU (ms/min)", 1.0, "symlog"),
    ("rss", "RSS (MB)", 1.0, "linear"),
    ("status", "status command (ms)", 1000.0, "log"),
)


def write_plot(path, results):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    sizes = sorted(results["sizes"])
    # one colour per supervisor in every panel, whichever lines it has
    colours = {label: "C%d" % index for index, label in enumerate(LABELS)}
    figure, axes = pyplot.subplots(2, 3, figsize=(13, 7.5))
    for axis, (key, title, scale, yscale) in zip(axes.flat, PANELS):
        for label in LABELS:
            points = []
            for n in sizes:
                entry = results["sizes"][n].get(label)
                value = figures_of(entry)[key] if entry and "cold" in entry \
                    else None
                if value is not None:
                    points.append((n, value * scale))
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points],
                          marker="o", color=colours[label],
                          label=TITLES[label])
        axis.set_title(title, fontsize=10)
        axis.set_xscale("log")
        axis.set_xticks(sizes)
        axis.set_xticklabels([str(n) for n in sizes])
        axis.minorticks_off()
        axis.set_xlabel("programs (N)")
        if yscale == "symlog":
            axis.set_yscale("symlog", linthresh=1.0)
            axis.set_ylim(bottom=0)
        else:
            axis.set_yscale(yscale)
        axis.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle("dpd-workerd, supervisord, circus: N programs of "
                    "sh -c 'echo \\$\\$ >> f; exec sleep' (one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


# --- running it all ----------------------------------------------------------------

def write_files(args, results):
    """The files asked for, with what this run has measured so far."""
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(render_table(args, results) + "\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    if args.plot:
        write_plot(args.plot, results)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="100,500,2000,5000",
                        help="numbers of programs, comma-separated "
                        "(default 100,500,2000,5000)")
    parser.add_argument("--idle-seconds", type=float, default=60,
                        help="idle CPU window at each N (default 60)")
    parser.add_argument("--kills", type=int, default=50,
                        help="kill -9 of random programs under dpd-workerd "
                        "at each N (default 50)")
    parser.add_argument("--peer-kills", type=int, default=20,
                        help="the same under supervisord and circus, whose "
                        "restarts take seconds (default 20)")
    parser.add_argument("--burst", type=int, default=None,
                        help="programs killed at once (default N/10)")
    parser.add_argument("--peer-timeout", type=float, default=60,
                        help="a peer's cold start longer than this ends its "
                        "run (default 60 s)")
    parser.add_argument("--status-runs", type=int, default=5,
                        help="runs of each status command (default 5)")
    parser.add_argument("--only", default=",".join(LABELS),
                        help="supervisors to run, comma-separated, of %s "
                        "(default all)" % ",".join(LABELS))
    add_run_options(parser)
    parser.add_argument("--plot", metavar="FILE",
                        help="write a PNG plot of the figures to FILE")
    parser.add_argument("--json", metavar="FILE",
                        help="write every raw figure to FILE")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(field) for field in args.n.split(",")})
    except ValueError:
        parser.error("--n: comma-separated numbers, got %r" % args.n)
    args.only = [label.strip() for label in args.only.split(",")]
    unknown = set(args.only) - set(LABELS)
    if unknown:
        parser.error("--only: unknown %s (known: %s)"
                     % (", ".join(sorted(unknown)), ", ".join(LABELS)))
    if min(args.sizes) < 1 or args.kills < 1 or args.peer_kills < 1 \
            or args.status_runs < 1:
        parser.error("--n, --kills, --peer-kills and --status-runs must be "
                     "at least 1")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install -r "
                     "requirements-bench.txt")
    args.user = program_user()
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def body(folder, token, supervisors):
        os.chmod(folder, 0o711)  # the programs' user appends to STARTS
        results = {"nofile": raise_open_files_limit(), "sizes": {}}
        rng = random.Random(args.seed)
        dropped = {}
        for n in args.sizes:
            results["sizes"][n] = sizes = {}
            try:
                run_size(args, n, folder, token, supervisors, dropped, rng,
                         sizes)
            except BenchError as err:
                # keep what was measured, go on with the next N
                progress("N=%d: error: %s" % (n, err))
                sizes["error"] = str(err)
                for supervisor in list(supervisors):
                    stop(supervisor, supervisors)
                kill_marked(token)
            write_files(args, results)
        report(render_table(args, results), goals_summary(results))
        if args.plot:
            progress("plot written to %s" % args.plot)

    return run_benchmark(body, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
