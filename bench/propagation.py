#!/usr/bin/env python3
"""Benchmark: master-to-node propagation and fan-out of diprocd, on loopback.

Two figures, in one run, from one temporary folder:

propagation  a real ``dpd-masterd``, and one node made of a real
             ``dpd-clientd`` and ``dpd-workerd``. ``--changes`` times, the
             master file is saved (atomic rename) with the node's list
             holding one new probe process, ``/bin/sh -c 'date +%s.%N >
             OUT; exec sleep ...'``: from the instant before the rename to
             the time the probe wrote in OUT (it is running: forked, exec'd,
             its first command done). Median and p99.
fan-out      the same master with ``--clients`` nodes in its file and as many
             simulated clients in this process (one SUB socket each,
             subscribed to its node's topic, decoding every message with
             ``protocol.decode_update``). Once every client has had its list,
             one save changes every node's list: from the save to each
             client receiving the new sequence. Median and max (the goal: all
             within 1 s).
master       CPU (utime+stime from /proc/PID/stat) used by the master during
             each phase and while idle with ``--clients`` nodes and the
             default heartbeat, and its RSS (VmRSS).

Every process started here carries ``DPD_BENCH_MARKER=<run token>``; at the
end exactly those are found in /proc and killed by pid, never by name.

Usage: ``.venv/bin/python bench/propagation.py [--changes 50]
[--clients 200] [--idle-seconds 10]``.
"""

import argparse
import os
import platform
import pwd
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import simplejson as json
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from diprocd import protocol  # noqa: E402
from diprocd.kernel import cpu_ticks, rss_bytes  # noqa: E402
from helpers import free_port, marked_pids, wait_for  # noqa: E402  (the tests' helpers)

MARKER_VAR = "DPD_BENCH_MARKER"
USER = pwd.getpwuid(os.geteuid()).pw_name
TICK = os.sysconf("SC_CLK_TCK")


def write_json(path, obj):
    tmp = path + ".tmp-bench"
    with open(tmp, "w") as handle:
        json.dump(obj, handle)
    os.rename(tmp, path)


def cpu_seconds(pid):
    return cpu_ticks(pid) / TICK


def rss_mb(pid):
    return (rss_bytes(pid) or 0) / 1048576.0


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered)
                                                   + 0.5)) - 1))
    return ordered[index]


class Bench:
    def __init__(self, args):
        self.args = args
        self.token = uuid.uuid4().hex
        self.dir = tempfile.mkdtemp(prefix="dpd-bench-")
        self.stats = "tcp://127.0.0.1:%d" % free_port()
        self.updates = "tcp://127.0.0.1:%d" % free_port()
        self.master_conf = os.path.join(self.dir, "master.json")
        self.daemons = []

    def start(self, command, config, log_name):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env[MARKER_VAR] = self.token
        log = open(os.path.join(self.dir, log_name), "ab")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bin", command), "-f",
             config], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.daemons.append(proc)
        return proc

    def write_master(self, nodes, heartbeat=None):
        doc = {"pid_file": os.path.join(self.dir, "master.pid"),
               "master_stats": self.stats, "master_updates": self.updates,
               "nodes": nodes}
        if heartbeat:
            doc["heartbeat"] = heartbeat
        write_json(self.master_conf, doc)

    def probe(self, index):
        out = os.path.join(self.dir, "probe-%d.out" % index)
        return out, {
            "name": "probe.%d" % index, "run": "/bin/sh",
            "args": ["-c", 'date +%s.%N > "$1"; exec sleep 100000', "sh",
                     out],
            "user": USER, "env": {MARKER_VAR: self.token},
            "restart": False, "stop_timeout": 1}

    # -- propagation: master file -> process running on the node ----------

    def propagation(self):
        node_dir = os.path.join(self.dir, "node")
        os.mkdir(node_dir)
        worker_conf = os.path.join(node_dir, "worker.json")
        write_json(worker_conf, {"pid_file": os.path.join(node_dir, "w.pid"),
                                 "procs": []})
        client_conf = os.path.join(node_dir, "client.json")
        write_json(client_conf, {
            "pid_file": os.path.join(node_dir, "client.pid"),
            "master_stats": self.stats, "master_updates": self.updates,
            "node_name": "node1", "conf_file": worker_conf})
        self.write_master({"node1": []})
        master = self.start("dpd-masterd", self.master_conf, "master.log")
        self.master = master
        self.start("dpd-workerd", worker_conf, "worker.log")
        self.start("dpd-clientd", client_conf, "client.log")
        # Ready when the client has applied the master's (empty) list.
        nodes_file = os.path.join(self.dir, "master.nodes.json")

        def in_sync():
            try:
                with open(nodes_file) as handle:
                    return json.load(handle)["nodes"]["node1"]["in_sync"]
            except (OSError, ValueError, KeyError):
                return False
        wait_for(in_sync, timeout=15, what="the node to join the master")
        cpu_before = cpu_seconds(master.pid)
        latencies = []
        for index in range(self.args.changes):
            out, proc = self.probe(index)
            before = time.time()
            self.write_master({"node1": [proc]})
            wait_for(lambda: os.path.exists(out) and os.path.getsize(out),
                     timeout=10, interval=0.0005, what="probe %d to run" % index)
            with open(out) as handle:
                started = float(handle.read().strip())
            latencies.append((started - before) * 1000.0)
        cpu = cpu_seconds(master.pid) - cpu_before
        self.write_master({"node1": []})
        return latencies, cpu

    # -- fan-out: one change to N simulated clients -----------------------------

    def fanout(self):
        count = self.args.clients
        names = ["sim%03d" % i for i in range(count)]
        _, proc = self.probe(0)
        lists = {name: [dict(proc, name="p")] for name in names}
        lists["node1"] = []
        self.write_master(lists)  # the running master reloads it
        context = zmq.Context()
        sockets = {}
        poller = zmq.Poller()
        for name in names:
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(name))
            sub.connect(self.updates)
            sockets[sub] = name
            poller.register(sub, zmq.POLLIN)
        seqs = {}
        # Joined when every client has had its list (the heartbeat).
        deadline = time.monotonic() + 30
        while len(seqs) < count:
            if time.monotonic() > deadline:
                raise SystemExit("fan-out: only %d of %d clients joined"
                                 % (len(seqs), count))
            for sub, _ in poller.poll(100):
                update = protocol.decode_update(sub.recv_multipart(),
                                                sockets[sub])
                seqs[update.node] = update.seq
        cpu_before = cpu_seconds(self.master.pid)
        for name in names:
            lists[name] = [dict(proc, name="p", args=proc["args"] + ["x"])]
        before = time.time()
        self.write_master(lists)
        received = {}
        deadline = time.monotonic() + 10
        while len(received) < count and time.monotonic() < deadline:
            for sub, _ in poller.poll(100):
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    update = protocol.decode_update(frames, sockets[sub])
                    if update.seq > seqs[update.node] and \
                            update.node not in received:
                        received[update.node] = (time.time() - before) * 1000
        cpu = cpu_seconds(self.master.pid) - cpu_before
        for sub in sockets:
            sub.close(linger=0)
        context.term()
        return received, cpu

    def idle(self):
        cpu_before = cpu_seconds(self.master.pid)
        time.sleep(self.args.idle_seconds)  # a measurement window
        cpu = cpu_seconds(self.master.pid) - cpu_before
        return cpu, rss_mb(self.master.pid)

    def close(self):
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.daemons:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in marked_pids(self.token, MARKER_VAR):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10)
    args = parser.parse_args()
    bench = Bench(args)
    try:
        latencies, cpu_prop = bench.propagation()
        received, cpu_fan = bench.fanout()
        idle_cpu, rss = bench.idle()
    finally:
        bench.close()
    print("diprocd propagation benchmark (%s, %s, Python %s, %d CPUs)"
          % (platform.node(), platform.release(), platform.python_version(),
             os.cpu_count()))
    print("propagation, master file saved -> process running on the node, "
          "%d changes:" % len(latencies))
    print("  median %.1f ms   p99 %.1f ms   min %.1f ms   max %.1f ms"
          % (statistics.median(latencies), percentile(latencies, 0.99),
             min(latencies), max(latencies)))
    print("  master CPU over the %d changes: %.0f ms" % (len(latencies),
                                                        cpu_prop * 1000))
    times = sorted(received.values())
    print("fan-out, one save changing %d nodes -> %d simulated clients:"
          % (args.clients, args.clients))
    print("  received by %d of %d; median %.1f ms, max %.1f ms"
          % (len(times), args.clients, statistics.median(times) if times
             else float("nan"), max(times) if times else float("nan")))
    print("  master CPU for that change: %.0f ms" % (cpu_fan * 1000))
    print("master idle with %d nodes (heartbeat 3 s): %.1f ms CPU per minute,"
          " RSS %.1f MB" % (args.clients + 1,
                            idle_cpu * 1000 * 60 / args.idle_seconds, rss))
    return 0 if len(times) == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
