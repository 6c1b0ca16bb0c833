#!/usr/bin/env python3
"""Benchmark: dpdctl through the master, on loopback.

status   a real ``dpd-masterd`` with --nodes nodes; the nodes are
         simulated in this process (one PUSH socket sending, for each node,
         a hello and a status report of --procs running processes, as
         dpd-clientd does). Once the master has heard every node, ``dpdctl
         --master CONFIG status`` is run --runs times as a command (process
         start included), from exec to exit. Median and max (goal: < 200 ms).
restart  a real master and one real node (dpd-clientd + dpd-workerd) with
         one ``/bin/sleep``; ``dpdctl restart node1 p`` --restarts times:
         from the request to the reply that the new process runs (dpdctl's
         code in this process; goal: median < 50 ms), and as a command,
         from exec to exit (the interpreter's start-up included).

Every process started here carries this run's marker and is killed by pid
at the end, never by name.

Usage: ``.venv/bin/python bench/dpdctl.py [--nodes 100] [--procs 20]
[--runs 10] [--restarts 20]``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from diprocd import ctl, protocol  # noqa: E402
from helpers import (Master, Node, command_argv, kill_marked,  # noqa: E402
                     marked_env, wait_for)


def timed(argv, env):
    start = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.monotonic() - start, result


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered)
                                                              - 1))))]


def bench_status(args, folder, marker):
    names = ["sim%03d" % i for i in range(args.nodes)]
    master = Master(os.path.join(folder, "status"), marker, heartbeat=3,
                    nodes={name: [] for name in names})
    os.makedirs(master.dir, exist_ok=True)
    master.start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(master.stats)
    view = {"procs": {"p%02d" % i: {
        "state": "running", "pid": 1000 + i, "started_at": time.time(),
        "since": time.time(), "starts": 1, "last_exit": None, "error": None,
        "adopted": False, "ok": True, "held": False}
        for i in range(args.procs)}}
    try:
        def all_heard():
            for name in names:
                push.send_multipart(protocol.encode_report(protocol.Report(
                    protocol.KIND_STATUS, name, status=view, interval=5)))
            nodes = (master.view() or {}).get("nodes", {})
            return len(nodes) == len(names)
        wait_for(all_heard, timeout=30, interval=0.2,
                 what="the master to hear every simulated node")
        argv = command_argv("dpdctl", ["--master", master.config_path,
                                       "status"])
        env = marked_env(marker)
        times = []
        for _ in range(args.runs):
            seconds, result = timed(argv, env)
            rows = [line for line in result.stdout.splitlines()
                    if line.split()[2:4] == ["running"] or " running " in line]
            # Exit 1: the simulated nodes hold no list, so not "in sync".
            if result.returncode != 1 or len(rows) != args.nodes * args.procs:
                raise SystemExit("dpdctl status: exit %d, %d running rows: %s"
                                 % (result.returncode, len(rows),
                                    (result.stdout + result.stderr)[:400]))
            times.append(seconds)
        return times
    finally:
        push.close(linger=0)
        context.term()
        master.stop()


def bench_restart(args, folder, marker):
    node = Node(os.path.join(folder, "restart", "node1"), marker, "node1")
    master = Master(os.path.join(folder, "restart"), marker, heartbeat=3,
                    nodes={"node1": [node.proc("p", "/bin/sleep", "99999")]})
    master.start()
    node.join(master, verbose=False, status_interval=5)
    argv = command_argv("dpdctl", ["--master", master.config_path, "restart",
                                   "node1", "p"])
    env = marked_env(marker)
    try:
        node.wait_running("p", timeout=20)
        wait_for(lambda: "p" in (((master.view() or {}).get("nodes", {})
                                  .get("node1", {}).get("status") or {})
                                 .get("procs", {})),
                 timeout=20, what="the master to see p")
        commands, inside = [], []
        for _ in range(args.restarts):
            before = node.wait_running("p")
            seconds, result = timed(argv, env)
            if result.returncode != 0:
                raise SystemExit("dpdctl restart: %r" % (result,))
            assert node.wait_running("p") != before
            commands.append(seconds)
        # The same, from the request to the reply that the new process
        # runs, without the interpreter's start-up: dpdctl's own code.
        link = ctl.MasterLink(master.config_path)
        options = argparse.Namespace(timeout=10.0)
        for _ in range(args.restarts):
            before = node.wait_running("p")
            start = time.monotonic()
            with open(os.devnull, "w") as quiet:
                saved, sys.stdout = sys.stdout, quiet
                try:
                    code = ctl.cmd_restart(link, options, "node1", ["p"])
                finally:
                    sys.stdout = saved
            inside.append(time.monotonic() - start)
            assert code == 0 and node.wait_running("p") != before
        return commands, inside
    finally:
        node.close()
        master.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--procs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()
    marker = "dpdbench-" + uuid.uuid4().hex[:12]
    folder = tempfile.mkdtemp(prefix="dpd-bench-ctl-")
    try:
        status = bench_status(args, folder, marker)
        restart, restart_inside = bench_restart(args, folder, marker)
    finally:
        kill_marked(marker, timeout=30)
    ms = lambda s: s * 1000.0  # noqa: E731
    print("dpdctl status, %d nodes x %d processes, %d runs (command start to "
          "exit): median %.0f ms, max %.0f ms (goal < 200 ms: %s)" % (
              args.nodes, args.procs, len(status),
              ms(statistics.median(status)), ms(max(status)),
              "met" if max(status) < 0.2 else "NOT met"))
    print("dpdctl restart through the master, %d runs, from the request to "
          "the reply that the new process runs: median %.1f ms, p90 %.1f ms "
          "(goal median < 50 ms: %s); as a command, interpreter start "
          "included: median %.1f ms, p90 %.1f ms" % (
              len(restart_inside), ms(statistics.median(restart_inside)),
              ms(percentile(restart_inside, 0.9)),
              "met" if statistics.median(restart_inside) < 0.05
              else "NOT met", ms(statistics.median(restart)),
              ms(percentile(restart, 0.9))))


if __name__ == "__main__":
    main()
