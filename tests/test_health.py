"""Health checks (the ``check`` field): parsing and validation, then real
workers with real processes and real sockets on 127.0.0.1: an exec, a tcp
and an http check each make a process ready and, failing, restart it; a
dependent waits for its dependency's check; a slow check never holds the
worker's loop; an adopted process is checked again."""

import logging
import os
import pwd
import signal
import socket
import sys
import time

import pytest

from conftest import requires_root
from diprocd import config
from diprocd import process as P
from diprocd.health import HealthChecks
from diprocd.loop import Loop
from diprocd.spec import CheckSpec, ProcessSpec
from fakes import FakeClock, FakeOps
from helpers import free_port, marked_processes, run_command, wait_for

FAST = {"interval": 0.1, "timeout": 1, "failures": 2, "grace": 2}
# The test's own user: the flags live under pytest's folder (mode 0700).
ME = pwd.getpwuid(os.geteuid()).pw_name


# --- parsing and validation ---------------------------------------------------

def test_a_check_is_parsed_with_its_defaults():
    assert config.health_check({"tcp": "127.0.0.1:80"}) == CheckSpec(
        "tcp", "127.0.0.1:80", 10.0, 2.0, 3, 0.0)
    assert config.health_check({"exec": ["/bin/true", "x"], "interval": 5,
                                "timeout": 0.5, "failures": 1.0,
                                "grace": 30}) == CheckSpec(
        "exec", ("/bin/true", "x"), 5.0, 0.5, 1, 30.0)
    for url in ("http://127.0.0.1:8080/health?full=1", "http://[::1]/",
                "http://localhost"):
        assert config.health_check({"http": url}).target == url
    assert config.health_check({"tcp": "[::1]:9"}).target == "[::1]:9"


@pytest.mark.parametrize("value, why", [
    (3, "must be an object"),
    ({}, 'needs exactly one of "exec", "tcp" and "http", got none'),
    ({"tcp": "127.0.0.1:1", "http": "http://127.0.0.1/"},
     'got "tcp" and "http"'),
    ({"tcp": "127.0.0.1:1", "every": 5}, 'unknown key "every"'),
    ({"tcp": "example.com:80"}, "not a name"),
    ({"tcp": "127.0.0.1:0"}, '"tcp": must be "ADDRESS:PORT"'),
    ({"tcp": "256.1.1.1:80"}, '"tcp": must be'),
    ({"http": "https://127.0.0.1/"}, "https is not supported"),
    ({"http": "ftp://127.0.0.1/"}, '"http": must be a URL'),
    ({"http": "http://127.0.0.1/a b"}, '"http": must be a URL'),
    ({"exec": []}, '"exec": must be a list of strings'),
    ({"exec": ["true"]}, "the first an absolute path"),
    ({"exec": ["/bin/true", 1]}, '"exec": must be a list of strings'),
    ({"tcp": "127.0.0.1:1", "interval": 0}, '"interval": must be a number'),
    ({"tcp": "127.0.0.1:1", "timeout": "2"}, '"timeout": must be a number'),
    ({"tcp": "127.0.0.1:1", "failures": 0}, '"failures": must be a whole'),
    ({"tcp": "127.0.0.1:1", "failures": 1.5}, '"failures": must be a whole'),
    ({"tcp": "127.0.0.1:1", "grace": -1}, '"grace": must be a number'),
])
def test_a_bad_check_is_refused_naming_where_and_what(value, why):
    _, problems, _ = config.validate_procs(
        [{"name": "web", "run": "/bin/sleep", "check": value}], "w.json",
        check_users=False)
    assert len(problems) == 1
    assert problems[0].startswith('w.json: process "web": field "check": ')
    assert why in problems[0]


def test_null_is_no_check_and_the_spec_keeps_it():
    specs, problems, _ = config.validate_procs(
        [{"name": "a", "run": "/a", "check": None},
         {"name": "b", "run": "/b", "check": {"http": "http://127.0.0.1/"}}],
        "w.json", check_users=False)
    assert problems == [] and specs[0].check is None
    assert specs[1].to_json()["check"] == {
        "http": "http://127.0.0.1/", "interval": 10.0, "timeout": 2.0,
        "failures": 3, "grace": 0.0}


# --- the counting, with a fake clock ------------------------------------------

def started_with_checks(check, **fields):
    """A Process with ``check``, started on fakes, its checks followed:
    (proc, ops, clock, checks, its check record)."""
    clock, ops = FakeClock(), FakeOps()
    proc = P.Process(ProcessSpec(name="p", run="/bin/sleep", check=check,
                                 **fields), ops, clock)
    checks = HealthChecks(Loop(clock=clock.monotonic), None, clock,
                          logging.getLogger("test"), lambda: None)
    ops.changed = checks.follow
    proc.want()
    proc.start()
    return proc, ops, clock, checks, checks.records[proc]


def test_readiness_grace_and_failures_in_a_row_restart_through_on_exit():
    proc, ops, clock, checks, record = started_with_checks(CheckSpec(
        "tcp", "127.0.0.1:9", interval=1, failures=2, grace=5, timeout=1))

    def result(ok, output):  # a probe begun and ended now
        record.started = clock.now
        checks.result(record, ok, output)
    assert proc.state == P.RUNNING and proc.shown_state == P.STARTING
    assert not proc.ready and not proc.as_desired
    clock.now += 1
    result(False, "refused")  # within the grace: not counted
    assert (record.failures, record.word) == (0, "failing")
    result(True, "connected")
    assert proc.ready and proc.shown_state == P.RUNNING and proc.as_desired
    clock.now += 10
    result(False, "refused")
    assert record.failures == 1 and proc.ready and ops.signals == []
    result(True, "connected")  # in a row, or not at all
    result(False, "refused")
    result(False, "refused")
    assert ops.signals == [(101, signal.SIGTERM)] and not record.active
    assert record.word == "unhealthy" and proc.state == P.RUNNING
    clock.now += 10  # stop_timeout: SIGKILL, as a stop
    proc.tick(clock.now)
    assert ops.signals[-1] == (101, signal.SIGKILL)
    proc.on_exit("killed by SIGKILL")  # the path of any death
    assert proc.state == P.WAITING and proc.deadline is None
    assert proc.last_exit == ("killed by SIGKILL, ended because 2 health "
                              "checks in a row failed (last: refused)")
    assert proc not in checks.records and proc.health.word == "unhealthy"
    proc.start()  # a new pid, checked anew, starting again
    assert checks.records[proc].pid == 102 and not proc.ready
    proc.stop()  # stopped: nothing to show of a check that is over
    assert proc not in checks.records and proc.health is None


# --- real workers -------------------------------------------------------------

SERVER = r'''
import os, select, socket, sys, time
mode, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
listener = None
while True:
    up = os.path.exists(flag)
    if listener is None and (up or mode == "http"):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
    elif listener is not None and not up and mode == "tcp":
        listener.close()
        listener = None
    if listener is None:
        time.sleep(0.02)
        continue
    if not select.select([listener], [], [], 0.02)[0]:
        continue
    conn, _ = listener.accept()
    conn.settimeout(2)
    try:
        conn.recv(4096)
        status = b"200 OK" if up else b"503 Service Unavailable"
        conn.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain"
                     b"\r\n\r\nflag " + (b"up" if up else b"down") + b"\n")
    except OSError:
        pass
    conn.close()
'''


def server(node, tmp_path, name, mode, port, flag, **fields):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    os.chmod(script, 0o644)
    return node.proc(name, sys.executable, str(script), mode, str(port),
                     str(flag), **fields)


def checked(node, tmp_path, kind, flag):
    """A process whose ``kind`` check passes while ``flag`` exists."""
    port = free_port()
    if kind == "exec":
        return node.proc("web", "/bin/sleep", "10007", user=ME, check=dict(
            FAST, exec=["/bin/sh", "-c", 'test -e "$1" && echo "flag up"',
                        "-", str(flag)]))
    target = {"tcp": "127.0.0.1:%d" % port,
              "http": "http://127.0.0.1:%d/health" % port}[kind]
    return server(node, tmp_path, "web", kind, port, flag, user=ME,
                  check=dict(FAST, **{kind: target}))


@pytest.mark.parametrize("kind", ["exec", "tcp", "http"])
def test_a_check_makes_a_process_ready_and_failing_restarts_it(
        node, tmp_path, kind):
    flag = tmp_path / "up"
    node.write([checked(node, tmp_path, kind, flag)])
    node.start()
    entry = node.wait_state("web", "starting")  # runs, not passed yet
    assert entry["pid"] and entry["ok"] is False
    first = entry["pid"]
    wait_for(lambda: node.state("web")["health"]["health"] == "failing",
             what=lambda: node.state("web"))
    flag.touch()
    pid = node.wait_running("web", timeout=15)
    entry = node.state("web")
    assert entry["health"]["health"] == "healthy" and entry["ok"]
    assert {"exec": "flag up", "tcp": "connected to",
            "http": "HTTP/1.0 200 OK\nflag up"}[kind] in \
        entry["health"]["output"]
    # Its failures within the grace did not count: the same pid.
    assert (pid, entry["starts"]) == (first, 1)
    flag.unlink()
    # Failing: ended and started again (a new pid), starting until it
    # passes again.
    entry = wait_for(lambda: node.state("web").get("pid") not in (None, pid)
                     and node.state("web"), timeout=15,
                     what=lambda: "a restart: %s" % node.state("web"))
    assert "health checks in a row failed" in entry["last_exit"]
    assert entry["state"] == "starting"
    assert "health check failed" in node.log()
    flag.touch()
    assert node.wait_running("web", timeout=15) != pid


def test_a_dependent_starts_once_its_dependency_passed(node, tmp_path):
    flag = tmp_path / "up"
    db = node.proc("db", "/bin/sleep", "10008", user=ME, check=dict(
        interval=0.1, timeout=1, failures=1000,
        exec=["/bin/sh", "-c", 'test -e "$1"', "-", str(flag)]))
    app = node.proc("app", "/bin/sleep", "10009", depends=["db"])
    node.write([db, app])
    node.start()
    node.wait_state("db", "starting")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # db runs, unchecked: app waits
        assert node.state("app").get("state") == "waiting"
        time.sleep(0.05)
    flag.touch()
    node.wait_running("app", timeout=10)
    assert node.state("db")["state"] == "running"
    assert node.state("app")["started_at"] >= node.state("db")["health"][
        "since"] - 0.01


def checks_running(marker):
    return [pid for pid, argv in marked_processes(marker).items()
            if argv[-1] in ("10012", "10013")]


def test_a_slow_check_never_holds_the_loop(node, tmp_path, marker):
    """An http server that accepts but never answers, a tcp listener whose
    backlog is full, an exec check that never ends (its whole group killed
    at the timeout): meanwhile another process killed is restarted at once
    and the worker answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; no answer
    # A backlog full of connections nobody accepts: a connect hangs (the
    # kernel drops its SYNs).
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(full.getsockname())
        fillers.append(filler)
    deaf = "127.0.0.1:%d" % full.getsockname()[1]
    try:
        port = silent.getsockname()[1]
        node.write([
            node.proc("deaf", "/bin/sleep", "10017", check={
                "tcp": deaf, "interval": 0.1, "timeout": 2,
                "failures": 100}),
            node.proc("mute", "/bin/sleep", "10010", check={
                "http": "http://127.0.0.1:%d/" % port, "interval": 0.1,
                "timeout": 4, "failures": 100}),
            node.proc("stuck", "/bin/sleep", "10011", check={
                "exec": ["/bin/sh", "-c", "sleep 10012 & sleep 10013"],
                "interval": 0.1, "timeout": 3, "failures": 100}),
            node.proc("other", "/bin/sleep", "10014")])
        node.start()
        node.wait_state("mute", "starting")
        other = node.wait_running("other")
        first_check = wait_for(lambda: len(checks_running(marker)) == 2
                               and checks_running(marker),
                               what="the exec check running")
        began = time.monotonic()
        os.kill(other, 9)
        wait_for(lambda: node.state("other").get("pid") not in (None, other),
                 timeout=5, what=lambda: node.state("other"))
        node.wait_running("other")
        restart = time.monotonic() - began
        result = run_command("dpd-workerd", ["--status", node.config_path])
        answered = time.monotonic() - began
        assert all(name in result.stdout for name in ("mute", "stuck",
                                                      "deaf"))
        assert restart < 2.0 and answered < 3.0, (restart, answered)
        # Each expires at its timeout; the exec check's group is gone.
        wait_for(lambda: (node.state("mute").get("health") or {}).get(
            "output") == "no answer within 4s", timeout=10,
            what=lambda: node.state("mute"))
        wait_for(lambda: "killed after 3s" in (node.state("stuck").get(
            "health") or {}).get("output", ""), timeout=10,
            what=lambda: node.state("stuck"))
        # The first check's processes, both, are killed and reaped (later
        # checks run meanwhile: those are other pids).
        wait_for(lambda: not any(os.path.exists("/proc/%d" % pid)
                                 for pid in first_check), timeout=5,
                 what="the timed-out check's group gone")
        wait_for(lambda: (node.state("deaf").get("health") or {}).get(
            "output") == "connect to %s: no answer within 2s" % deaf,
            timeout=10, what=lambda: node.state("deaf"))
        assert node.state("mute")["state"] == "starting"
    finally:
        for sock in [silent, full] + fillers:
            sock.close()


def test_an_adopted_process_is_checked_again(node, tmp_path):
    flag = tmp_path / "up"
    flag.touch()
    node.write([checked(node, tmp_path, "tcp", flag)])
    node.start()
    pid = node.wait_running("web", timeout=10)
    node.stop(9)
    node.start()
    entry = node.wait_state("web", "running", timeout=10, adopted=True)
    assert entry["pid"] == pid and entry["health"]["health"] == "healthy"
    status = run_command("dpd-workerd", ["--status", node.config_path])
    assert "check healthy" in status.stdout, status.stdout
    flag.unlink()
    wait_for(lambda: node.state("web").get("pid") not in (None, pid),
             timeout=10, what=lambda: node.state("web"))


def test_an_ipv6_tcp_check(node):
    """"[::1]:PORT": a connect over IPv6 (the kernel completes it in the
    listener's backlog; nobody needs to accept)."""
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(("::1", 0))
    except OSError as err:
        listener.close()
        pytest.skip("no IPv6 loopback: %s" % err)
    listener.listen(16)
    try:
        target = "[::1]:%d" % listener.getsockname()[1]
        node.write([node.proc("v6", "/bin/sleep", "10015", check={
            "tcp": target, "interval": 0.1})])
        node.start()
        node.wait_running("v6")
        assert node.state("v6")["health"]["output"] == "connected to " + \
            target
    finally:
        listener.close()


@requires_root
def test_an_exec_check_runs_as_the_process_does(node):
    """The process's user, cwd, env and umask; its own process group."""
    node.write([node.proc("as", "/bin/sleep", "10016", user="nobody",
                          cwd="/tmp", env={"FOO": "bar baz"}, umask="027",
                          check={"exec": ["/bin/sh", "-c",
                                          'echo "$(id -un) $(pwd) $FOO '
                                          '$(umask) $(ps -o pgid= $$)" $$'],
                                 "interval": 0.1})])
    node.start()
    node.wait_running("as")
    output = node.state("as")["health"]["output"]
    words = output.split()
    assert words[:5] == ["nobody", "/tmp", "bar", "baz", "0027"], output
    assert words[5] == words[6]  # the shell leads its own group


def test_a_failed_check_restarts_through_the_restart_policy():
    """A process ended by its check backs off like any quick death."""
    proc, ops, clock, checks, record = started_with_checks(
        CheckSpec("tcp", "127.0.0.1:9", failures=1), restart_delay=5)
    record.started = clock.now
    checks.result(record, False, "refused")
    assert ops.signals == [(101, signal.SIGTERM)]
    proc.on_exit("killed by SIGTERM")
    assert proc.state == P.BACKOFF and proc.deadline > clock.now + 4
    assert "health checks in a row failed" in proc.last_exit
