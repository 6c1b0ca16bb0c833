#!/usr/bin/env python3
"""Benchmark: master-to-node propagation and fan-out of diprocd, on loopback.

Each figure is taken in one run without and with CURVE, side by side: two
clusters from one temporary folder, ``plain`` and ``curve``, each a real
``dpd-masterd`` and one node made of a real ``dpd-clientd`` and
``dpd-workerd``; ``curve``'s master has a key pair and a clients folder,
its node the key pair and master key ``dpdctl keygen`` made (CURVE on every
socket, each node's list sealed to its key). ``--curve off`` or ``on``
runs one cluster only.

propagation  ``--changes`` times per cluster, taking turns (plain then
             curve, then curve then plain, ...), the master file is saved
             (atomic rename) with the node's list holding one new probe
             process, ``/bin/sh -c 'date +%s.%N > OUT; exec sleep ...'``:
             from the instant before the rename to the time the probe wrote
             in OUT (it is running: forked, exec'd, its first command done).
             Median and p99, and the ratio of the medians (with CURVE /
             without; the goal: at most 1.5).
fan-out      for each count of ``--clients`` (default 1000 and 5000), the
             same master with that many nodes in its file (instead of the
             last count's) and as many simulated clients in this process
             (one SUB socket each, subscribed to its node's topic and to
             the beat's, decoding every list with
             ``protocol.decode_update``; with CURVE each has its own key
             pair, made with ``zmq.curve_keypair``, its public key written
             as NODE.key in the master's clients folder, its SUB socket a
             CURVE client, and it opens each body with ``keys.Opener``
             first). Once every client has heard the master (a beat, or
             its list: a master that republishes every list at each
             heartbeat, as diprocd did before the beat, sends no beat),
             one save changes every node's list: from the save to each
             client receiving the new sequence (the time of the ``recv``,
             before opening and decoding, which in a real cluster each
             node does on its own CPU). Median and max (the goal: all
             within 1 s). One cluster after the other: the first is
             stopped (after its idle figures) before the second's
             fan-out, so that its heartbeat of N nodes does not run
             meanwhile.
master       CPU (every thread's, from /proc/PID/task/*/schedstat) used by
             the master during each phase and while idle after each
             fan-out (from IDLE_SETTLE s after its change, for
             ``--idle-seconds``; N nodes, the default heartbeat, the
             simulated clients still connected; they send no reports),
             and its RSS (VmRSS).

``--tree DIR`` runs the daemons of another checkout of diprocd (e.g. one
of main's commit: ``git worktree add /tmp/before main``), for a before/after
comparison with this benchmark's measurements unchanged.

Every process started here carries ``DPD_BENCH_MARKER=<run token>``; at the
end exactly those are found in /proc and killed by pid, never by name.

Usage: ``.venv/bin/python bench/propagation.py [--changes 50]
[--clients 1000 5000] [--idle-seconds 60] [--curve both|off|on]
[--heartbeat SECONDS] [--tree DIR]``.
"""

import argparse
import contextlib
import io
import os
import platform
import pwd
import shutil
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

from diprocd import ctl, keys, protocol  # noqa: E402
from diprocd.kernel import (cpu_ticks, raise_open_files_limit,  # noqa: E402
                            rss_bytes)
from helpers import free_port, marked_pids, wait_for  # noqa: E402  (the tests' helpers)

MARKER_VAR = "DPD_BENCH_MARKER"
USER = pwd.getpwuid(os.geteuid()).pw_name
TICK = os.sysconf("SC_CLK_TCK")
RATIO_GOAL = 1.5  # propagation median with CURVE / without
FANOUT_GOAL_MS = 1000.0
IDLE_GOAL_MS = 100  # master CPU per minute, idle with 1000 nodes
IDLE_SETTLE = 2.0  # after the fan-out's change, before the idle window


def write_json(path, obj):
    tmp = path + ".tmp-bench"
    with open(tmp, "w") as handle:
        json.dump(obj, handle)
    os.rename(tmp, path)


def cpu_seconds(pid):
    """CPU time of every thread of ``pid`` (ZeroMQ's I/O thread too): the
    scheduler's own count in ns (/proc/PID/task/*/schedstat), where
    utime+stime are sampled at each 10 ms tick (a daemon that wakes on a
    timer is then charged whole ticks it did not use)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    if total == 0:  # no schedstat (a kernel without CONFIG_SCHED_INFO)
        return cpu_ticks(pid) / TICK
    return total / 1e9


def rss_mb(pid):
    return (rss_bytes(pid) or 0) / 1048576.0


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered)
                                                   + 0.5)) - 1))
    return ordered[index]


def keygen(folder, name):
    """``dpdctl keygen NAME --dir folder`` (its output kept quiet); the
    (public, secret) paths."""
    with contextlib.redirect_stdout(io.StringIO()):
        if ctl.main(["keygen", name, "--dir", folder]) != 0:
            raise SystemExit("dpdctl keygen %s failed" % name)
    return (os.path.join(folder, name + keys.PUBLIC_SUFFIX),
            os.path.join(folder, name + keys.SECRET_SUFFIX))


def write_public_key(path, public):
    """A public key file as zmq.auth.create_certificates writes it."""
    with open(path, "w") as handle:
        handle.write("#   ZeroMQ CURVE Public Certificate\n"
                     "#   Written by diprocd's bench/propagation.py\n"
                     "metadata\ncurve\n    public-key = \"%s\"\n"
                     % public.decode("ascii"))


def stop(daemons):
    """SIGTERM the daemons started (Popen objects: by pid), then wait."""
    for proc in daemons:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in daemons:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Cluster:
    """One master and its node1 (client + worker) in ``bench.dir/NAME``,
    on ports of their own; ``curve``: with CURVE keys."""

    def __init__(self, bench, curve):
        self.bench = bench
        self.curve = curve
        self.name = "curve" if curve else "plain"
        self.label = "with CURVE" if curve else "without CURVE"
        self.dir = os.path.join(bench.dir, self.name)
        os.mkdir(self.dir)
        self.stats = "tcp://127.0.0.1:%d" % free_port()
        self.updates = "tcp://127.0.0.1:%d" % free_port()
        self.master_conf = os.path.join(self.dir, "master.json")
        self.master = None
        self.daemons = []
        self.curve_master = {}  # the curve_* keys of each file
        self.curve_client = {}
        if curve:
            key_dir = os.path.join(self.dir, "keys")
            self.clients_dir = os.path.join(self.dir, "clients")
            os.mkdir(key_dir)
            os.mkdir(self.clients_dir)
            master_public, master_secret = keygen(key_dir, "master")
            node_public, node_secret = keygen(key_dir, "node1")
            shutil.copy(node_public, self.clients_dir)
            self.master_public = keys.read_key_file(master_public,
                                                    "master").public
            self.curve_master = {"curve_secret_key": master_secret,
                                 "curve_clients_dir": self.clients_dir}
            self.curve_client = {"curve_secret_key": node_secret,
                                 "curve_master_key": master_public}

    def write_master(self, nodes):
        doc = {"pid_file": os.path.join(self.dir, "master.pid"),
               "master_stats": self.stats, "master_updates": self.updates,
               "nodes": nodes}
        if self.bench.args.heartbeat is not None:
            doc["heartbeat"] = self.bench.args.heartbeat
        doc.update(self.curve_master)
        write_json(self.master_conf, doc)

    def probe(self, index):
        out = os.path.join(self.dir, "probe-%d.out" % index)
        return out, {
            "name": "probe.%d" % index, "run": "/bin/sh",
            "args": ["-c", 'date +%s.%N > "$1"; exec sleep 100000', "sh",
                     out],
            "user": USER, "env": {MARKER_VAR: self.bench.token},
            "restart": False, "stop_timeout": 1}

    # -- propagation: master file -> process running on the node ----------

    def start(self):
        node_dir = os.path.join(self.dir, "node")
        os.mkdir(node_dir)
        worker_conf = os.path.join(node_dir, "worker.json")
        write_json(worker_conf, {"pid_file": os.path.join(node_dir, "w.pid"),
                                 "procs": []})
        client_conf = os.path.join(node_dir, "client.json")
        write_json(client_conf, dict({
            "pid_file": os.path.join(node_dir, "client.pid"),
            "master_stats": self.stats, "master_updates": self.updates,
            "node_name": "node1", "conf_file": worker_conf},
            **self.curve_client))
        self.write_master({"node1": []})
        self.master = self.start_daemon("dpd-masterd", self.master_conf)
        self.start_daemon("dpd-workerd", worker_conf)
        self.start_daemon("dpd-clientd", client_conf)

    def start_daemon(self, command, config):
        proc = self.bench.start(command, config, os.path.join(
            self.dir, command[len("dpd-"):-1] + ".log"))
        self.daemons.append(proc)
        return proc

    def wait_joined(self):
        """Until the client has applied the master's (empty) list."""
        nodes_file = os.path.join(self.dir, "master.nodes.json")

        def in_sync():
            try:
                with open(nodes_file) as handle:
                    return json.load(handle)["nodes"]["node1"]["in_sync"]
            except (OSError, ValueError, KeyError):
                return False
        wait_for(in_sync, timeout=15, what="node1 to join the master %s"
                 % self.label)

    def change(self, index):
        """One change of node1's list; ms from the save to the probe
        running."""
        out, proc = self.probe(index)
        before = time.time()
        self.write_master({"node1": [proc]})
        wait_for(lambda: os.path.exists(out) and os.path.getsize(out),
                 timeout=10, interval=0.0005, what="probe %d to run %s" % (
                     index, self.label))
        with open(out) as handle:
            started = float(handle.read().strip())
        return (started - before) * 1000.0

    # -- fan-out: one change to N simulated clients -----------------------------

    def sim_keys(self, names):
        """With CURVE: a key pair per simulated node, its public key as
        NAME.key in the clients folder; {name: KeyPair} and the ms taken."""
        if not self.curve:
            return {}, 0.0
        started = time.monotonic()
        pairs = {}
        for name in names:
            public, secret = zmq.curve_keypair()
            pairs[name] = keys.KeyPair(public, secret)
            write_public_key(os.path.join(self.clients_dir, name
                                          + keys.PUBLIC_SUFFIX), public)
        spent = (time.monotonic() - started) * 1000
        # The master reads them as dpdctl keygen's: check one the same way.
        first = names[0]
        if keys.read_key_file(os.path.join(
                self.clients_dir, first + keys.PUBLIC_SUFFIX),
                first).public != pairs[first].public:
            raise SystemExit("fan-out: a key file written wrong")
        return pairs, spent

    def fanout(self, count, idle_seconds):
        # Names of this count's own: each came in by one reload (sequence
        # 1); the last count's nodes leave the file.
        names = ["sim%d-%04d" % (count, i) for i in range(count)]
        pairs, keys_ms = self.sim_keys(names)
        _, proc = self.probe(0)
        lists = {name: [dict(proc, name="p")] for name in names}
        lists["node1"] = []
        self.write_master(lists)  # the running master reloads it
        if self.curve:
            # Its keys are read at that reload: a handshake before it is
            # refused, and ZeroMQ does not try again (dpd-clientd does, a
            # second later; these simulated clients do not).
            self.wait_logged('node "%s": new list' % names[-1],
                             "more nodes got a new list (%d in all)" % count)
        context = zmq.Context()
        context.set(zmq.MAX_SOCKETS, count + 64)
        sockets = {}
        openers = {}
        poller = zmq.Poller()
        for name in names:
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(name))
            sub.setsockopt(zmq.SUBSCRIBE, protocol.BEAT_TOPIC)
            if self.curve:
                keys.apply_to_socket(sub, zmq, pairs[name],
                                     server_key=self.master_public)
                openers[sub] = keys.Opener(pairs[name].secret,
                                           self.master_public)
            sub.connect(self.updates)
            sockets[sub] = name
            poller.register(sub, zmq.POLLIN)

        def decode(sub, frames):
            """The Update of a list, or None (a beat)."""
            if protocol.is_beat(frames):
                protocol.decode_beat(frames)
                return None
            opener = openers.get(sub)
            if opener is not None:
                frames = [frames[0], frames[1], opener.open(frames[2])]
            return protocol.decode_update(frames, sockets[sub])
        seqs = dict.fromkeys(names, 1)
        # Joined when every client has heard the master (a beat, or with
        # an older master the heartbeat's republication of its list).
        joined = set()
        deadline = time.monotonic() + 60
        while len(joined) < count:
            if time.monotonic() > deadline:
                raise SystemExit("fan-out %s: only %d of %d clients joined"
                                 % (self.label, len(joined), count))
            for sub, _ in poller.poll(100):
                update = decode(sub, sub.recv_multipart())
                if update is not None:
                    seqs[update.node] = max(seqs[update.node], update.seq)
                joined.add(sub)
        cpu_before = cpu_seconds(self.master.pid)
        for name in names:
            lists[name] = [dict(proc, name="p", args=proc["args"] + ["x"])]
        before = time.time()
        self.write_master(lists)
        received = {}
        # Each message is timed at its recv and opened and decoded once
        # every client has had one (each node does that on its own CPU:
        # here it would delay the next recvs).
        heard = []  # (time, socket, frames)
        waiting = set(sockets)  # no list since the save (or not the new)

        def settle():
            for at, sub, frames in heard:
                update = decode(sub, frames)
                if update.seq > seqs[update.node] and \
                        update.node not in received:
                    received[update.node] = (at - before) * 1000
            heard.clear()
            waiting.update(sub for sub, name in sockets.items()
                           if name not in received)
        deadline = time.monotonic() + 10
        while len(received) < count and time.monotonic() < deadline:
            for sub, _ in poller.poll(100):
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if not protocol.is_beat(frames):
                        heard.append((time.time(), sub, frames))
                        waiting.discard(sub)
            if not waiting:
                settle()
        settle()
        cpu = cpu_seconds(self.master.pid) - cpu_before
        # Idle with every simulated client still connected, as nodes stay.
        idle = self.idle(idle_seconds)
        for sub in sockets:
            sub.close(linger=0)
        context.term()
        return (received, cpu, keys_ms) + idle

    def wait_logged(self, *texts):
        """Until the master's log holds one of ``texts``."""
        path = os.path.join(self.dir, "master.log")

        def logged():
            with open(path, errors="replace") as handle:
                log = handle.read()
            return any(text in log for text in texts)
        wait_for(logged, timeout=30, what="the master %s to log one of %r"
                 % (self.label, texts))

    def idle(self, seconds):
        """The master's CPU over ``seconds`` once the last change is done
        (IDLE_SETTLE seconds after it), and its RSS."""
        time.sleep(IDLE_SETTLE)
        cpu_before = cpu_seconds(self.master.pid)
        time.sleep(seconds)  # a measurement window
        cpu = cpu_seconds(self.master.pid) - cpu_before
        return cpu, rss_mb(self.master.pid)


class Bench:
    def __init__(self, args):
        self.args = args
        self.token = uuid.uuid4().hex
        self.dir = tempfile.mkdtemp(prefix="dpd-bench-")
        self.daemons = []
        self.clusters = [Cluster(self, curve) for curve in {
            "both": (False, True), "off": (False,), "on": (True,)}[
                args.curve]]

    def start(self, command, config, log_path):
        tree = self.args.tree or ROOT
        env = dict(os.environ, PYTHONPATH=tree)
        env[MARKER_VAR] = self.token
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(tree, "bin", command), "-f",
             config], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.daemons.append(proc)
        return proc

    def propagation(self):
        """Every cluster's changes, taking turns (the order alternates), so
        that both see the same machine at the same time."""
        for cluster in self.clusters:
            cluster.start()
        for cluster in self.clusters:
            cluster.wait_joined()
        latencies = {c.name: [] for c in self.clusters}
        cpu_before = {c.name: cpu_seconds(c.master.pid)
                      for c in self.clusters}
        for index in range(self.args.changes):
            turn = self.clusters if index % 2 == 0 else self.clusters[::-1]
            for cluster in turn:
                latencies[cluster.name].append(cluster.change(index))
        cpu = {c.name: cpu_seconds(c.master.pid) - cpu_before[c.name]
               for c in self.clusters}
        for cluster in self.clusters:
            cluster.write_master({"node1": []})
        return latencies, cpu

    def fanout_and_idle(self):
        """Fan-out then idle for each count, one cluster after the other;
        the one done is stopped (with an older master, a removed node is
        still sent its empty list at every heartbeat: going back to one
        node would not quiet it)."""
        results = {}
        for cluster in self.clusters:
            for count in self.args.clients:
                results[cluster.name, count] = cluster.fanout(
                    count, self.args.idle_seconds)
            stop(cluster.daemons)
        return results

    def close(self):
        stop(self.daemons)
        for pid in marked_pids(self.token, MARKER_VAR):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def yes_no(flag):
    return "yes" if flag else "NO"


def report(args, clusters, latencies, cpu_prop, fan):
    """Print the figures; True when every client received the change."""
    width = max(len(c.label) for c in clusters) + 1
    print("diprocd propagation benchmark (%s, %s, Python %s, pyzmq %s / "
          "libzmq %s, %d CPUs)" % (platform.node(), platform.release(),
                                   platform.python_version(),
                                   zmq.pyzmq_version(), zmq.zmq_version(),
                                   os.cpu_count()))
    print("propagation, master file saved -> process running on the node, "
          "%d changes%s:" % (args.changes, " per cluster, taking turns"
                             if len(clusters) > 1 else ""))
    for cluster in clusters:
        values = latencies[cluster.name]
        print("  %-*s median %.1f ms   p99 %.1f ms   min %.1f ms   max %.1f ms"
              % (width, cluster.label + ":", statistics.median(values),
                 percentile(values, 0.99), min(values), max(values)))
    if len(clusters) > 1:
        ratio = (statistics.median(latencies["curve"])
                 / statistics.median(latencies["plain"]))
        print("  median with CURVE / without: %.2f (goal <= %.1f: %s)"
              % (ratio, RATIO_GOAL, "met" if ratio <= RATIO_GOAL
                 else "NOT met"))
    print("  master CPU over the %d changes: %s" % (args.changes, ", ".join(
        "%.0f ms %s" % (cpu_prop[c.name] * 1000, c.label) for c in clusters)))
    complete = True
    for count in args.clients:
        print("fan-out, one save changing %d nodes -> %d simulated clients:"
              % (count, count))
        for cluster in clusters:
            received, cpu, keys_ms, _, _ = fan[cluster.name, count]
            times = sorted(received.values())
            complete = complete and len(times) == count
            print("  %-*s received by %d of %d; median %.1f ms, max %.1f ms; "
                  "all within 1 s: %s" % (
                      width, cluster.label + ":", len(times), count,
                      statistics.median(times) if times else float("nan"),
                      max(times) if times else float("nan"),
                      yes_no(len(times) == count
                             and times[-1] <= FANOUT_GOAL_MS)))
            print("  %-*s master CPU for that change: %.0f ms" % (
                width, "", cpu * 1000))
            if cluster.curve:
                print("  %-*s (%d key pairs made with zmq.curve_keypair, "
                      "their public files written: %.0f ms)" % (
                          width, "", count, keys_ms))
        print("master idle with %d nodes (heartbeat %s), after that "
              "fan-out (%.0f s):" % (
                  count + 1, "the default" if args.heartbeat is None
                  else "%g s" % args.heartbeat, args.idle_seconds))
        for cluster in clusters:
            _, _, _, idle_cpu, rss = fan[cluster.name, count]
            print("  %-*s %.1f ms CPU per minute (goal <= %d with 1001 "
                  "nodes), RSS %.1f MB" % (
                      width, cluster.label + ":",
                      idle_cpu * 1000 * 60 / args.idle_seconds,
                      IDLE_GOAL_MS, rss))
    return complete


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--clients", type=int, nargs="+",
                        default=[1000, 5000],
                        help="the fan-out's and idle figure's node counts, "
                        "one after the other (default: 1000 5000)")
    parser.add_argument("--idle-seconds", type=float, default=60,
                        help="the idle window (default 60: several "
                        "heartbeats, 15 s by default)")
    parser.add_argument("--curve", choices=("both", "off", "on"),
                        default="both",
                        help="both (default): each figure without and with "
                        "CURVE, side by side; off or on: one cluster only")
    parser.add_argument("--heartbeat", type=float, help="the master's "
                        "heartbeat (default: its own default)")
    parser.add_argument("--tree", help="run the daemons of this checkout "
                        "of diprocd (default: this one)")
    args = parser.parse_args()
    if args.changes < 1 or min(args.clients) < 1 or args.idle_seconds <= 0:
        parser.error("--changes and --clients must be at least 1, "
                     "--idle-seconds positive")
    # 5000 simulated clients hold two descriptors each here (the master
    # started from here inherits the limit, and raises its own anyway).
    raise_open_files_limit()
    bench = Bench(args)
    try:
        latencies, cpu_prop = bench.propagation()
        fan = bench.fanout_and_idle()
    finally:
        bench.close()
    return 0 if report(args, bench.clusters, latencies, cpu_prop, fan) else 1


if __name__ == "__main__":
    sys.exit(main())
