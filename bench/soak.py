#!/usr/bin/env python3
"""Soak: a worker with --procs processes and a master with --nodes
simulated nodes, under --minutes of churn; their CPU, RSS and open
descriptors sampled every --sample seconds must stay flat.

worker  a real ``dpd-workerd`` on --procs ``/bin/sleep`` processes. Every
        second a seeded schedule changes its file: about 1 % of the
        definitions changed (restart), a few removed and added, and a few
        crashers (``/bin/sh -c 'sleep 0.N; exit 1'``) that die and restart
        until the 5-starts-a-minute rule gives them up, then are replaced.
master  a real ``dpd-masterd`` with --nodes nodes in its file; every second
        a few nodes' lists change. The nodes are simulated in this process:
        one SUB socket each (subscribed to its topic, decoding every update)
        and one PUSH socket sending each node's hello and a status report
        every 5 s, as dpd-clientd does.

At the end: a table of the samples (worker and master CPU in ms per
minute, RSS in MB, descriptors) and a verdict: RSS and descriptors of the
last third against the first third. Every process started here carries a
marker of this run and is killed by pid at the end, never by name.

Usage: ``.venv/bin/python bench/soak.py [--minutes 10] [--procs 1000]
[--nodes 200] [--sample 30] [--seed N]``.
"""

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import uuid

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from diprocd import protocol  # noqa: E402
from diprocd.kernel import cpu_ticks, rss_bytes  # noqa: E402
from helpers import Master, Node, kill_marked, wait_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
STATUS_EVERY = 5.0


def rss_mb(pid):
    return (rss_bytes(pid) or 0) / 1048576.0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Churn:
    """The seeded schedule of changes to the worker's and master's files."""

    def __init__(self, rng, node, master, procs, nodes):
        self.rng = rng
        self.node = node
        self.master = master
        self.serial = 0
        self.procs = {}
        for _ in range(procs):
            self._add_sleeper()
        self.lists = {"sim%03d" % i: [self._sleep_doc(i)]
                      for i in range(nodes)}
        self.changes = {"worker": 0, "master": 0}

    def _sleep_doc(self, number):
        return self.node.proc("p%06d" % number, "/bin/sleep", "%d"
                              % (700000 + number))

    def _add_sleeper(self):
        self.serial += 1
        self.procs["p%06d" % self.serial] = self._sleep_doc(self.serial)

    def _add_crasher(self):
        self.serial += 1
        name = "c%06d" % self.serial
        self.procs[name] = self.node.proc(
            name, "/bin/sh", "-c", "sleep 0.%d; exit 1" % self.rng.randint(
                1, 9))

    def step(self):
        rng = self.rng
        names = sorted(self.procs)
        for name in rng.sample(names, max(1, len(names) // 100)):
            doc = dict(self.procs[name])
            doc["env"] = dict(doc["env"], SOAK_GENERATION=str(self.serial))
            self.procs[name] = doc  # changed: a restart
        for name in rng.sample(names, 3):
            del self.procs[name]
        crashers = [n for n in self.procs if n.startswith("c")]
        if len(crashers) < 10:
            self._add_crasher()
        while len(self.procs) < len(names):
            self._add_sleeper()
        self.node.write(list(self.procs.values()))
        self.changes["worker"] += 1
        for node in rng.sample(sorted(self.lists), 5):
            self.serial += 1
            self.lists[node] = [self._sleep_doc(self.serial)]
        self.master.write(nodes=self.lists)
        self.changes["master"] += 1


class SimulatedNodes:
    """--nodes clients in one process: a SUB each, one PUSH for reports."""

    def __init__(self, master, names):
        self.context = zmq.Context()
        self.subs = {}
        self.poller = zmq.Poller()
        for name in names:
            sub = self.context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(name))
            sub.connect(master.updates)
            self.subs[sub] = name
            self.poller.register(sub, zmq.POLLIN)
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(master.stats)
        self.applied = {}
        self.received = 0
        self.next_status = 0.0
        for name in names:
            self.report(protocol.KIND_HELLO, name)

    def report(self, kind, name):
        epoch, seq = self.applied.get(name, (None, None))
        status = None
        if kind == protocol.KIND_STATUS:
            status = {"procs": {"p": {"state": "running", "pid": 1}}}
        self.push.send_multipart(protocol.encode_report(protocol.Report(
            kind, name, epoch, seq, status)))

    def pump(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for sub, _ in self.poller.poll(left * 1000):
                update = protocol.decode_update(sub.recv_multipart(),
                                                self.subs[sub])
                self.applied[update.node] = (update.epoch, update.seq)
                self.received += 1
            if time.monotonic() >= self.next_status:
                self.next_status = time.monotonic() + STATUS_EVERY
                for name in self.subs.values():
                    self.report(protocol.KIND_STATUS, name)

    def close(self):
        for sock in list(self.subs) + [self.push]:
            sock.close()
        self.context.term()


def sample(pids, last):
    """One row: per daemon CPU ms/min since the last row, RSS MB, fds."""
    now = time.monotonic()
    row = {"t": now}
    for label, pid in pids.items():
        ticks = cpu_ticks(pid)
        if ticks is None:
            raise SystemExit("soak: %s (pid %d) died" % (label, pid))
        row[label] = {"ticks": ticks, "rss": rss_mb(pid), "fds": fd_count(pid)}
        if last:
            minutes = (now - last["t"]) / 60.0
            row[label]["cpu"] = ((ticks - last[label]["ticks"]) * 1000.0
                                 / TICK / minutes)
    return row


def render(rows, args, churn, sims):
    lines = ["soak: %d min, worker %d processes, master %d simulated nodes, "
             "seed %d; %d worker changes, %d master changes, %d updates "
             "received" % (args.minutes, args.procs, args.nodes, args.seed,
                           churn.changes["worker"], churn.changes["master"],
                           sims.received), "",
             "| minute | worker CPU ms/min | worker RSS MB | worker fds "
             "| master CPU ms/min | master RSS MB | master fds |",
             "|---|---|---|---|---|---|---|"]
    start = rows[0]["t"]
    for row in rows[1:]:
        lines.append("| %.1f | %.0f | %.1f | %d | %.0f | %.1f | %d |" % (
            (row["t"] - start) / 60.0,
            row["worker"]["cpu"], row["worker"]["rss"], row["worker"]["fds"],
            row["master"]["cpu"], row["master"]["rss"], row["master"]["fds"]))
    third = max(1, (len(rows) - 1) // 3)
    early, late = rows[1:1 + third], rows[-third:]
    verdicts = []
    for label in ("worker", "master"):
        for key, unit in (("rss", "MB"), ("fds", "")):
            before = max(r[label][key] for r in early)
            after = max(r[label][key] for r in late)
            verdicts.append("%s %s: first third max %.1f%s, last third max "
                            "%.1f%s" % (label, key, before, unit, after, unit))
    return "\n".join(lines + [""] + verdicts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--procs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--sample", type=float, default=30)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print("soak: seed %d" % args.seed, flush=True)
    rng = random.Random(args.seed)
    marker = "dpdsoak-" + uuid.uuid4().hex[:12]
    folder = tempfile.mkdtemp(prefix="dpd-soak-")
    node = Node(os.path.join(folder, "node"), marker)
    master = Master(folder, marker)
    churn = Churn(rng, node, master, args.procs, args.nodes)
    sims = None
    try:
        node.write(list(churn.procs.values()))
        node.start(verbose=False)
        master.write(nodes=churn.lists)
        master.start()
        wait_for(lambda: len(node.running()) >= args.procs, timeout=120,
                 what="the worker's processes")
        sims = SimulatedNodes(master, sorted(churn.lists))
        pids = {"worker": node.daemon.pid, "master": master.daemon.pid}
        rows = [sample(pids, None)]
        end = time.monotonic() + args.minutes * 60
        next_sample = time.monotonic() + args.sample
        while time.monotonic() < end:
            churn.step()
            sims.pump(1.0)
            if time.monotonic() >= next_sample:
                rows.append(sample(pids, rows[-1]))
                next_sample += args.sample
                print("soak: %.1f min, worker RSS %.1f MB, %d fds" % (
                    (rows[-1]["t"] - rows[0]["t"]) / 60,
                    rows[-1]["worker"]["rss"], rows[-1]["worker"]["fds"]),
                    flush=True)
        print(render(rows, args, churn, sims))
    finally:
        if sims is not None:
            sims.close()
        for daemon in (node.daemon, master.daemon):
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
        kill_marked(marker, timeout=60)


if __name__ == "__main__":
    main()
