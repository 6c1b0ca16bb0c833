#!/usr/bin/env python3
"""Benchmark: what health checks cost dpd-workerd, in one run.

Two workers side by side, each on N programs (``/bin/sleep``, as the same
user, output to /dev/null): one without checks, the other with a ``tcp``
check on each program every ``--interval`` seconds. Both run at once, so
that the load of a shared machine falls on both alike: their CPU is
measured over the same window and the kills take turns. The
checks go to ``--listeners`` sockets on 127.0.0.1 that this benchmark holds
and serves from a thread (accept, close): N programs listening themselves
would measure N Pythons, not the worker. The programs and the workers carry
``DPD_BENCH_MARKER=<run token>:...`` and are killed by pid at the end
(``worker_vs_supervisord``'s helpers), also after Ctrl-C or an error.

Figures, for each worker:

idle CPU   utime+stime of each worker (/proc/PID/stat) over
           ``--idle-seconds`` once every program is ``running`` (with
           checks: has passed its first check), as % of one core; with
           checks, also how many checks the listeners saw over that window
           against the N x window / interval expected.
restart    ``--kills`` kill -9 of random programs (none twice), each
           timed twice, polled every millisecond: from the kill to the new
           program exec'd (a child of the worker whose comm is ``sleep``:
           how worker_vs_supervisord measures it), and from the kill to
           the worker's status file showing it ``running`` with its new
           pid (with checks: its first check passed; the file is parsed
           only when it changed).

Then the ratios, with checks against without, and the goals of issue 12:
CPU under 2 % of one core, restart (to exec) within 20 %.

Usage: ``.venv/bin/python bench/health_checks.py [--n 500] [--interval 5]
[--idle-seconds 60] [--kills 50] [--listeners 4]``.
"""

import argparse
import json
import os
import random
import select
import signal
import socket
import statistics
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from figures import (  # noqa: E402
    SETTLE, machine_description, percentile, program_user, progress,
    run_benchmark)
from supervisors import BenchError, DpdWorker, cpu_seconds  # noqa: E402

from diprocd.ledger import status_path  # noqa: E402

STATUS_POLL = 0.001
RUNNING_TIMEOUT = 300.0
EVENT_TIMEOUT = 30.0
# Before the CPU window: the end of a burst of 500 starts (the status file,
# the journal, the reaping) is not the cost of the checks.
QUIET = 5.0
GOAL_CPU_PERCENT = 2.0
GOAL_RESTART_RATIO = 1.2


class Listeners:
    """``count`` listening sockets on 127.0.0.1, served by one thread that
    accepts and closes; counts the connections."""

    def __init__(self, count):
        self.socks = []
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(4096)
            sock.setblocking(False)
            self.socks.append(sock)
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def addresses(self):
        return ["127.0.0.1:%d" % sock.getsockname()[1] for sock in self.socks]

    def _serve(self):
        while not self._stop:
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for sock in ready:
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    self.accepted += 1

    def close(self):
        self._stop = True
        self._thread.join(2)
        for sock in self.socks:
            sock.close()


class CheckedWorker(DpdWorker):
    """dpd-workerd, each program with a tcp check (or none: ``check`` is
    None), seen through its status file."""

    def __init__(self, folder, token, names, user, label, checks):
        self.label = label
        self.checks = checks  # name -> check object, or None
        super().__init__(folder, token, names, user)
        self.status_file = status_path(self.pid_file)
        self._status_key = None
        self._status = {}

    def write_config(self, names):
        rename = super().write_config(names)
        staging = self.config_path + ".new"
        with open(staging) as handle:
            config = json.load(handle)
        for proc in config["procs"]:
            if self.checks is not None:
                proc["check"] = self.checks[proc["name"]]
        with open(staging, "w") as handle:
            json.dump(config, handle, indent=1)
        return rename

    def status(self):
        """{name: view} from the status file, re-read when it changed."""
        try:
            info = os.stat(self.status_file)
        except FileNotFoundError:
            return {}
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if key != self._status_key:
            try:
                with open(self.status_file) as handle:
                    self._status = json.load(handle).get("procs", {})
                self._status_key = key
            except (OSError, ValueError):
                pass  # replaced meanwhile: read it next time
        return self._status

    def running(self):
        return {name: entry["pid"] for name, entry in self.status().items()
                if entry.get("state") == "running" and entry.get("pid")}

    def wait_all_running(self, count, started):
        deadline = started + RUNNING_TIMEOUT
        while len(self.running()) < count:
            if time.perf_counter() > deadline:
                raise BenchError("%s: %d of %d running after %.0fs" % (
                    self.label, len(self.running()), count, RUNNING_TIMEOUT))
            self.check_alive()
            time.sleep(0.05)
        return time.perf_counter() - started

    def wait_restart(self, name, old_pid, began, timeout=EVENT_TIMEOUT):
        """Seconds from ``began`` (the kill) to a new pid of ``name`` having
        exec'd (seen in /proc, as worker_vs_supervisord sees it), and to the
        status file showing it ``running`` (with a check: passed)."""
        deadline = began + timeout
        exec_at = running_at = None
        while exec_at is None or running_at is None:
            now = time.perf_counter()
            if exec_at is None and self.scan().get(name) not in (None,
                                                                  old_pid):
                exec_at = now
            entry = self.status().get(name, {})
            if running_at is None and entry.get("state") == "running" \
                    and entry.get("pid") not in (None, old_pid):
                running_at = now
                exec_at = exec_at or now  # it had exec'd, one poll ago
            if now > deadline:
                self.check_alive()
                raise BenchError("%s: %s not running %.0fs after the kill"
                                 % (self.label, name, timeout))
            time.sleep(STATUS_POLL)
        return exec_at - began, running_at - began


def measure(workers, args, rng, listeners, progress):
    """{label: figures} of both workers, side by side: cold starts one
    after the other, then both running over the same CPU window, then the
    kills taking turns (so that the load of the shared machine falls on
    both alike)."""
    results = {}
    for worker in workers:
        started = time.perf_counter()
        worker.launch()
        cold = worker.wait_all_running(args.n, started)
        progress("%s: all %d running after %.2f s" % (worker.label, args.n,
                                                      cold))
        results[worker.label] = {"cold": cold, "exec": [], "running": []}
    time.sleep(QUIET)
    progress("CPU of both over %.0f s" % args.idle_seconds)
    accepted = listeners.accepted
    cpu = {worker.label: cpu_seconds(worker.pid) for worker in workers}
    time.sleep(args.idle_seconds)
    for worker in workers:
        worker.check_alive()
        results[worker.label]["cpu_percent"] = (
            cpu_seconds(worker.pid) - cpu[worker.label]) \
            / args.idle_seconds * 100
    results["checks"]["checks_seen"] = listeners.accepted - accepted
    victims = rng.sample(workers[0].names, args.kills)
    for index, name in enumerate(victims):
        for worker in workers:
            old_pid = worker.running().get(name)
            if old_pid is None:
                raise BenchError("%s: %s is not running" % (worker.label,
                                                            name))
            began = time.perf_counter()
            os.kill(old_pid, signal.SIGKILL)
            to_exec, to_running = worker.wait_restart(name, old_pid, began)
            results[worker.label]["exec"].append(to_exec)
            results[worker.label]["running"].append(to_running)
            time.sleep(SETTLE)
        if (index + 1) % 10 == 0:
            progress("restart %d/%d: %s" % (index + 1, args.kills, ", ".join(
                "%s exec %.1f ms, running %.1f ms" % (
                    label, results[label]["exec"][-1] * 1000,
                    results[label]["running"][-1] * 1000)
                for label in ("plain", "checks"))))
    return results


def render(args, results, listeners_count):
    plain, checked = results["plain"], results["checks"]
    expected = args.n * args.idle_seconds / args.interval

    def ms(values, fraction):
        if fraction == 0.5:
            return statistics.median(values) * 1000
        return percentile(values, fraction) * 1000

    rows = [
        "| all running (cold start) | %.2f s | %.2f s | %.2f |" % (
            plain["cold"], checked["cold"], checked["cold"] / plain["cold"]),
        "| worker CPU, %% of one core (%.0f s) | %.2f %% | %.2f %% | - |" % (
            args.idle_seconds, plain["cpu_percent"], checked["cpu_percent"])]
    for key, words in (("exec", "kill -9 to the new program exec'd"),
                       ("running", "kill -9 to `running` in the status "
                                   "file (with checks: passed)")):
        for fraction, stat in ((0.5, "median"), (0.99, "p99")):
            rows.append("| %s, %s (%d kills) | %.1f ms | %.1f ms | %.2f |" % (
                words, stat, args.kills, ms(plain[key], fraction),
                ms(checked[key], fraction),
                ms(checked[key], fraction) / ms(plain[key], fraction)))
    rows.append("| checks seen by the listeners | - | %d of %d expected "
                "| %.2f |" % (checked["checks_seen"], expected,
                              checked["checks_seen"] / expected))
    cpu_ok = checked["cpu_percent"] < GOAL_CPU_PERCENT
    restart_ok = ms(checked["exec"], 0.5) / ms(plain["exec"], 0.5) \
        <= GOAL_RESTART_RATIO
    return "\n".join([
        "machine: %s (shared with other jobs: figures are indicative)"
        % machine_description(),
        "%d programs; checks: tcp every %gs to %d listeners on 127.0.0.1"
        % (args.n, args.interval, listeners_count), "",
        "| figure | without checks | with checks | ratio |",
        "|---|---|---|---|"] + rows + [
        "", "goals (issue 12): CPU with checks under %g %% of one core: %s; "
        "restart (to exec) median within %d %%: %s" % (
            GOAL_CPU_PERCENT, "yes" if cpu_ok else "no",
            round((GOAL_RESTART_RATIO - 1) * 100),
            "yes" if restart_ok else "no")])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=4)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--user", default=program_user())
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (the workers' logs)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = ["prog%04d" % i for i in range(1, args.n + 1)]

    def body(folder, token, workers):
        listeners = Listeners(args.listeners)
        try:
            addresses = listeners.addresses()
            checks = {name: {"tcp": addresses[index % len(addresses)],
                             "interval": args.interval}
                      for index, name in enumerate(names)}
            for label, check in (("plain", None), ("checks", checks)):
                sub = os.path.join(folder, label)
                os.makedirs(sub)
                workers.append(CheckedWorker(sub, token, names, args.user,
                                             label, check))
            results = measure(workers, args, random.Random(args.seed),
                              listeners, progress)
            print(render(args, results, len(addresses)))
        finally:
            listeners.close()
    return run_benchmark(body, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
