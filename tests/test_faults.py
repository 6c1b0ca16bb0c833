"""Faults that must kill no daemon and lose nothing (issue "Nothing kills a
daemon, nothing is lost"), each a test on the real daemons.

Cases that already had a test elsewhere are not repeated here:

- a program that ignores SIGTERM is killed after ``stop_timeout``:
  test_worker.py::test_stop_escalates_to_sigkill;
- a full or read-only folder under the client's target keeps the old file:
  test_distributed_faults.py::test_full_or_read_only_target_keeps_the_old_file.

Every process a test starts carries its marker (the ``marker`` fixture ends
them all); waits are conditions with deadlines.
"""

import ast
import inspect
import json
import logging
import os
import pwd
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from conftest import requires_root
from diprocd import backoff, kernel, loop, pidwatch, protocol, spawn, watch
from diprocd import process as P
from diprocd.config import WorkerConfig
from diprocd.daemon import read_pid
from diprocd.fileio import remove_dead_writers_temps
from diprocd.kernel import boot_id, is_alive, proc_stat, start_ticks
from diprocd.ledger import JournalSlot, journal_path
from diprocd.spec import ProcessSpec
from diprocd.worker import Worker
from fakes import FakeClock, FakeOps
from helpers import (Master, Node, endpoint, fork_path, marked_env,
                     patched_python, process_doc, read_json, stop_daemon,
                     wait_for, wrapped_helper, write_json)

USER = pwd.getpwuid(os.geteuid()).pw_name



def sleeper(node, name, tag, **fields):
    return node.proc(name, "/bin/sleep", str(tag), **fields)


def running_count(node):
    return sum(1 for entry in node.status().values()
               if entry.get("state") == "running")


# -- 1. the worker killed in the middle of a cold start, again and again ------

@pytest.mark.timeout(120)
def test_worker_killed_at_random_moments_of_a_cold_start(node):
    """200 programs, the worker SIGKILLed five times at random moments of
    its burst of starts (after 1 to 199 programs run, so between a child's
    journal line and the worker's status file and pid files), a new worker
    started each time: the last one runs each program exactly once, and
    every pid file names its program."""
    count = 200
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    tags = ["%d" % (61000 + i) for i in range(count)]
    node.write([node.proc("c%d" % i, "/bin/sleep", tags[i])
                for i in range(count)])
    thresholds = sorted(rng.sample(range(1, count), 5))
    for threshold in thresholds:
        node.start(verbose=False, wait=False)
        wait_for(lambda: len(node.instances("sleep")) >= threshold,
                 timeout=30, what="%d programs running (seed %d)"
                 % (threshold, seed))
        node.stop(signal.SIGKILL)
    node.start(verbose=False)
    wait_for(lambda: running_count(node) == count, timeout=30,
             what=lambda: "all running (seed %d, kills after %s); %d are"
             % (seed, thresholds, running_count(node)))
    status = node.status()
    for i, tag in enumerate(tags):
        pids = node.instances(tag)
        assert len(pids) == 1, "c%d runs %d times (seed %d, kills after %s)" \
            % (i, len(pids), seed, thresholds)
        assert status["c%d" % i]["pid"] == pids[0]
    missing = [name for name in sorted(status)
               if read_pid(str(node.dir / "run" / (name + ".pid")))
               != status[name]["pid"]]
    assert missing == [], "pid files missing or wrong (seed %d): %s" % (
        seed, missing[:10])


# -- 1 (continued). starts still in flight when the worker is killed ----------

SLOW_JOURNAL = """
import os, time
from diprocd import spawn
real_record = spawn._record
def slow_record(journal, line):
    # A loaded machine: the child reaches its journal line late.
    open(os.path.join(%(folder)r, str(os.getpid())), "w").close()
    time.sleep(1.5)
    real_record(journal, line)
spawn._record = slow_record
"""


def program_of(pid):
    """The program ``pid`` runs (its argv[0]), or None."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().split(b"\0")[0].decode()
    except OSError:
        return None


def test_a_new_worker_waits_for_the_starts_a_killed_one_left_in_flight(
        node, tmp_path):
    """The children a worker started go on alone when it is killed; on a
    loaded machine (here: each child waits 1.5 s before its journal line)
    they may journal themselves only after the next worker has read the
    journal. That worker waits for them, so it adopts them instead of
    starting each program a second time."""
    count = 20
    tags = ["%d" % (64000 + i) for i in range(count)]
    node.write([sleeper(node, "f%d" % i, tag, user=USER)
                for i, tag in enumerate(tags)])
    in_flight = tmp_path / "in-flight"
    in_flight.mkdir()
    if fork_path():
        node.start(verbose=False, wait=False, wrapper=patched_python(
            SLOW_JOURNAL % {"folder": str(in_flight)}))
    else:  # dpd-exec, holding the journal's open file, waits as long
        node.start(verbose=False, wait=False, env=wrapped_helper(
            tmp_path, "/usr/bin/touch '%s/'$$" % in_flight, "sleep 1.5"))
    wait_for(lambda: len(os.listdir(str(in_flight))) == count,
             what="every start in flight")
    node.stop(signal.SIGKILL)
    node.start()  # while the killed worker's children wait to journal
    wait_for(lambda: running_count(node) == count, timeout=20,
             what="all running")
    children = [int(name) for name in os.listdir(str(in_flight))]
    wait_for(lambda: all(not is_alive(pid) or program_of(pid) == "/bin/sleep"
                         for pid in children), timeout=10,
             what="the killed worker's children to reach exec")
    for i, tag in enumerate(tags):
        assert len(node.instances(tag)) == 1, "f%d runs %d times" % (
            i, len(node.instances(tag)))
    assert all(entry["adopted"] for entry in node.status().values())


# -- 2. the client killed while it rewrites the worker's file -----------------

class Publisher(threading.Thread):
    """A fake master's PUB socket sending, every 5 ms, one of ``lists``
    for node1, the next every SLICE seconds, each with an epoch of its own
    (a client always takes another epoch), until ``stop()``. (A client
    behind takes the newest list queued: a new one every slice means a
    write at nearly every turn of its loop.)"""

    SLICE = 0.1

    def __init__(self, updates, lists):
        super().__init__(daemon=True)
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(updates)
        self.messages = [protocol.encode_update(protocol.Update(
            "node1", "list-%d" % i, 1, procs, 30))
            for i, procs in enumerate(lists)]
        self.halt = threading.Event()

    def run(self):
        try:
            while not self.halt.wait(0.005):  # pacing, not a wait for a state
                index = int(time.monotonic() / self.SLICE)
                self.pub.send_multipart(
                    self.messages[index % len(self.messages)])
        finally:
            self.pub.close()

    def stop(self):
        self.halt.set()
        self.join(10)
        self.context.term()


def temp_files(folder, name):
    return [entry for entry in os.listdir(str(folder))
            if entry.startswith("." + name + ".") and entry.endswith(".tmp")]


def test_only_dead_writers_temporary_files_are_removed(tmp_path):
    target = str(tmp_path / "worker.json")
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    names = {
        "dead": ".worker.json.%d.0123456789ab.tmp" % dead.pid,
        "live": ".worker.json.%d.0123456789ab.tmp" % os.getpid(),
        "other file's": ".worker.json.5.%d.0123456789ab.tmp" % dead.pid,
        "not ours": ".worker.json.%d.tmp" % dead.pid,
    }
    for name in names.values():
        (tmp_path / name).write_text("{half")
    assert remove_dead_writers_temps(target) == [names["dead"]]
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        name for key, name in names.items() if key != "dead")


@pytest.mark.timeout(120)
def test_client_killed_while_rewriting_leaves_old_or_new_never_mixed(
        tmp_path, marker):
    """Four lists of 4000 processes (a worker file of 560 KB each) sent
    to node1 in turn; its client, rewriting the worker's file for each,
    SIGKILLed ten times: five times the moment its temporary file appears
    (in the middle of a write), five times after a few whole writes. After
    each kill the worker's file parses, keeps its other keys and holds one
    of the lists sent, exactly; the next client removes what a killed one
    left half written."""
    lists = [[{"name": "p%04d" % i, "run": "/bin/sleep",
               "args": [str(63000 + k), str(i)], "user": USER}
              for i in range(4000)] for k in range(4)]
    node = Node(tmp_path, marker)
    node.write([])
    updates = endpoint()
    node.write_client(endpoint(), updates)
    publisher = Publisher(updates, lists)
    publisher.start()
    rng = random.Random()
    half_written = set()  # names of the temporary files killed clients left
    try:
        for kill in range(10):
            client = node.start_client()
            wait_for(lambda: not half_written & set(temp_files(
                tmp_path, "worker.json")), what="the new client to remove "
                "what the killed ones left half written")
            writes = node.client_log().count("wrote ")
            if kill % 2 == 0:
                wait_for(lambda: set(temp_files(tmp_path, "worker.json"))
                         - half_written, timeout=30, interval=0.001,
                         what="the client in the middle of a write")
            else:
                more = rng.randint(1, 4)
                wait_for(lambda: node.client_log().count("wrote ")
                         >= writes + more, timeout=30, what="%d writes" % more)
            client.kill()
            client.wait()
            doc = json.loads(node.conf_bytes())
            assert doc["pid_file"] == node.pid_file
            assert doc["procs"] in lists + [[]], "kill %d: a mixed file" % kill
            half_written.update(temp_files(tmp_path, "worker.json"))
        print("%d kills left a half-written file" % len(half_written))
        # (A kill the moment the file appears may still come just after
        # the rename: not every one of the five need leave a file.)
        assert len(half_written) >= 3, half_written
        client = node.start_client()
        writes = node.client_log().count("wrote ")
        wait_for(lambda: node.client_log().count("wrote ") > writes,
                 timeout=30, what="a write by the last client")
        publisher.stop()
        assert stop_daemon(client) == 0
        assert temp_files(tmp_path, "worker.json") == []
    finally:
        if publisher.is_alive():
            publisher.stop()


# -- 3. the master file cut short while it is saved in place ------------------

class Subscriber:
    """A SUB socket on the master's updates for some nodes and its beat;
    ``latest()`` is {node: (seq, procs)} of what was heard last, ``beats``
    how many beats were heard; ``hello(stats)`` asks the master for the
    nodes' lists (a PUSH to its stats socket), as their clients would."""

    def __init__(self, updates, nodes):
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.nodes = nodes
        for node in nodes:
            self.sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(node))
        self.sub.setsockopt(zmq.SUBSCRIBE, protocol.BEAT_TOPIC)
        self.sub.connect(updates)
        self.heard = []
        self.beats = 0

    def poll(self):
        while self.sub.poll(0):
            frames = self.sub.recv_multipart()
            if protocol.is_beat(frames):
                protocol.decode_beat(frames)
                self.beats += 1
                continue
            node = frames[0][:-1].decode()
            update = protocol.decode_update(frames, node)
            self.heard.append((node, update.seq, update.procs))
        return self.heard

    def beats_heard(self):
        self.poll()
        return self.beats

    def hello(self, stats):
        """Once a beat shows the subscription is in place."""
        wait_for(self.beats_heard, what="a beat")
        push = self.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(stats)
        for node in self.nodes:
            push.send_multipart(protocol.encode_report(
                protocol.Report(protocol.KIND_HELLO, node)))
        push.close()

    def latest(self):
        return {node: (seq, procs) for node, seq, procs in self.poll()}

    def close(self):
        self.sub.close()
        self.context.term()


def test_master_file_cut_short_keeps_the_last_good_lists(tmp_path, marker):
    """The master file rewritten in place (truncated, then written) and the
    write cut short twice: empty, then half of it, for several heartbeats
    each. The master logs it, sends no other list than the last good ones
    (same sequences), the node's file is untouched; once the write is
    complete the master publishes the new list, to that node only."""
    a = process_doc(marker, "a", "/bin/sleep", "63100", user=USER)
    b = process_doc(marker, "b", "/bin/sleep", "63101", user=USER)
    master = Master(tmp_path, marker, {"node1": [a], "node2": [b]},
                    heartbeat=0.2)
    master.start()
    sub = Subscriber(master.updates, ["node1", "node2"])
    sub.hello(master.stats)
    node = Node(tmp_path / "node1", marker)
    node.write([])
    node.write_client(master.stats, master.updates)
    node.start_client()
    try:
        wait_for(lambda: read_json(node.config_path)["procs"] == [a],
                 what="node1's list")
        wait_for(lambda: sub.latest() == {"node1": (1, [a]),
                                          "node2": (1, [b])},
                 what="both lists published")
        before = node.conf_bytes()
        a2 = dict(a, args=["63102"])
        new_text = json.dumps(dict(master.doc, nodes={"node1": [a2],
                                                      "node2": [b]}))
        with open(master.config_path, "r+") as handle:
            for cut, part in (("empty", ""),
                              ("half", new_text[:len(new_text) // 2])):
                errors = master.log().count("invalid master file")
                handle.seek(0)
                handle.truncate()
                handle.write(part)
                handle.flush()
                wait_for(lambda: master.log().count("invalid master file")
                         > errors, what="the master to refuse the %s file"
                         % cut)
                heard, beats = len(sub.poll()), sub.beats
                wait_for(lambda: sub.beats_heard() >= beats + 3,
                         what="three heartbeats")
                assert {(n, s, p == ([a] if n == "node1" else [b]))
                        for n, s, p in sub.heard[heard:]} <= {
                            ("node1", 1, True), ("node2", 1, True)}
                assert master.daemon.poll() is None
                assert node.conf_bytes() == before
            handle.write(new_text[len(new_text) // 2:])
        wait_for(lambda: read_json(node.config_path)["procs"] == [a2],
                 what="the complete file's list at node1")
        assert sub.latest() == {"node1": (2, [a2]), "node2": (1, [b])}
        assert master.stop() == 0
    finally:
        sub.close()
        node.close()


# -- 4. the worker's file deleted ---------------------------------------------

def test_worker_file_deleted_then_back(node):
    """CONFIG removed: every process keeps running, the worker says so
    once; put back unchanged nothing restarts; put back changed it is
    applied."""
    a, b = sleeper(node, "a", 62001), sleeper(node, "b", 62002)
    node.write([a, b])
    node.start()
    pids = {name: node.wait_running(name) for name in "ab"}
    os.unlink(node.config_path)
    wait_for(lambda: "%s is gone" % node.config_path in node.log(),
             what=lambda: "the worker to log the missing file:\n" + node.log())
    node.daemon.send_signal(signal.SIGHUP)  # a re-read finds nothing either
    wait_for(lambda: "keeping the last good configuration" in node.log(),
             what="the SIGHUP re-read")
    assert node.daemon.poll() is None
    assert node.running() == pids
    node.write([a, b])
    wait_for(lambda: "%s is back" % node.config_path in node.log(),
             what="the worker to see the file back")
    assert node.running() == pids
    os.unlink(node.config_path)
    wait_for(lambda: node.log().count("%s is gone" % node.config_path) == 2,
             what="the second removal")
    c = sleeper(node, "c", 62003)
    node.write([a, c])
    node.wait_running("c")
    wait_for(lambda: "b" not in node.status(), what="b removed")
    assert node.running()["a"] == pids["a"] and not is_alive(pids["b"])
    assert node.log().count("%s is gone" % node.config_path) == 2


# -- 5. the wall clock jumping ------------------------------------------------
#
# The start limit and the timers run on the monotonic clock, which no one
# can set. Both ways are tested: a real jump of a real worker's wall clock
# (libfaketime, preloaded into that worker only, its monotonic clock left
# real: `unshare --time` cannot shift CLOCK_REALTIME, and setting the
# machine's clock would disturb everything else on it), the fake clock of
# the unit tests for what a real test cannot wait for (a minute of spaced
# starts), and a look at the code: no wall-clock read where time is counted.

HOUR = 3600.0


def make_process(**fields):
    fields.setdefault("run", "/bin/false")
    fields.setdefault("pid_file", "/run/t/p.pid")
    clock, ops = FakeClock(), FakeOps()
    proc = P.Process(ProcessSpec(name="p", **fields), ops, clock)
    proc.want()
    return proc, ops, clock


def test_a_wall_clock_jump_forward_does_not_reset_the_start_limit():
    proc, ops, clock = make_process()
    first = clock.now
    for _ in range(P.START_LIMIT):
        proc.start()
        assert proc.state == P.RUNNING
        clock.wall_jump += HOUR  # each crash an hour later, by the wall
        clock.now += 0.1
        proc.on_exit("exit status 1")
    proc.start()
    assert proc.state == P.BACKOFF and len(ops.spawned) == P.START_LIMIT
    # Its backoff ends by the monotonic clock, a minute after the first
    # start; the status shows that time by the (jumped) wall clock.
    assert proc.deadline == first + P.START_WINDOW
    assert proc.next_start == clock.time() + first + P.START_WINDOW \
        - clock.now
    clock.wall_jump += HOUR
    proc.tick(first + P.START_WINDOW - 0.1)
    assert proc.state == P.BACKOFF


def test_a_wall_clock_jump_back_does_not_trigger_the_start_limit():
    """Starts a little more than a window apart (by the monotonic clock)
    never hit the limit, while the wall clock goes back an hour each time
    (a wall-clock limiter would see them all in its window)."""
    proc, ops, clock = make_process()
    for _ in range(4 * P.START_LIMIT):
        proc.start()
        assert proc.state == P.RUNNING, proc.error
        clock.wall_jump -= HOUR
        clock.now += P.START_WINDOW / (P.START_LIMIT - 1) + 0.1
        proc.on_exit("exit status 1")
    assert len(ops.spawned) == 4 * P.START_LIMIT


def test_a_wall_clock_jump_does_not_bring_the_sigkill_forward():
    proc, ops, clock = make_process(stop_timeout=10)
    proc.start()
    proc.stop()
    clock.wall_jump += HOUR
    clock.now += 9.9
    proc.tick(clock.now)
    assert ops.signals == [(proc.pid, signal.SIGTERM)]
    clock.now += 0.2
    proc.tick(clock.now)
    assert ops.signals[-1] == (proc.pid, signal.SIGKILL)


def wall_clock_reads(module):
    """``module``'s source, its syntax tree and the calls in it of
    ``time.time()``, ``time.time_ns()`` or any ``<clock>.time()``."""
    source = inspect.getsource(module)
    tree = ast.parse(source)
    reads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute)
             and node.func.attr in ("time", "time_ns")]
    return source, tree, reads


def test_no_wall_clock_read_counts_time():
    """The modules that keep deadlines and the start window never read the
    wall clock; process.py reads it only to show when things happened or
    will (``since``, ``started_at``, ``next_start``); the worker's loop
    runs on the monotonic clock."""
    for module in (loop, pidwatch, spawn, watch, backoff):
        _, _, reads = wall_clock_reads(module)
        assert reads == [], "%s reads the wall clock at lines %s" % (
            module.__name__, [node.lineno for node in reads])
    source, tree, reads = wall_clock_reads(P)
    shown = {"since", "started_at", "next_start"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for read in [r for r in ast.walk(node.value) if r in reads]:
            assert all(isinstance(t, ast.Attribute) and t.attr in shown
                       for t in node.targets), ast.get_source_segment(
                           source, node)
            reads.remove(read)
    assert reads == [], "process.py reads the wall clock at lines %s" % [
        node.lineno for node in reads]
    clock = FakeClock()
    worker = Worker(WorkerConfig("/etc/w.json", "/run/t/w.pid"),
                    logging.getLogger("test-clock"), clock=clock,
                    ops=FakeOps())
    assert worker.loop.clock == clock.monotonic
    assert Worker(WorkerConfig("/etc/w.json", "/run/t/w.pid"),
                  logging.getLogger("test-clock"), ops=FakeOps()
                  ).loop.clock is time.monotonic


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

# Each run moves its worker's wall clock an hour on, then crashes.
CLOCK_MOVER = ('n=$(tr -dc 0-9 < "$1"); echo "+$((n + 3600))s" > "$1.new";'
               ' mv "$1.new" "$1"; exit 3')


@pytest.mark.skipif(not os.path.exists(LIBFAKETIME), reason="needs "
                    "libfaketime (Debian package faketime; tests/setup-"
                    "system.sh installs it as root)")
def test_a_real_wall_clock_jump_does_not_reset_the_start_limit(node,
                                                               tmp_path):
    """A real dpd-workerd whose own wall clock (libfaketime, re-read at
    every call) its crashing program moves an hour on at each run: it still
    holds the program back after 5 starts (``backoff``, until a minute
    after the first by the monotonic clock), although by its wall clock
    they were 4 hours apart; the status file shows the clock it saw."""
    offset = tmp_path / "wall-offset"
    offset.write_text("+0s\n")
    node.write([node.proc("mover", "/bin/sh", "-c", CLOCK_MOVER, "sh",
                          str(offset), user=USER)])
    started = time.time()
    node.start(wrapper=[
        "env", "LD_PRELOAD=" + LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE=%s" % offset, "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1"])
    entry = node.wait_state("mover", "backoff", timeout=20)
    assert entry["starts"] == P.START_LIMIT, entry
    assert offset.read_text().strip() == "+%ds" % (P.START_LIMIT * HOUR)
    # The worker's wall clock did jump: what it wrote last is 5 hours on;
    # the next start it shows is within the minute by that clock.
    updated = node.status_doc()["updated"]
    assert updated - started > P.START_LIMIT * HOUR - 60
    assert 0 < entry["next_start"] - updated <= P.START_WINDOW, entry
    assert node.daemon.poll() is None


# -- 6. a recorded pid reused by another user's process -----------------------

@requires_root
def test_a_recorded_pid_now_another_users_process_is_left_alone(node):
    """The last worker's records name a pid that now belongs to a process
    of user nobody, started after the recorded one (other kernel start
    time): in the status file for a process still in CONFIG (its pid file
    names that pid too) and for one removed meanwhile, and in a journal
    line of another removed one. The next worker adopts none of them and
    never signals that process, neither at start nor when it later stops
    what it started in its place."""
    nobody = pwd.getpwnam("nobody")
    stranger = subprocess.Popen(
        ["/bin/sleep", "62100"], env=marked_env(node.marker),
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
        start_new_session=True)
    try:
        pid = stranger.pid
        ticks = wait_for(lambda: start_ticks(pid), what="the stranger")
        old = ticks - 1  # the recorded process started before it
        os.makedirs(os.path.dirname(node.pid_file), exist_ok=True)
        with open(str(node.dir / "run" / "svc.pid"), "w") as handle:
            handle.write("%d\n" % pid)
        stop = [int(signal.SIGTERM), 1.0]
        write_json(node.status_path, {
            "version": 2, "boot_id": boot_id(), "procs": {},
            "records": {name: {"pid": pid, "ticks": old, "stop": stop,
                               "fingerprint": "0", "write_pid": True}
                        for name in ("svc", "removed")}})
        line = JournalSlot(None, json.dumps({
            "boot_id": boot_id(), "name": "journalled", "daemon": False,
            "fingerprint": "0", "pid_file": None, "write_pid": False,
            "stop": stop}).encode()).line(pid, old)
        with open(journal_path(node.pid_file), "wb") as handle:
            handle.write(line)
        node.write([sleeper(node, "svc", 62101)])
        node.start()
        fresh = node.wait_running("svc")
        assert fresh != pid and node.state("svc")["adopted"] is False
        assert set(node.status()) == {"svc"}, node.status()
        log = node.log()
        for name in ("svc", "removed", "journalled"):
            assert "%s: pid %d from the last run is gone or is another " \
                "program now: not adopted" % (name, pid) in log
        assert read_pid(str(node.dir / "run" / "svc.pid")) == fresh
        node.write([])
        wait_for(lambda: not node.status(), what="svc removed")
        assert not is_alive(fresh)
        assert stranger.poll() is None and start_ticks(pid) == ticks, \
            "the other user's process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


# -- 8. a child that leaves its process group ---------------------------------

ESCAPING_PROGRAM = """
import os, sys, time
if os.fork() == 0:
    os.setsid()  # a session and a group of its own: the stop signal misses it
    with open(sys.argv[1] + ".tmp", "w") as handle:
        handle.write("%d\\n" % os.getpid())
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(1000)
"""


def test_a_child_that_calls_setsid_ends_with_a_cgroup_and_is_reaped(
        node, tmp_path):
    """As documented: with a cgroup per process, a child that left the
    group with setsid ends with the stop (test_cgroup.py has more); without
    one, the stop signal goes to the process's group only, so that child
    survives the stop. Either way the worker does not crash, and once that
    child exits (it was re-parented to the worker, a child subreaper) the
    worker reaps it: no zombie is left."""
    script = tmp_path / "escaping.py"
    script.write_text(ESCAPING_PROGRAM)
    escaped_pid_file = str(tmp_path / "escaped.pid")
    node.write([node.proc("esc", sys.executable, str(script),
                          escaped_pid_file, user=USER)])
    node.start()
    main = node.wait_running("esc")
    escaped = wait_for(lambda: read_pid(escaped_pid_file),
                       what="the escaped child's pid")
    assert os.getsid(escaped) == escaped != os.getsid(main)
    node.write([])
    wait_for(lambda: not node.status(), what="esc stopped and removed")
    assert not is_alive(main)
    if (node.status_doc().get("tree") or {}).get("path"):
        assert not is_alive(escaped)
    else:
        assert is_alive(escaped), "the escaped child was stopped: update " \
            "README"
        # Its parent is gone: it is the worker's child now.
        assert proc_stat(escaped).ppid == node.daemon.pid
        os.kill(escaped, signal.SIGKILL)
    assert node.daemon.poll() is None
    wait_for(lambda: proc_stat(escaped) is None, what=lambda: "the worker to "
             "reap it (state %s)" % (proc_stat(escaped),))
    node.write([sleeper(node, "after", 62200)])
    node.wait_running("after")


# -- 9. thousands of crashing programs: no descriptor or memory growth --------

def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def vm_kib(pid, field):
    """A memory figure of ``/proc/PID/status`` (VmRSS, VmHWM...) in KiB."""
    value = kernel.memory_bytes(pid, field)
    assert value is not None, "no %s for pid %d" % (field, pid)
    return value // 1024


def all_backing_off(node, names):
    status = node.status()
    return all(status.get(name, {}).get("state") == "backoff"
               for name in names)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_thousands_of_crashing_programs_leak_no_fd_and_no_memory(node):
    """1000 programs that exit at once, restarted until the start limit
    holds each back (``backoff``, 5000 starts, a deadline each); then all
    1000 replaced by 1000 others (churn: 1000 removed while in backoff,
    5000 more starts). The worker's descriptors come back to what it had
    with no process (and the dpd-exec server's socket, opened at the first
    start), and its RSS grows by the second round no more than a generous
    bound. (Measured before backoff, when they were given up: 9
    fds throughout; RSS 17.5 MB empty, 24.0 MB after the first round,
    24.9 MB after the second, then flat: 24.9 and 25.0 MB after a third and
    a fourth. In backoff, one run: 11 fds throughout; RSS 18.5, 24.9 and
    25.4 MB.) About 30 s: 10000 starts, each two forks of the worker. A
    round slower than a minute restarts its first programs a sixth time
    (their window passed), hence "at least" 5 starts."""
    count = 1000
    node.write([])
    node.start(verbose=False)
    pid = node.daemon.pid
    figures = [("empty", open_fds(pid), vm_kib(pid, "VmRSS"))]
    for round_ in ("first", "second"):
        names = ["%s%d" % (round_, i) for i in range(count)]
        node.write([node.proc(name, "/bin/false", user=USER)
                    for name in names])
        wait_for(lambda: all_backing_off(node, names) and set(node.status())
                 == set(names), timeout=80, interval=0.2,
                 what=lambda: "the %s round in backoff: %d of %d" % (
                     round_, sum(1 for e in node.status().values()
                                 if e.get("state") == "backoff"), count))
        assert all(entry["starts"] >= P.START_LIMIT
                   for entry in node.status().values())
        figures.append((round_, open_fds(pid), vm_kib(pid, "VmRSS")))
    print("worker fds / RSS KiB: %s" % figures)
    (_, fds0, rss0), (_, fds1, rss1), (_, fds2, rss2) = figures
    server = 0 if fork_path() or os.environ.get(
        "DIPROCD_EXEC_SERVER") == "none" else 1
    assert fds1 == fds0 + server and fds2 == fds1, figures
    assert rss1 - rss0 < 40 * 1024, figures  # 1000 Processes and their status
    assert rss2 - rss1 < 8 * 1024, figures
    assert node.daemon.poll() is None


# -- 11. the master's stats port flooded by a stranger ------------------------

def junk_messages(rng, count):
    """``count`` messages a stranger may send: random frames, wrong kinds,
    bodies that are not JSON or name another node, a wrong version."""
    def body(**fields):
        doc = {"v": 1, "node": "node1", "epoch": None, "seq": None,
               "status": None}
        doc.update(fields)
        return json.dumps(doc).encode()
    shapes = [
        lambda: [rng.randbytes(rng.randint(0, 200))
                 for _ in range(rng.randint(1, 5))],
        lambda: [b"junk", b"node1\0", body()],
        lambda: [b"status", b"node1", body()],
        lambda: [b"status", b"node1\0", rng.randbytes(100)],
        lambda: [b"hello", b"node1\0", body(node="node2")],
        lambda: [b"status", b"node1\0", body(v=9)],
        lambda: [b"status", b"\xff\0", body()],
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def flood(address, rng, connections=8, messages=2000, huge=2):
    """A stranger at ``address`` (tcp://127.0.0.1:PORT): 30 raw TCP
    connections sending random bytes (no ZeroMQ greeting), then
    ``connections`` PUSH sockets sending ``messages`` junk messages each and
    ``huge`` bodies of 5 MB (over the protocol's bound) and one of 9 MB
    (over the socket's). Returns how many messages went out."""
    host, port = address[len("tcp://"):].rsplit(":", 1)
    for _ in range(30):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            try:
                raw.sendall(rng.randbytes(64 * 1024))
            except OSError:
                pass  # the master hung up on us: fine
    context = zmq.Context()
    sent = 0
    try:
        pushes = []
        for _ in range(connections):
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 20000)  # all of it, within a bound
            push.setsockopt(zmq.SNDTIMEO, 5000)
            push.connect(address)
            pushes.append(push)
        big = [b"status", b"node1\0", b"x" * (5 * 1024 * 1024)]
        for push in pushes:
            for frames in junk_messages(rng, messages):
                push.send_multipart(frames)
                sent += 1
            for _ in range(huge):
                push.send_multipart(big)
                sent += 1
            push.send_multipart([b"status", b"node1\0",
                                 b"x" * (9 * 1024 * 1024)])
            sent += 1
        for push in pushes:
            push.close()
    finally:
        context.term()  # once every message is out (or the linger is over)
    return sent


DROPS_LINE = re.compile(r"dropped (a|\d+ more) malformed reports?")


def drops_logged(log):
    """How many malformed reports the master's log accounts for."""
    return sum(1 if count == "a" else int(count.split()[0])
               for count in DROPS_LINE.findall(log))


@pytest.mark.timeout(120)
def test_stats_port_flooded_by_a_stranger(tmp_path, marker):
    """While a stranger floods the master's stats port (random bytes, junk
    frames, wrong kinds, bodies over the bound, from many connections), the
    master keeps publishing, answers a hello, keeps its RSS bounded (by
    what is in flight at once; it keeps none of it) and logs the drops
    without a line per message."""
    a = process_doc(marker, "a", "/bin/sleep", "63200", user=USER)
    master = Master(tmp_path, marker, {"node1": [a]}, heartbeat=0.3)
    master.start()
    sub = Subscriber(master.updates, ["node1", "asker"])
    context = zmq.Context()
    asker = context.socket(zmq.PUSH)
    asker.setsockopt(zmq.LINGER, 0)
    asker.connect(master.stats)
    try:
        wait_for(sub.beats_heard, what="the first heartbeat")
        pid = master.daemon.pid
        rss_before = vm_kib(pid, "VmRSS")
        lines_before = master.log().count("\n")
        seed = random.randrange(1 << 32)
        connections = 8
        flooding = threading.Thread(target=lambda: flood(
            master.stats, random.Random(seed), connections), daemon=True)
        flooding.start()
        # In the middle of it: heartbeats go on, a hello from a node it
        # never heard of is answered at once (its empty list).
        beats = sub.beats_heard()
        wait_for(lambda: sub.beats_heard() > beats + 3, what="heartbeats "
                 "during the flood")
        asker.send_multipart(protocol.encode_report(
            protocol.Report(protocol.KIND_HELLO, "asker")))
        wait_for(lambda: sub.latest().get("asker") == (1, []), timeout=5,
                 what="the answer to a hello")
        flooding.join(60)
        assert not flooding.is_alive()
        # 30 raw connections, then per PUSH 2000 junk, 2 bodies over the
        # protocol's bound (malformed) and one over the socket's (never
        # delivered: the master hangs up).
        malformed = connections * (2000 + 2)
        wait_for(lambda: drops_logged(master.log()) >= malformed, timeout=15,
                 what=lambda: "%d drops logged (%d are)"
                 % (malformed, drops_logged(master.log())))
        assert master.daemon.poll() is None
        peak, rss_after = vm_kib(pid, "VmHWM"), vm_kib(pid, "VmRSS")
        log = master.log()
        added = log.count("\n") - lines_before
        print("master RSS %d KiB before, peak %d KiB, %d KiB after; %d log "
              "lines for %d malformed reports (seed %d)" % (
                  rss_before, peak, rss_after, added, malformed, seed))
        # (Random bytes on a raw connection may even pass for ZeroMQ 1.0
        # frames: more than the PUSH sockets' junk may be dropped.)
        assert drops_logged(log) >= malformed
        # At the peak, ZeroMQ may hold all 16 bodies of 5 MB at once (the
        # master drains them as fast as it is given the CPU): twice that.
        assert peak - rss_before < 160 * 1024
        assert rss_after - rss_before < 32 * 1024  # and it keeps nothing
        assert added < 50, log[-3000:]
        assert master.stop() == 0
    finally:
        asker.close()
        context.term()
        sub.close()
