#!/usr/bin/env python3
"""Benchmark: dpd-workerd against supervisord, side by side, in one run.

Both supervisors run from one temporary folder on the same N programs
(``/bin/sleep 100000`` as the same user, output to /dev/null or discarded).
How the programs are marked, seen running (in /proc, never asking the
supervisor) and killed at the end (by pid, never by name): see
``supervisors.py``; the figures and the run: ``figures.py``.

Figures, in the order they are measured:

cold start   from launching the supervisor to all N programs running;
             dpd-workerd first, then supervisord (one at a time: 2 cores).
idle CPU     utime+stime of the supervisor itself (/proc/PID/stat) over
             ``--idle-seconds``, both measured over the same window, as ms
             per minute; RSS is VmRSS at the end of that window.
restart      ``--kills`` kill -9 of random programs (no program twice), taking
             turns between the supervisors: from the kill to the new process
             running, the kernel's time of its exec (``procevents``: exec
             events, as root; else /proc polled every millisecond, the
             output says which).
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
import os
import random
import statistics
import sys
import time

from figures import (RESTART_SEEN, SETTLE, add_run_options, format_goals, format_ms,
                     format_ratio, machine_description, measure_cold_start,
                     measure_idle, measure_restarts, percentile,
                     program_user, progress, report, run_benchmark)
from supervisors import (EVENT_TIMEOUT, PROGRAM, BenchError, DpdWorker,
                         Supervisord)

from diprocd.ledger import read_document, status_path  # noqa: E402

# Goals of issue 2 for dpd-workerd at N=500.
GOAL_RESTART_MEDIAN_MS = 20.0
GOAL_COLD_START_RATIO = 0.5
GOAL_IDLE_CPU_MS_PER_MIN = 20.0
GOAL_RSS_MB = 30.0
GOAL_RELOAD_MEDIAN_MS = 50.0


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




# --- reporting ---------------------------------------------------------------------

def _yes(met):
    return "**yes**" if met else "**no**"


def render_table(args, results):
    cold, idle, restart, reload = (results["cold"], results["idle"],
                                   results["restart"], results["reload"])
    dpd_restart = restart["dpd"]
    sup_restart = restart["supervisord"]
    rows = []

    def row(what, dpd, sup, dpd_text, sup_text, goal, met):
        rows.append("| %s | %s | %s | %s | %s | %s |"
                    % (what, dpd_text, sup_text, format_ratio(dpd, sup), goal,
                       _yes(met) if met is not None else "-"))

    median_dpd = statistics.median(dpd_restart)
    median_sup = statistics.median(sup_restart)
    row("restart after kill -9, median (%d kills)" % args.kills,
        median_dpd, median_sup, format_ms(median_dpd),
        format_ms(median_sup),
        "< %.0f ms" % GOAL_RESTART_MEDIAN_MS,
        median_dpd * 1000 < GOAL_RESTART_MEDIAN_MS)
    p90_dpd, p90_sup = percentile(dpd_restart, 0.9), percentile(sup_restart,
                                                                 0.9)
    row("restart after kill -9, p90", p90_dpd, p90_sup, format_ms(p90_dpd),
        format_ms(p90_sup), "-", None)
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
        reload_dpd, reload_ctl, format_ms(reload_dpd),
        format_ms(reload_ctl),
        "< %.0f ms" % GOAL_RELOAD_MEDIAN_MS,
        reload_dpd * 1000 < GOAL_RELOAD_MEDIAN_MS)
    row("add a program, supervisord over XML-RPC (no supervisorctl)",
        reload_dpd, reload_rpc, format_ms(reload_dpd), format_ms(reload_rpc),
        "-", None)

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
        "Programs: `%s` as `%s`; dpd-workerd: output to /dev/null; "
        "supervisord: `startsecs=0`, `autorestart=true`, `startretries=1000`, "
        "`stdout_logfile=NONE` with `redirect_stderr=true` (it still reads "
        "the pipes), `-n`, unix socket only." % (
            " ".join(PROGRAM), args.user),
        "dpd-workerd starts processes with %s." % results.get("spawner"),
        "A program counts as running when it is a child of the supervisor "
        "whose /proc comm is `sleep` (exec done) and whose environment "
        "carries its marker; the benchmark never asks the supervisors.",
        "Restart: kill -9 of a random program to its new process running, "
        "%s. Cold start: from launching the supervisor to all "
        "%d running. Idle CPU: utime+stime in /proc/PID/stat (10 ms ticks) "
        "over the same %d s for both%s. RSS: VmRSS at the end of that window."
        % (RESTART_SEEN[0], args.n, args.idle_seconds,
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
    return format_goals(checks)


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
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.kills < 1 or args.reloads < 1:
        parser.error("--n, --kills and --reloads must be at least 1")
    if args.kills > args.n:
        parser.error("--kills must not exceed --n (no program is killed "
                     "twice: dpd-workerd allows 5 starts a minute)")
    args.user = program_user()
    return args




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
    time.sleep(2 * SETTLE)
    progress("idle CPU and RSS over %.0f s" % args.idle_seconds)
    results["idle"] = measure_idle((dpd, sup), args.idle_seconds)
    results["spawner"] = (read_document(status_path(dpd.pid_file))
                          or {}).get("spawner")
    progress("restart after kill -9, %d each" % args.kills)
    victims = {s.label: rng.sample(s.names, args.kills) for s in (dpd, sup)}
    results["restart"] = measure_restarts((dpd, sup), victims, progress)
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



def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def body(folder, token, supervisors):
        results = run(args, folder, token, supervisors)
        table = render_table(args, results)
        report(table, goals_summary(results), args.markdown)

    return run_benchmark(body, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
