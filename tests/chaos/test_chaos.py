"""Nothing kills a daemon, nothing is lost.

A master and three nodes (node1..node3: a dpd-workerd and a dpd-clientd
each, in a folder of their own) on 127.0.0.1, every daemon run as its cron
line runs it (``dpd-X -v CONFIG``: it detaches, or says "already running"
and exits 0). A schedule drawn from ``random.Random(seed)`` then, round
after round, after a random pause: saves a random valid change of the
master file (``churn.Lists``), kill -9s a daemon (now and then while it
takes a change in, or again just after its restart), or runs the cron
line of a daemon that runs; a killed daemon is run again by "cron" a few
rounds later.

Checked all along: no definition ever runs twice at once, no daemon runs
twice, no daemon dies unless killed, what a live worker reports running
has the pid file it writes, and every cron run exits 0 with nothing on
stderr (cron would mail it). Once the churn stops and cron has
run every daemon: within 10 s every node runs exactly the last master
file's processes, each once, with the pid its worker reports and its pid
file names (short-lived ones given up or exited as their kind says),
nothing else marked runs, no pid file is left of a process gone, no
daemon or process leaves a zombie, the master sees every node in sync;
that lasts; no daemon logged an error it caught (a traceback); and after
a SIGTERM to each daemon none is left.

``make chaos SEED=... ROUNDS=...`` runs a long one; ``make test`` a short
one. The seed is printed, and a failure's report says how to replay it.
"""

import collections
import dataclasses
import os
import pwd
import random
import signal
import time

import pytest

from diprocd.daemon import read_locked_pid, read_pid
from diprocd.kernel import is_alive, proc_stat
from helpers import (Master, Node, holds_within, marked_processes,
                     read_json, read_text, rebindable_endpoints, run_command,
                     wait_for, zombie_children)

from .churn import RUNNING, Lists

pytestmark = pytest.mark.chaos

NODES = ("node1", "node2", "node3")
USER = pwd.getpwuid(os.geteuid()).pw_name
MAX_PAUSE = 0.5  # seconds between two rounds, drawn in [0, MAX_PAUSE]
RESPAWN_DELAYS = (0, 0, 1, 1, 2, 3, 5)  # rounds from a kill to its cron run
# In a daemon's log: a bug (diprocd.loop logs an unexpected error in a
# callback, then goes on; cli, a fatal one).
LOG_BUG_SIGNS = ("Traceback", "internal error", "fatal error")
CONVERGE_TIMEOUT = 10.0
STEADY = 1.0  # the converged state is watched this long


@dataclasses.dataclass
class Daemon:
    """One daemon of the cluster, started as its cron line starts it and
    found by the marker and its command line (``bin/<command> -v CONFIG``).
    ``pid`` is its pid since its last start, None once killed."""
    label: str
    command: str
    config_path: str
    pid_file: str
    log_path: str
    marker: str
    pid: int = None

    def owns(self, argv):
        return len(argv) >= 3 and os.path.basename(argv[1]) == self.command \
            and argv[-1] == self.config_path

    def pids(self, processes=None):
        """Live pids of this daemon (one, unless something is wrong), not
        counting its forks (a worker's, on their way to exec a program)."""
        processes = marked_processes(self.marker) if processes is None \
            else processes
        found = {pid for pid, argv in processes.items() if self.owns(argv)}
        return sorted(pid for pid in found if parent(pid) not in found)

    def respawn(self):
        """Cron: run the daemon; True when it started one (it detached),
        False when one was running."""
        done = run_command(self.command, ["-v", self.config_path],
                           marker=self.marker)
        assert done.returncode == 0 and not done.stderr, (
            "%s: the cron run exited %d, stderr: %s" % (
                self.label, done.returncode, done.stderr))
        if "already running" in done.stdout:
            return False
        pids = self.pids()
        assert len(pids) == 1, "%s: started, now runs as %s" % (self.label,
                                                                pids)
        self.pid = pids[0]
        return True

    def kill(self, signum=signal.SIGKILL):
        """Signal every live instance (ours: found by the marker) and wait
        until they are gone; return how many there were."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signum)
        wait_for(lambda: not any(is_alive(pid) for pid in pids), timeout=15,
                 what="%s %s to end" % (self.label, pids))
        self.pid = None
        return len(pids)

    def log_tail(self, chars=3000):
        return "--- %s log (%s):\n%s" % (self.label, self.log_path, read_text(
            self.log_path, default="")[-chars:])


class Cluster:
    """The master and the nodes, their daemons, and the census of what
    they run."""

    def __init__(self, folder, marker, lists):
        self.marker = marker
        self.lists = lists
        stats, updates = rebindable_endpoints(2)
        self.master = Master(folder, marker, lists.document(), heartbeat=1,
                             silent_after=5,
                             master_stats=stats, master_updates=updates,
                             log_file=os.path.join(folder, "master.log"))
        self.nodes = {}
        self.daemons = {"master": Daemon(
            "master", "dpd-masterd", self.master.config_path,
            self.master.pid_file, self.master.log_path, marker)}
        for name in NODES:
            node = self.nodes[name] = Node(os.path.join(folder, name), marker,
                                           name)
            node.write([])
            node.write_client(self.master.stats, self.master.updates,
                              log_file=node.client_log_path)
            self.daemons[name + " worker"] = Daemon(
                name + " worker", "dpd-workerd", node.config_path,
                node.pid_file, os.path.join(str(node.dir), "worker.log"),
                marker)
            self.daemons[name + " client"] = Daemon(
                name + " client", "dpd-clientd", node.client_config_path,
                read_json(node.client_config_path)["pid_file"],
                node.client_log_path, marker)
        self.save()

    def save(self):
        self.master.write(self.lists.document())

    def census(self):
        """(daemon label -> pids, token -> pids of its instances, other
        marked processes {pid: argv})."""
        processes = marked_processes(self.marker)
        daemons = {label: daemon.pids(processes)
                   for label, daemon in self.daemons.items()}
        owned = {pid for pids in daemons.values() for pid in pids}
        workers = {pid for label, pids in daemons.items()
                   if label.endswith(" worker") for pid in pids}
        instances, others = collections.defaultdict(list), {}
        servers = collections.Counter()
        for pid, argv in processes.items():
            if pid in owned:
                continue
            stat = proc_stat(pid)
            if argv[:2] == ["dpd-exec", "--serve"] and stat is not None \
                    and stat.ppid in workers:
                # A live worker's dpd-exec server: one each (a second one
                # is a stray; one left by a dead worker has it as parent
                # no longer, and is a stray too).
                servers[stat.ppid] += 1
                if servers[stat.ppid] == 1:
                    continue
            token = instance_token(argv)
            if token is None:
                others[pid] = argv
            else:
                instances[token].append(pid)
        return daemons, instances, others

    def problems(self):
        """Why the cluster is not (yet) what the master file says; [] once
        it is."""
        found = []
        daemons, instances, others = self.census()
        for label, pids in sorted(daemons.items()):
            lock = read_locked_pid(self.daemons[label].pid_file)
            if len(pids) != 1 or lock != pids[0]:
                found.append("%s runs as %s, its pid file's lock says %s"
                             % (label, pids, lock))
        wanted_tokens = set()
        for name, node in sorted(self.nodes.items()):
            wanted = self.lists.wanted(name)
            wanted_tokens.update(d.token for d in wanted.values())
            found.extend(node_problems(node, wanted, instances,
                                       daemons[name + " worker"]))
        for token, pids in sorted(instances.items()):
            if token not in wanted_tokens:
                found.append("stray: %s runs %s, not in the master file"
                             % (token, pids))
        for pid, argv in sorted(others.items()):
            found.append("stray: pid %d runs %s" % (pid, argv))
        parents = [pid for pids in daemons.values() for pid in pids] + [
            pid for pids in instances.values() for pid in pids] + list(others)
        for pid, parent in zombie_children(parents):
            found.append("zombie %d, child of %d" % (pid, parent))
        found.extend(self.master_view_problems())
        return found

    def master_view_problems(self):
        view = self.master.view() or {"nodes": {}}
        return ["the master does not see %s in sync" % name
                for name in NODES
                if not view["nodes"].get(name, {}).get("in_sync")]

    def logs(self):
        return "\n".join(d.log_tail() for d in self.daemons.values())

    def log_problems(self):
        """Lines of the daemons' logs that tell of a bug: an error caught
        by the loop, a fatal one."""
        found = []
        for label, daemon in sorted(self.daemons.items()):
            for line in read_text(daemon.log_path, default="").splitlines():
                if any(sign in line for sign in LOG_BUG_SIGNS):
                    found.append("%s: %s" % (label, line))
        return found


def parent(pid):
    stat = proc_stat(pid)
    return stat and stat.ppid


def instance_token(argv):
    """The churn token an instance's command line carries, or None."""
    for arg in argv[1:]:
        head, dot, tail = arg.partition(".")
        if dot and head in ("0", "1000000") and tail.isdigit():
            return arg
    return None


def node_problems(node, wanted, instances, worker_pids):
    """What differs on ``node`` from ``wanted`` ({name: Definition})."""
    found = []
    conf = read_json(node.config_path, default={})
    if conf.get("procs") != [d.doc for d in wanted.values()]:
        found.append("%s: worker.json holds %s, the master file %s" % (
            node.name, [p["name"] for p in conf.get("procs", [])],
            sorted(wanted)))
    status = node.status_doc()
    if status.get("worker_pid") not in worker_pids:
        found.append("%s: status file of worker %s, the worker runs as %s"
                     % (node.name, status.get("worker_pid"), worker_pids))
    procs = status.get("procs", {})
    if set(procs) != set(wanted):
        found.append("%s: the worker has %s, the master file %s"
                     % (node.name, sorted(procs), sorted(wanted)))
    pid_files = {}  # path -> the pid it must name
    for name, definition in sorted(wanted.items()):
        entry = procs.get(name, {})
        pids = instances.get(definition.token, [])
        if definition.expect == RUNNING:
            if entry.get("state") != RUNNING or pids != [entry.get("pid")]:
                found.append("%s: %s (%s %s) is %s, pid %s; running: %s" % (
                    node.name, name, definition.kind, definition.token,
                    entry.get("state"), entry.get("pid"), pids))
            pid_files[definition.doc.get("pid_file") or os.path.join(
                os.path.dirname(node.pid_file), name + ".pid")] = pids[:1]
        elif pids or entry.get("state") != definition.expect:
            found.append("%s: %s (%s %s) should be %s, is %s; running: %s" % (
                node.name, name, definition.kind, definition.token,
                definition.expect, entry.get("state"), pids))
    found.extend(pid_file_problems(node, pid_files))
    return found


def pid_file_problems(node, pid_files):
    """Each running process's pid file names its pid (written by the
    worker, or by a daemon), and no other pid file is left: one of a
    process gone names a dead pid, which a later one may get."""
    found = []
    for path, pids in sorted(pid_files.items()):
        if [read_pid(path)] != pids:
            found.append("%s: pid file %s names %s, the process runs as %s"
                         % (node.name, path, read_pid(path), pids))
    for folder in (os.path.dirname(node.pid_file),
                   os.path.join(str(node.dir), "daemons")):
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if entry.endswith(".pid") and path != node.pid_file \
                    and path not in pid_files:
                found.append("%s: stray pid file %s (pid %s)" % (
                    node.name, path, read_pid(path)))
    return found


class Chaos:
    """The seeded schedule and what it saw."""

    def __init__(self, cluster, rng):
        self.cluster = cluster
        self.rng = rng
        self.round = 0
        self.respawn_due = {}  # label -> round of its cron run
        self.figures = collections.Counter()
        self.findings = []
        self.trace = []  # what each round did, for a failure's report
        self._reported = set()  # lasting problems, found once

    def up(self):
        return sorted(label for label, daemon in self.cluster.daemons.items()
                      if daemon.pid is not None)

    def run_round(self):
        rng = self.rng
        self.round += 1
        self.pause(rng.uniform(0, MAX_PAUSE))
        for label in sorted(self.respawn_due):
            if self.respawn_due[label] <= self.round:
                del self.respawn_due[label]
                self.respawn(label)
        event = rng.choices(("change", "change and kill", "kill",
                             "kill at start", "cron"), (7, 3, 5, 2, 2))[0]
        up = self.up()
        if event == "change" or not up:
            self.change()
        elif event == "change and kill":
            # Kill a daemon while it takes the change in: mostly the
            # worker of a node the change touched, once the change reached
            # its file, when it starts and stops processes.
            node = rng.choice(self.change())
            label = rng.choice(("master", node + " client", node + " worker",
                                node + " worker"))
            if label.endswith("worker"):
                self.reaches(node)
                self.pause(rng.uniform(0, 0.02))
            else:
                self.pause(rng.uniform(0, 0.08))
            if label in self.up():
                self.kill(label)
        elif event == "kill":
            self.kill(rng.choice(up))
        elif event == "kill at start":
            label = rng.choice(up)
            self.kill(label)
            self.respawn(label)
            self.pause(rng.uniform(0, 0.4))  # kill it while it starts
            self.kill(label)
        else:
            self.respawn(rng.choice(up))
        self.check()

    def pause(self, seconds):
        """The schedule's pause, not a wait: meanwhile, nothing twice."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_duplicates()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def change(self):
        """Save a change of the master file; return the nodes it touched."""
        edits = self.cluster.lists.churn()
        self.cluster.save()
        self.note("saved the master file: %s" % ", ".join(
            "%s (%s)" % edit for edit in edits))
        self.figures["master file saves"] += 1
        self.figures["edits"] += len(edits)
        for edit, _ in edits:
            self.figures["edit: " + edit] += 1
        return [node for _, node in edits]

    def reaches(self, node):
        """Wait (a little) for the change to reach ``node``'s worker file;
        its client may be down."""
        procs = self.cluster.lists.document().get(node, [])
        path = self.cluster.nodes[node].config_path
        holds_within(lambda: read_json(path, default={}).get("procs") == procs,
                     timeout=1, interval=0.002)

    def note(self, what):
        self.trace.append("%.3f round %d: %s" % (time.monotonic(), self.round,
                                                 what))

    def kill(self, label):
        daemon = self.cluster.daemons[label]
        self.note("kill -9 %s (pid %s)" % (label, daemon.pid))
        if daemon.kill() != 1:
            self.findings.append("round %d: kill -9 of %s found no single "
                                 "instance" % (self.round, label))
        self.figures["kill -9 " + label.split()[-1]] += 1
        self.respawn_due[label] = self.round + 1 + self.rng.choice(
            RESPAWN_DELAYS)

    def respawn(self, label):
        daemon = self.cluster.daemons[label]
        was_up = daemon.pid is not None
        started = daemon.respawn()
        self.note("cron run of %s: %s" % (label, "started pid %d" % daemon.pid
                                          if started else "already running"))
        self.figures["cron runs: started" if started
                     else "cron runs: already running"] += 1
        if started == was_up:
            self.findings.append("round %d: cron run of %s %s" % (
                self.round, label, "started a second one" if was_up
                else "found one running after its kill"))

    def check_duplicates(self):
        """Nothing runs twice; return the census."""
        census = self.cluster.census()
        for token, pids in sorted(census[1].items()):
            if len(pids) > 1:
                self.figures["duplicates seen"] += 1
                self.findings.append("round %d: %s runs %d times: %s" % (
                    self.round, token, len(pids), pids))
        return census

    def check(self):
        """What must hold at any time: nothing twice, no daemon dead unless
        killed."""
        daemons = self.check_duplicates()[0]
        self.check_pid_files()
        for label, daemon in sorted(self.cluster.daemons.items()):
            if len(daemons[label]) > 1 and not self.settles(daemon):
                self.findings.append("round %d: %s runs twice: %s" % (
                    self.round, label, [proc_stat(pid)
                                        for pid in daemon.pids()]))
            if daemon.pid is not None and not is_alive(daemon.pid):
                self.findings.append("round %d: %s (pid %d) died unkilled" % (
                    self.round, label, daemon.pid))
                daemon.pid = None
                self.respawn_due.setdefault(label, self.round + 1)

    def check_pid_files(self):
        """What a running worker reports running has the pid file it
        writes: the outside world (init scripts, monitoring) reads it.
        (The status file and a pid file are not written at the same time:
        a difference must last to count.)"""
        def wrong():
            found = []
            for name, node in sorted(self.cluster.nodes.items()):
                if self.cluster.daemons[name + " worker"].pid is None:
                    continue
                status = node.status_doc()
                for proc, record in sorted(status.get("records", {}).items()):
                    entry = status["procs"].get(proc, {})
                    if entry.get("state") == RUNNING \
                            and record.get("write_pid") \
                            and read_pid(record["pid_file"]) != record["pid"]:
                        found.append("%s: %s runs as %s (adopted: %s), its "
                                     "pid file names %s" % (
                                         name, proc, record["pid"],
                                         entry.get("adopted"),
                                         read_pid(record["pid_file"])))
            return found
        if wrong() and not holds_within(lambda: not wrong(), timeout=1):
            for problem in wrong():
                if problem not in self._reported:
                    self._reported.add(problem)
                    self.findings.append("round %d: %s" % (self.round,
                                                           problem))

    @staticmethod
    def settles(daemon):
        """True when a daemon seen twice is soon seen once: a worker's fork
        on its way to exec a program has the worker's command line for a
        moment, and once the worker is killed, another parent."""
        return holds_within(lambda: len(daemon.pids()) <= 1, timeout=2)

    def cron(self):
        """Cron runs every daemon (the churn stopped, or has not begun)."""
        for label in sorted(self.cluster.daemons):
            self.respawn_due.pop(label, None)
            self.respawn(label)


def wait_converged(cluster, deadline):
    """Wait until the cluster has no problem left, at the latest at
    ``deadline`` (monotonic)."""
    last = []

    def converged():
        last[:] = cluster.problems()
        return not last
    wait_for(converged, timeout=deadline - time.monotonic(), interval=0.05,
             what=lambda: "convergence; left:\n  " + "\n  ".join(last))


def watch_steady(cluster, seconds):
    """The converged state must last: nothing restarts, nothing appears."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        problems = cluster.problems()
        assert not problems, "after convergence:\n  " + "\n  ".join(problems)
        time.sleep(0.1)


def test_nothing_kills_a_daemon_nothing_is_lost(tmp_path, marker, chaos_seed,
                                                chaos_rounds, chaos_figures):
    rng = random.Random(chaos_seed)
    folder = str(tmp_path)
    daemon_dirs = {name: os.path.join(folder, name, "daemons")
                   for name in NODES}
    lists = Lists(rng, marker, NODES, daemon_dirs, USER)
    for name in NODES:
        os.makedirs(daemon_dirs[name])
        for _ in range(3):
            lists.add(name)
    cluster = Cluster(folder, marker, lists)
    chaos = Chaos(cluster, rng)
    figures = chaos_figures
    figures["seed"] = chaos_seed
    try:
        begun = time.monotonic()
        chaos.cron()
        wait_converged(cluster, begun + 20)
        churning = time.monotonic()
        figures["first convergence (s)"] = round(churning - begun, 2)
        for _ in range(chaos_rounds):
            chaos.run_round()
        stopped = time.monotonic()
        figures["churn (s)"] = round(stopped - churning, 1)
        chaos.cron()
        wait_converged(cluster, stopped + CONVERGE_TIMEOUT)
        converged = time.monotonic() - stopped
        figures["rounds"] = chaos.round
        figures.update(sorted(chaos.figures.items()))
        figures["definitions made"] = lists.made
        figures["processes at the end"] = len(lists.definitions())
        figures["with depends at the end"] = sum(
            1 for d in lists.definitions() if d.doc.get("depends"))
        figures["time to converge (s)"] = round(converged, 2)
        watch_steady(cluster, STEADY)
        assert not chaos.findings, "\n".join(chaos.findings)
        assert not cluster.log_problems(), "\n".join(cluster.log_problems())
        figures["lost / duplicated"] = "0 / 0"
        for label, daemon in sorted(cluster.daemons.items()):
            assert daemon.kill(signal.SIGTERM) == 1, label
            assert not os.path.exists(daemon.pid_file), label
        assert cluster.census()[0] == {label: [] for label in cluster.daemons}
    except BaseException:
        figures.update(sorted(chaos.figures.items()))
        figures["findings"] = chaos.findings
        print("\n".join(chaos.trace))
        print(cluster.logs())
        raise
