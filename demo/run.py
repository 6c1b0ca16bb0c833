#!/usr/bin/env python3
"""`make demo`: a master and two nodes on this machine, in the foreground.

Without root, in a fresh temporary folder, on free loopback ports, it runs
one dpd-masterd and, for each of two nodes (node1, node2), a dpd-workerd and
a dpd-clientd: the real distributed setup of the README, shrunk onto one
machine. It prints the cluster's state (read from each worker's status file)
whenever it changes, and every warning and error the daemons log (their
output is in logs/<daemon>.out). Edit the master file it names to see a
change reach a node, or an invalid edit refused on the screen. Ctrl-C stops everything it started: the clients and the master, then
each worker's processes (by emptying the worker's file, as a master would),
then the workers.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diprocd.daemon import read_pid  # noqa: E402
from diprocd.fileio import atomic_write  # noqa: E402
from diprocd.kernel import is_alive  # noqa: E402
from diprocd.ledger import read_view as read_status, status_path as status_file_path  # noqa: E402

NODES = ("node1", "node2")
# Passed into the demo's processes, whose environment the worker otherwise
# cleans: the test suite finds every process it started by this marker.
PASS_ENV = ("DPD_TEST_MARKER",)
POLL = 0.2
# A daemon's log line (diprocd.daemon.LOG_FORMAT): time, name[pid], level.
LOG_LINE = re.compile(r"^\S+ (\d\d:\d\d:\d\d),\d+ \S+\[\d+\] ([A-Z]+) (.*)$")
QUIET_LEVELS = ("DEBUG", "INFO")


def atomic_write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=4) + "\n")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_processes(node, folder):
    """Each node's example processes: a long sleep and a ticker."""
    env = {key: os.environ[key] for key in PASS_ENV if key in os.environ}
    return [
        {"name": "sleep.%s" % node, "run": "/bin/sleep", "args": ["3600"],
         "env": env, "logs": os.path.join(folder, "sleep.%s.log" % node)},
        {"name": "ticker.%s" % node, "run": "/bin/sh",
         "args": ["-c", "while :; do date; sleep 5; done"], "env": env,
         "logs": os.path.join(folder, "ticker.%s.log" % node)},
    ]


class Demo:
    def __init__(self, folder, verbose=False):
        self.folder = folder
        self.verbose = verbose
        self.children = []  # (label, Popen)
        stats, updates = free_port(), free_port()
        self.endpoints = {"master_stats": "tcp://127.0.0.1:%d" % stats,
                          "master_updates": "tcp://127.0.0.1:%d" % updates}
        self.master_conf = os.path.join(folder, "master.json")
        self.workers = {}  # node -> (worker conf, worker pid file)

    def write_configs(self):
        logs = os.path.join(self.folder, "logs")
        os.makedirs(logs, exist_ok=True)
        master = dict(self.endpoints,
                      pid_file=os.path.join(self.folder, "master", "dpd-masterd.pid"),
                      log_file=os.path.join(logs, "dpd-masterd.log"),
                      nodes={n: node_processes(n, logs) for n in NODES})
        os.makedirs(os.path.join(self.folder, "master"))
        atomic_write_json(self.master_conf, master)
        for node in NODES:
            home = os.path.join(self.folder, node)
            os.makedirs(home)
            worker_conf = os.path.join(home, "worker.json")
            pid_file = os.path.join(home, "dpd-workerd.pid")
            atomic_write_json(worker_conf, {
                "pid_file": pid_file,
                "log_file": os.path.join(logs, "dpd-workerd.%s.log" % node),
                "procs": []})
            atomic_write_json(os.path.join(home, "client.json"), dict(
                self.endpoints, node_name=node, conf_file=worker_conf,
                pid_file=os.path.join(home, "dpd-clientd.pid"),
                log_file=os.path.join(logs, "dpd-clientd.%s.log" % node)))
            self.workers[node] = (worker_conf, pid_file)

    def start(self, label, command, config):
        """Run bin/<command> -f CONFIG, its output in logs/<label>.out.
        Its own session: Ctrl-C reaches the demo, which stops it in order."""
        out = open(os.path.join(self.folder, "logs", label + ".out"), "ab")
        args = [sys.executable, os.path.join(ROOT, "bin", command), "-f"]
        if self.verbose:
            args.append("-v")
        with out:
            proc = subprocess.Popen(args + [config], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.children.append((label, proc))
        return proc

    def labels(self):
        """(label, command, config) of each daemon, in starting order."""
        daemons = [("worker." + node, "dpd-workerd", self.workers[node][0])
                   for node in NODES]
        daemons.append(("master", "dpd-masterd", self.master_conf))
        daemons.extend(("client." + node, "dpd-clientd",
                        os.path.join(self.folder, node, "client.json"))
                       for node in NODES)
        return daemons

    def start_all(self):
        for label, command, config in self.labels():
            self.start(label, command, config)

    def state(self):
        """(node, process, state, pid) rows from the workers' status files."""
        rows = []
        for node in NODES:
            document = read_status(status_file_path(self.workers[node][1]))
            if document is None:
                rows.append((node, "-", "no status yet", "-"))
                continue
            if not document["procs"]:
                rows.append((node, "-", "no processes", "-"))
            for name, proc in sorted(document["procs"].items()):
                rows.append((node, name, proc.get("state", "?"),
                             str(proc.get("pid") or "-")))
        return rows

    def dead_children(self):
        return [(label, proc.returncode) for label, proc in self.children
                if proc.poll() is not None]

    def stop(self):
        """Clients and master first (so nothing rewrites the workers' files),
        then each worker's processes, by emptying its file, then the workers.
        Whatever is still there after the deadlines is killed."""
        print("\nstopping...", flush=True)
        for label, proc in self.children:
            if not label.startswith("worker.") and proc.poll() is None:
                proc.terminate()
        self._wait([p for l, p in self.children if not l.startswith("worker.")])
        for node, (conf, pid_file) in self.workers.items():
            atomic_write_json(conf, {"pid_file": pid_file, "procs": [],
                                     "log_file": os.path.join(
                                         self.folder, "logs",
                                         "dpd-workerd.%s.log" % node)})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.supervised_pids():
            time.sleep(POLL)
        for label, proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        self._wait([p for _, p in self.children])
        for pid in self.supervised_pids():  # only after a stuck stop
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def supervised_pids(self):
        """Live processes the workers started (from their pid files)."""
        pids = []
        for node in NODES:
            home = os.path.join(self.folder, node)
            for name in os.listdir(home):
                if name.endswith(".pid") and not name.startswith("dpd-"):
                    pid = read_pid(os.path.join(home, name))
                    if pid and is_alive(pid):
                        pids.append(pid)
        return pids

    @staticmethod
    def _wait(procs, timeout=10):
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class LogTail:
    """The new lines of the daemons' outputs (logs/<label>.out) that an
    operator must see: a log line of level WARNING or above, or anything that
    is not a log line (a traceback, a message printed before logging)."""

    def __init__(self, folder, labels):
        self.paths = {label: os.path.join(folder, "logs", label + ".out")
                      for label in labels}
        self.offsets = dict.fromkeys(labels, 0)

    def new_lines(self):
        shown = []
        for label, path in self.paths.items():
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets[label])
                    data = handle.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # whole lines only
            self.offsets[label] += end
            for raw in data[:end].decode("utf-8", "replace").splitlines():
                match = LOG_LINE.match(raw)
                if match is None:
                    if raw.strip():
                        shown.append("%s %-14s %s" % (
                            time.strftime("%H:%M:%S"), label, raw))
                elif match.group(2) not in QUIET_LEVELS:
                    shown.append("%s %-14s %s %s" % (
                        match.group(1), label, match.group(2), match.group(3)))
        return shown


def render(rows):
    lines = ["%s  cluster state" % time.strftime("%H:%M:%S")]
    for node, name, state, pid in rows:
        lines.append("  %-6s %-14s %-14s pid %s" % (node, name, state, pid))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="use this (new) folder instead of a "
                        "temporary one; kept afterwards")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder at the end")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="run the daemons with -v (debug logs)")
    args = parser.parse_args(argv)
    folder = args.dir or tempfile.mkdtemp(prefix="diprocd-demo-")
    os.makedirs(folder, exist_ok=True)
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(1))

    demo = Demo(folder, args.verbose)
    demo.write_configs()
    print("diprocd demo in %s" % folder)
    print("  master file: %s  (edit it: changes reach the nodes)" % demo.master_conf)
    print("  logs:        %s  (warnings and errors show here too)"
          % os.path.join(folder, "logs"))
    print("  endpoints:   %s (stats), %s (updates)"
          % (demo.endpoints["master_stats"], demo.endpoints["master_updates"]))
    print("Ctrl-C stops everything.\n", flush=True)
    shown, reported = None, set()
    tail = LogTail(folder, [label for label, _, _ in demo.labels()])
    try:
        demo.start_all()
        while not interrupted:
            for line in tail.new_lines():
                print(line, flush=True)
            rows = demo.state()
            if rows != shown:
                print(render(rows), flush=True)
                shown = rows
            for label, code in demo.dead_children():
                if label not in reported:
                    reported.add(label)
                    print("%s exited (%s): see %s" % (
                        label, code, os.path.join(folder, "logs", label + ".out")),
                        flush=True)
            time.sleep(POLL)
    finally:
        demo.stop()
        if args.dir or args.keep:
            print("kept %s" % folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
