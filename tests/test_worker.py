"""dpd-workerd end to end: real processes, real files, deadlines not sleeps.

Each test runs ``dpd-workerd -f`` on a temp CONFIG. Every supervised process
gets the test's marker in its ``env``, so the ``marker`` fixture ends them
all, and nothing else.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest

from conftest import requires_root
from diprocd.daemon import read_pid
from diprocd.kernel import cpu_ticks, is_alive
from diprocd import spawn
from helpers import (fork_path, free_port, marked_env, patched_python,
                     run_command, wait_for, wrapped_helper, write_json)


def sleeper(node, name, **fields):
    return node.proc(name, "/bin/sleep", "1000%d" % (abs(hash(name)) % 1000), **fields)


def test_start_env_cwd_logs_pidfile(node, tmp_path):
    logs = str(tmp_path / "out.log")
    node.write([node.proc("echo", "/bin/sh", "-c",
                          'echo "foo=$FOO home=$HOME"; pwd; echo err >&2; exec sleep 1000',
                          env={"FOO": "bar baz"}, cwd="/tmp", logs=logs)])
    node.start()
    pid = node.wait_running("echo")
    wait_for(lambda: "err" in open(logs).read(), what="the log")
    text = open(logs).read()
    assert "foo=bar baz" in text and "/tmp\n" in text and "err\n" in text
    assert int(open(str(tmp_path / "run" / "echo.pid")).read()) == pid
    environ = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
    assert b"FOO=bar baz" in environ and any(e.startswith(b"PATH=") for e in environ)
    assert not any(e.startswith(b"PYTHONPATH=") for e in environ)  # clean env
    # The worker raised its own open-files limit; the program gets ours back.
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits = [l for l in open("/proc/%d/limits" % pid) if l.startswith("Max open files")]
    assert limits[0].split()[3] == str(soft)
    # Own session and process group: it survives the worker.
    assert os.getsid(pid) != os.getsid(node.daemon.pid)
    assert os.getpgid(pid) == pid
    status = run_command("dpd-workerd", ["--status", node.config_path])
    assert status.returncode == 0, status.stdout
    assert "echo" in status.stdout and "running" in status.stdout


@requires_root
def test_runs_as_nobody_by_default(node):
    node.write([sleeper(node, "sl")])
    node.start()
    pid = node.wait_running("sl")
    nobody = pwd.getpwnam("nobody")
    uids = [l for l in open("/proc/%d/status" % pid) if l.startswith("Uid:")][0]
    assert uids.split()[1:] == [str(nobody.pw_uid)] * 4
    assert os.stat("/proc/%d" % pid).st_gid == nobody.pw_gid
    groups = [l for l in open("/proc/%d/status" % pid) if l.startswith("Groups:")]
    assert sorted(map(int, groups[0].split()[1:])) == sorted(
        set(os.getgrouplist("nobody", nobody.pw_gid)))


@requires_root
def test_chroot(node, tmp_path):
    root = tmp_path / "jail"
    binary = shutil.which("sleep")
    files = [binary]
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    files += [p for p in out.split() if p.startswith("/")]
    for path in files:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    (root / "work").mkdir()
    node.write([node.proc("jailed", binary, "1000", chroot=str(root), cwd="work",
                          user="root"),
                node.proc("nojail", "/bin/sleep", "1000", chroot=str(tmp_path / "missing"),
                          restart=False)])
    node.start()
    pid = node.wait_running("jailed")
    assert os.readlink("/proc/%d/root" % pid) == str(root)
    assert os.readlink("/proc/%d/cwd" % pid) == str(root / "work")
    failed = node.wait_state("nojail", "failed")
    assert "chroot" in failed["error"] and "No such file" in failed["error"]


def test_restart_after_kill_9(node):
    node.write([sleeper(node, "victim")])
    node.start()
    pid = node.wait_running("victim")
    os.kill(pid, signal.SIGKILL)
    entry = wait_for(lambda: node.state("victim").get("starts") == 2
                     and node.state("victim"), what="a restart")
    new_pid = node.wait_running("victim")
    assert new_pid != pid
    assert entry["last_exit"] == "killed by SIGKILL"


def test_start_limit_backs_off_and_give_up_after_gives_up(node):
    """Five starts within a minute: the next waits (``backoff``) for the
    window, it is not given up; ``give_up_after: 5`` gives up as the seed
    did. SIGHUP retries both at once."""
    node.write([node.proc("crash", "/bin/sh", "-c", "exit 3"),
                node.proc("quitter", "/bin/sh", "-c", "exit 4",
                          give_up_after=5)])
    begun = time.time()
    node.start()
    entry = node.wait_state("crash", "backoff", starts=5)
    assert entry["last_exit"] == "exit status 3" and not entry["ok"]
    assert entry["error"] == "started 5 times within 60s (last: exit status 3)"
    # The next start: a minute after the first, by the worker's clock.
    assert begun + 50 < entry["next_start"] < time.time() + 60, entry
    quitter = node.wait_state("quitter", "given-up", starts=5)
    assert quitter["error"].startswith("failed 5 times in a row (last: exit "
                                       "status 4): given up until")
    assert quitter["next_start"] is None
    status = run_command("dpd-workerd", ["--status", node.config_path])
    assert status.returncode == 1, status.stdout
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[2:]}
    assert rows["crash"].split()[1] == "*backoff"
    assert "next start in " in rows["crash"]
    assert "started 5 times within 60s (last: exit status 3)" in rows["crash"]
    assert rows["quitter"].split()[1] == "*given-up"
    # SIGHUP gives each five more starts now.
    node.daemon.send_signal(signal.SIGHUP)
    node.wait_state("quitter", "given-up", starts=10)
    node.wait_state("crash", "backoff", starts=10)


def start_times(path, count, timeout):
    """The first ``count`` start times a program wrote to ``path``, one a
    line (its own clock: ``date +%s.%N``)."""
    def read():
        try:
            lines = open(path).read().split()
        except FileNotFoundError:
            return None
        return [float(t) for t in lines[:count]] if len(lines) >= count \
            else None
    return wait_for(read, timeout=timeout, interval=0.05,
                    what=lambda: "%d starts in %s: %r" % (
                        count, path, open(path).read()
                        if os.path.exists(path) else None))


ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_failing_program_backs_off_and_is_retried_after_the_window(
        node, tmp_path):
    """``restart_delay`` 0.5 s doubling to ``restart_delay_max`` 2 s: the
    first five starts 0.5, 1, 2 and 2 s apart (±10 %); the sixth waits,
    in ``backoff``, for the 5-starts-a-minute window (a minute after the
    first start), then starts: not given up; the seventh 2 s later. About
    65 s: the rule's minute is fixed."""
    out = str(tmp_path / "starts")
    node.write([node.proc("flaky", "/bin/sh", "-c",
                          'date +%s.%N >> "$1"; exit 1', "sh", out, user=ME,
                          restart_delay=0.5, restart_delay_max=2)])
    node.start()
    first = start_times(out, 5, timeout=20)
    entry = node.wait_state("flaky", "backoff", starts=5)
    assert entry["error"] == "started 5 times within 60s (last: exit status 1)"
    assert first[0] + 58 < entry["next_start"] < first[0] + 61, (entry, first)
    gaps = [b - a for a, b in zip(first, first[1:])]
    for gap, delay in zip(gaps, (0.5, 1, 2, 2)):
        assert 0.9 * delay - 0.05 <= gap <= 1.1 * delay + 1.0, gaps
    times = start_times(out, 7, timeout=80)
    print("start times after the first: %s" % [
        round(t - times[0], 2) for t in times])
    assert 59.9 <= times[5] - times[0] <= 63, times
    assert 1.75 <= times[6] - times[5] <= 2.2 + 1.0, times
    # The status follows the start within STATUS_INTERVAL.
    wait_for(lambda: node.state("flaky")["starts"] >= 7,
             what="the seventh start in the status")
    assert node.daemon.poll() is None


def test_a_run_past_restart_delay_reset_gets_a_fresh_delay(node, tmp_path):
    """Three quick failures (delays 0.5, 1, 2 s), then a run of 2.5 s,
    longer than ``restart_delay_reset`` (2 s): the restart after it waits
    0.5 s again, not the 4 s the fourth failure in a row would."""
    out = str(tmp_path / "starts")
    script = ('n=$(cat "$1" 2>/dev/null | wc -l); date +%s.%N >> "$1"; '
              'if [ "$n" -lt 3 ]; then exit 1; fi; '
              'if [ "$n" -eq 3 ]; then sleep 2.5; exit 1; fi; '
              'exec sleep 1000')
    node.write([node.proc("phoenix", "/bin/sh", "-c", script, "sh", out,
                          user=ME, restart_delay=0.5, restart_delay_max=30,
                          restart_delay_reset=2)])
    node.start()
    times = start_times(out, 5, timeout=30)
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, delay in zip(gaps, (0.5, 1, 2)):
        assert 0.9 * delay - 0.05 <= gap <= 1.1 * delay + 1.0, gaps
    print("gaps between starts: %s" % [round(g, 2) for g in gaps])
    fresh = gaps[3] - 2.5  # its delay after the long run
    assert 0.4 <= fresh <= 1.8, gaps  # not 3.6 s or more
    entry = node.wait_state("phoenix", "running", starts=5)
    assert entry["last_exit"] == "exit status 1"


def test_spawn_error_is_reported(node):
    node.write([node.proc("nope", "/no/such/program", restart=False)])
    node.start()
    entry = node.wait_state("nope", "failed")
    assert entry["error"] == "exec /no/such/program: No such file or directory"


def test_reload_add_remove_change_keeps_unchanged(node):
    keep, change, remove = (sleeper(node, "keep"), sleeper(node, "change"),
                            sleeper(node, "remove"))
    node.write([keep, change, remove])
    node.start()
    pids = {name: node.wait_running(name) for name in ("keep", "change", "remove")}
    changed = dict(change, args=["2000"])
    node.write([keep, changed, sleeper(node, "added")])
    added_pid = node.wait_running("added")
    new_change = wait_for(lambda: node.state("change").get("pid") not in (None, pids["change"])
                          and node.state("change").get("state") == "running"
                          and node.state("change")["pid"], what="change restarted")
    wait_for(lambda: "remove" not in node.status(), what="remove to go")
    assert not is_alive(pids["remove"]) and not is_alive(pids["change"])
    assert not os.path.exists(str(node.dir / "run" / "remove.pid"))
    assert node.state("keep")["pid"] == pids["keep"] and node.state("keep")["starts"] == 1
    assert "2000" in open("/proc/%d/cmdline" % new_change).read()
    assert is_alive(added_pid)


def test_in_place_write_is_picked_up(node):
    node.write([sleeper(node, "one")])
    node.start()
    node.wait_running("one")
    with open(node.config_path, "r+") as handle:  # same inode, rewritten
        import json
        document = json.load(handle)
        document["procs"].append(sleeper(node, "two"))
        handle.seek(0)
        handle.truncate()
        json.dump(document, handle)
    node.wait_running("two")


HOLD_BEFORE_WATCHING = """
import os, time
from diprocd import loop
real_watch = loop.FileWatch
def held_watch(*args, **kwargs):
    open(%(held)r, "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(%(go)r) and time.monotonic() < deadline:
        time.sleep(0.01)
    return real_watch(*args, **kwargs)
loop.FileWatch = held_watch
"""


def test_a_write_while_the_worker_starts_is_applied(node, tmp_path):
    """A dpd-clientd started with the worker may rewrite CONFIG while the
    worker starts (the distributed tests' late-client flake). Here the
    worker is held, as a busy machine may hold it, after it read CONFIG and
    before it watches it; CONFIG is rewritten meanwhile."""
    held, go = str(tmp_path / "held"), str(tmp_path / "go")
    node.write([])
    node.start(wait=False, wrapper=patched_python(
        HOLD_BEFORE_WATCHING % {"held": held, "go": go}))
    wait_for(lambda: os.path.exists(held), what="the worker to read CONFIG")
    node.write([sleeper(node, "late")])
    open(go, "w").close()
    wait_for(node.worker_up, what="the worker's status file")
    node.wait_running("late", timeout=2)


def test_invalid_config_changes_nothing(node):
    node.write([sleeper(node, "a"), sleeper(node, "b")])
    node.start()
    pids = {n: node.wait_running(n) for n in "ab"}
    with open(node.config_path, "w") as handle:
        handle.write('{"pid_file": "%s", "procs": [{"name": "a", "run": "sleep"}]}'
                     % node.pid_file)
    # The worker logs each problem, then that it keeps the last good
    # configuration: wait for that last line, then look for the problem.
    wait_for(lambda: "keeping the last good configuration" in node.log(),
             what="the error in the log")
    assert 'field "run": must be an absolute path' in node.log()
    with open(node.config_path, "w") as handle:
        handle.write("{broken")
    wait_for(lambda: "not JSON" in node.log(), what="the JSON error")
    assert {n: node.state(n)["pid"] for n in "ab"} == pids
    assert all(is_alive(p) for p in pids.values())
    node.write([sleeper(node, "a"), sleeper(node, "b"), sleeper(node, "c")])
    node.wait_running("c")
    assert {n: node.state(n)["pid"] for n in "ab"} == pids


def test_invalid_config_at_startup_exits_1(node):
    with open(node.config_path, "w") as handle:
        handle.write('{"pid_file": "%s", "procs": [{"name": "x"}]}' % node.pid_file)
    result = run_command("dpd-workerd", ["-f", node.config_path], node.marker)
    assert result.returncode == 1
    assert 'process "x": field "run": required' in result.stderr
    assert not os.path.exists(node.pid_file)


def test_second_instance_exits_0(node):
    node.write([sleeper(node, "only")])
    node.start()
    pid = node.wait_running("only")
    result = run_command("dpd-workerd", [node.config_path], node.marker)
    assert result.returncode == 0
    assert "already running (pid %d)" % node.daemon.pid in result.stdout
    assert node.worker_pid() == node.daemon.pid
    assert node.instances("1000") == [pid]


def test_sigterm_leaves_processes_running(node):
    node.write([sleeper(node, "survivor")])
    node.start()
    pid = node.wait_running("survivor")
    node.stop(signal.SIGTERM)
    assert node.daemon.returncode == 0
    assert not os.path.exists(node.pid_file)
    assert is_alive(pid)


def test_kill_9_worker_then_adopt_without_duplicates(node):
    node.write([sleeper(node, "a"), sleeper(node, "b"),
                node.proc("c", "/bin/sleep", "1003")])
    node.start()
    pids = {n: node.wait_running(n) for n in "abc"}
    node.stop(signal.SIGKILL)
    # While the worker is down: "c" changes, "b" is removed.
    node.write([sleeper(node, "a"), node.proc("c", "/bin/sleep", "1004")])
    node.start()
    assert node.wait_running("a") == pids["a"]
    assert node.state("a")["adopted"] is True
    wait_for(lambda: node.state("c").get("pid") not in (None, pids["c"])
             and node.state("c")["state"] == "running", what="c restarted once")
    wait_for(lambda: "b" not in node.status(), what="b stopped")
    assert not is_alive(pids["b"]) and not is_alive(pids["c"])
    assert len(node.instances("1003")) == 0 and len(node.instances("1004")) == 1
    # The adopted process is still supervised: kill it, it comes back once.
    os.kill(pids["a"], signal.SIGKILL)
    wait_for(lambda: node.state("a").get("pid") not in (None, pids["a"])
             and node.state("a")["state"] == "running", what="a restarted")
    assert len(node.instances("sleep")) == 2


def test_stale_pid_file_of_another_program_is_ignored(node, tmp_path):
    unrelated = subprocess.Popen(["/bin/sleep", "1000"], env=marked_env(node.marker),
                                 start_new_session=True)
    try:
        os.makedirs(str(tmp_path / "run"), exist_ok=True)
        with open(str(tmp_path / "run" / "svc.pid"), "w") as handle:
            handle.write("%d\n" % unrelated.pid)
        # A status file that even names that pid, but with another start time.
        write_json(node.status_path, {
            "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(),
            "procs": {"svc": {"pid": unrelated.pid, "state": "running"}},
            "records": {"svc": {"pid": unrelated.pid, "ticks": 1}}})
        node.write([node.proc("svc", "/bin/sleep", "1005")])
        node.start()
        pid = node.wait_running("svc")
        assert pid != unrelated.pid and node.state("svc")["adopted"] is False
        node.stop()
        node.write([])
        node.start()
        wait_for(lambda: "svc" not in node.status(), what="svc removed")
        assert not is_alive(pid)
        assert unrelated.poll() is None, "the unrelated process was signalled"
    finally:
        unrelated.kill()
        unrelated.wait()


def test_stop_escalates_to_sigkill(node):
    stubborn = node.proc("stubborn", "/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done",
                         stop_timeout=0.5)
    node.write([stubborn])
    node.start()
    pid = node.wait_running("stubborn")
    node.write([])
    stopping = node.wait_state("stubborn", "stopping")
    wait_for(lambda: not is_alive(pid), timeout=10, what="SIGKILL")
    # It outlived its SIGTERM for stop_timeout, then SIGKILL ended it.
    assert time.time() - stopping["since"] >= 0.5
    assert "stubborn: still alive 0.5s after SIGTERM: SIGKILL" in node.log()
    wait_for(lambda: "stubborn: stopped (killed by SIGKILL)" in node.log(),
             what="the stop's end")


def test_dependencies_start_in_order_and_stop_in_reverse(node):
    db = node.proc("db", "/bin/sleep", "1006", stop_timeout=2)
    app = node.proc("app", "/bin/sh", "-c", "trap 'sleep 0.3; exit 0' TERM; sleep 1007 & wait",
                    depends=["db"])
    node.write([app, db])
    node.start()
    db_pid = node.wait_running("db")
    app_pid = node.wait_running("app")
    assert node.state("app")["started_at"] >= node.state("db")["started_at"]
    node.write([])
    wait_for(lambda: not node.status(), what="both removed")
    log = node.log()
    assert log.index("app: stopping") < log.index("db: stopping")
    assert log.index("app: stopped") < log.index("db: stopping")
    assert not is_alive(db_pid) and not is_alive(app_pid)


def test_daemonizes_without_f(node, tmp_path):
    node.write([sleeper(node, "bg")])
    result = run_command("dpd-workerd", ["-v", node.config_path], node.marker)
    assert result.returncode == 0, result.stderr
    pid = wait_for(node.worker_pid, what="the daemon's pid file")
    try:
        wait_for(lambda: node.state("bg").get("state") == "running", what="bg")
        wait_for(lambda: "started" in open(str(tmp_path / "worker.log")).read(),
                 what="the log file")
        assert os.getsid(pid) != os.getsid(0)  # detached: another session
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not is_alive(pid), what="the daemon to exit")
    assert not os.path.exists(node.pid_file)


REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.mark.skipif(not os.path.exists(REDIS),
                    reason="redis-server not installed (tests/setup-system.sh installs it as root)")
def test_forking_daemon(node, tmp_path):
    port = free_port()
    redis_pid = str(tmp_path / "redis.pid")
    node.write([node.proc("redis", REDIS, "--port", str(port), "--bind", "127.0.0.1",
                          "--daemonize", "yes", "--pidfile", redis_pid,
                          "--dir", str(tmp_path), "--save", "",
                          "--logfile", str(tmp_path / "redis.log"),
                          user="root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name,
                          daemon=True, write_pid=False, pid_file=redis_pid)])
    node.start()
    pid = node.wait_running("redis")
    assert int(open(redis_pid).read()) == pid
    assert "redis-server" in open("/proc/%d/cmdline" % pid).read()
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: node.state("redis").get("state") == "running"
                       and node.state("redis")["pid"] != pid and node.state("redis")["pid"],
                       what="redis restarted")
    assert is_alive(new_pid)
    node.write([])
    wait_for(lambda: not is_alive(new_pid), what="redis stopped")


def test_fallbacks_without_pidfd_and_inotify(node):
    """Kernels without pidfd_open or inotify: the worker polls pids (0.5 s)
    and stats CONFIG (50 ms) instead; behaviour is the same."""
    node.write([sleeper(node, "polled")])
    node.start(wrapper=patched_python(
        "from diprocd import kernel, watch",
        "kernel.pidfd_open = lambda pid: None",
        "watch.FileWatch._start_inotify = lambda self: None"))
    pid = node.wait_running("polled")
    assert "no inotify" in node.log() and "no pidfd" in node.log()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: node.state("polled").get("pid") not in (None, pid)
             and node.state("polled")["state"] == "running", what="restart by polling")
    node.write([sleeper(node, "polled"), sleeper(node, "second")])
    node.wait_running("second")


def test_log_file_survives_logrotate(node, tmp_path):
    node.write([sleeper(node, "x")])
    result = run_command("dpd-workerd", [node.config_path], node.marker)
    assert result.returncode == 0, result.stderr
    pid = wait_for(node.worker_pid, what="the daemon")
    log_file = str(tmp_path / "worker.log")
    try:
        wait_for(lambda: os.path.exists(log_file) and "started" in open(log_file).read(),
                 what="the log")
        os.rename(log_file, log_file + ".1")  # what logrotate does
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: os.path.exists(log_file)
                 and "SIGHUP" in open(log_file).read(), what="a new log file")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not is_alive(pid), what="the daemon to exit")


def test_kill_9_during_a_burst_of_starts_leaves_no_duplicate(node):
    """Every pid is recorded (journal) before its program may exec, so a
    worker killed in the middle of a cold start is followed by one that
    adopts what was started and starts only the rest."""
    count = 150
    node.write([node.proc("b%d" % i, "/bin/sleep", "%d" % (20000 + i)) for i in range(count)])
    node.start(verbose=False, wait=False)
    wait_for(lambda: len(node.instances("sleep")) >= 20, what="the burst to begin")
    node.daemon.kill()
    node.daemon.wait()
    node.start()
    wait_for(lambda: sum(1 for e in node.status().values()
                         if e.get("state") == "running") == count, timeout=30,
             what="all running")
    for i in range(count):
        assert len(node.instances("%d" % (20000 + i))) == 1, "duplicate of b%d" % i
    # Those the killed worker had no time to write a pid file for have one.
    for name, entry in node.status().items():
        assert read_pid(str(node.dir / "run" / (name + ".pid"))) == entry["pid"], name


def test_revert_while_stopping_runs_the_reverted_definition(node):
    def stubborn(version):
        return node.proc("s", "/bin/sh", "-c", "trap '' TERM; exec sleep %d" % version,
                         stop_timeout=1)
    node.write([stubborn(3001)])
    node.start()
    first = node.wait_running("s")
    node.write([stubborn(3002)])
    wait_for(lambda: node.state("s").get("state") == "stopping", what="stopping")
    node.write([stubborn(3001)])
    wait_for(lambda: node.state("s").get("pid") not in (None, first)
             and node.state("s")["state"] == "running", what="restarted")
    assert "3001" in open("/proc/%d/cmdline" % node.state("s")["pid"]).read()


LATE_DAEMON = """
import os, sys, time
pid_file, delay, fork = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "fork"
if fork and os.fork():
    os._exit(0)
time.sleep(delay)
with open(pid_file + ".tmp", "w") as handle:
    handle.write("%d\\n" % os.getpid())
os.rename(pid_file + ".tmp", pid_file)
time.sleep(1000)
"""


def daemon_proc(node, tmp_path, name, delay, fork=True):
    script = tmp_path / "late_daemon.py"
    script.write_text(LATE_DAEMON)
    pid_file = str(tmp_path / ("%s.daemon.pid" % name))
    return node.proc(name, sys.executable, str(script), pid_file, str(delay),
                     "fork" if fork else "nofork", daemon=True, write_pid=False,
                     pid_file=pid_file, user=pwd.getpwuid(os.geteuid()).pw_name)


def test_daemon_removed_before_its_pid_file_is_stopped_once_it_appears(node, tmp_path):
    node.write([daemon_proc(node, tmp_path, "late", 1.5)])
    node.start()
    node.wait_state("late", "starting")
    node.write([])
    wait_for(lambda: "late" not in node.status(), timeout=15, what="late removed")
    assert node.daemon.poll() is None, node.log()
    assert node.instances("late_daemon") == []


def test_daemon_that_does_not_fork(node, tmp_path):
    node.write([daemon_proc(node, tmp_path, "nofork", 0.1, fork=False)])
    node.start()
    pid = node.wait_running("nofork")
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: node.state("nofork").get("state") == "running"
                       and node.state("nofork")["pid"] != pid
                       and node.state("nofork")["pid"], what="restart")
    assert is_alive(new_pid)
    # Idle again: the worker sleeps (no spinning on a stale pidfd).
    before = cpu_ticks(node.daemon.pid)
    time.sleep(1)  # idle CPU is measured over an interval: not a wait
    assert cpu_ticks(node.daemon.pid) - before < 20


def test_status_sees_a_dead_worker_despite_a_live_pid(node):
    node.write([sleeper(node, "z")])
    node.start()
    node.wait_running("z")
    node.stop(signal.SIGKILL)
    with open(node.pid_file, "w") as handle:
        handle.write("1\n")  # a leftover pid file naming a live process
    result = run_command("dpd-workerd", ["--status", node.config_path])
    assert result.returncode == 1 and "not running" in result.stdout


def test_status_checks_only_a_config_the_worker_does_not_apply(node):
    """The status file names the CRC-32 of the CONFIG bytes applied:
    ``--status`` does not check those again; other bytes (an invalid
    CONFIG the worker refused) it checks, and shows the problems."""
    node.write([sleeper(node, "z")])
    node.start()
    node.wait_running("z")
    with open(node.config_path, "rb") as handle:
        applied = zlib.crc32(handle.read())
    wait_for(lambda: node.status_doc().get("config_crc32") == applied,
             what="the CRC-32 of CONFIG in the status file")
    result = run_command("dpd-workerd", ["--status", node.config_path])
    assert result.returncode == 0 and "error" not in result.stdout
    bad = sleeper(node, "y")
    bad["user"] = "no-such-user-dpd"
    node.write([sleeper(node, "z"), bad])
    wait_for(lambda: "configuration rejected" in node.log()
             or "no-such-user-dpd" in node.log(), what="the refusal")
    result = run_command("dpd-workerd", ["--status", node.config_path])
    assert result.returncode == 1
    assert "no-such-user-dpd" in result.stdout
    assert "is invalid: a running worker keeps the last good one" \
        in result.stdout
    assert "z " in result.stdout


def test_duplicate_pid_files_are_refused(node, tmp_path):
    shared = str(tmp_path / "same.pid")
    node.write([sleeper(node, "p1", pid_file=shared), sleeper(node, "p2", pid_file=shared)])
    result = run_command("dpd-workerd", ["--check", node.config_path])
    assert result.returncode == 1
    assert 'process "p2": field "pid_file"' in result.stderr


@requires_root
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_full_disk_changes_nothing_running(node, tmp_path):
    """The worker's folder (pid, status, journal) on a full 256 KiB tmpfs, in
    a mount namespace of the worker's own: what runs keeps running, new
    starts are refused with the reason (they could not be recorded), the
    status file is retried and written again once space is back."""
    run = tmp_path / "run"
    node.write([sleeper(node, "s%d" % i) for i in range(5)])
    node.start(wait=False, wrapper=[
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"', "sh",
        str(run)])
    inside = "/proc/%d/root%s" % (node.daemon.pid, run)
    node.status_path = inside + "/dpd-workerd.status.json"
    pids = {n: node.wait_running("s%d" % n) for n in range(5)}
    with open(inside + "/filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 4096)
        except OSError:
            pass
    node.write([sleeper(node, "s%d" % i) for i in range(5)] + [sleeper(node, "new")])
    wait_for(lambda: "cannot write status file" in node.log(), what="the status error")
    wait_for(lambda: "journal: No space left on device" in node.log(),
             what="the refused start")
    assert node.daemon.poll() is None
    assert all(is_alive(pid) for pid in pids.values())
    assert node.instances("sleep") and len(node.instances("sleep")) == 5
    os.unlink(inside + "/filler")
    wait_for(lambda: "written again" in node.log(), what="the status retried")
    node.daemon.send_signal(signal.SIGHUP)
    node.wait_running("new")
    assert {n: node.state("s%d" % n)["pid"] for n in range(5)} == pids


def test_pid_file_symlink_is_not_followed(node, tmp_path):
    """A program's user may own its pid file's folder: a symlink planted
    there must not make the worker (root) overwrite the link's target."""
    victim = tmp_path / "victim"
    victim.write_text("SECRET\n")
    os.chmod(str(victim), 0o600)
    appdir = tmp_path / "appdir"
    appdir.mkdir()
    os.symlink(str(victim), str(appdir / "app.pid"))
    node.write([sleeper(node, "app", pid_file=str(appdir / "app.pid"))])
    node.start()
    pid = node.wait_running("app")
    wait_for(lambda: not os.path.islink(str(appdir / "app.pid")), what="the pid file")
    assert int(open(str(appdir / "app.pid")).read()) == pid
    assert victim.read_text() == "SECRET\n"
    assert os.stat(str(victim)).st_mode & 0o777 == 0o600


def test_a_start_error_in_a_burst_loses_nothing(node):
    """A pid file that cannot even be removed (ENOTDIR) fails that start
    only: the burst around it is recorded, nothing runs twice."""
    procs = [node.proc("n%d" % i, "/bin/sleep", "%d" % (40000 + i)) for i in range(40)]
    bad = node.proc("bad", "/bin/true", daemon=True, write_pid=False,
                    pid_file="/etc/hostname/bad.pid", restart=False)
    node.write(procs[:20] + [bad] + procs[20:])
    node.start()
    entry = node.wait_state("bad", "failed")
    assert "Not a directory" in entry["error"]
    wait_for(lambda: sum(1 for e in node.status().values() if e.get("state") == "running")
             == 40, what="all 40 running")
    node.stop(signal.SIGKILL)
    node.write(procs)
    node.start()
    wait_for(lambda: sum(1 for e in node.status().values() if e.get("state") == "running")
             == 40, what="all 40 adopted")
    for i in range(40):
        assert len(node.instances("%d" % (40000 + i))) == 1


@pytest.mark.parametrize("fork", [True, False], ids=["forking", "not-forking"])
def test_kill_9_while_a_daemon_starts_leaves_one_daemon(node, tmp_path, fork):
    """Started in a burst (its launcher is already a zombie when the burst
    ends), the worker killed while it waits for the pid file: the next worker
    waits for that daemon instead of launching a second one."""
    sleepers = [node.proc("s%d" % i, "/bin/sleep", "%d" % (50000 + i)) for i in range(30)]
    node.write([daemon_proc(node, tmp_path, "slow", 3.0, fork=fork)] + sleepers)
    node.start()
    node.wait_state("slow", "starting")
    record = node.status_doc()["records"]["slow"]
    assert record["launcher"][1] and record["pid"] is None, record
    node.stop(signal.SIGKILL)
    node.start()
    pid = node.wait_running("slow", timeout=15)
    assert node.instances("late_daemon") == [pid]
    assert int(open(str(tmp_path / "slow.daemon.pid")).read()) == pid


def test_a_starting_daemon_changed_while_the_worker_was_down(node, tmp_path):
    """The old definition's daemon (its own pid file) is stopped, then the
    new one started: one daemon at the end, the new one."""
    node.write([daemon_proc(node, tmp_path, "chg", 2.0)])
    node.start()
    node.wait_state("chg", "starting")
    node.stop(signal.SIGKILL)
    changed = daemon_proc(node, tmp_path, "chg", 0.1)
    changed["pid_file"] = changed["args"][1] = str(tmp_path / "chg.new.pid")
    node.write([changed])
    node.start()
    pid = wait_for(lambda: node.state("chg").get("state") == "running"
                   and node.state("chg").get("starts", 0) >= 2
                   and node.state("chg")["pid"], timeout=20, what="the new daemon")
    wait_for(lambda: node.instances("late_daemon") == [pid], timeout=15,
             what="the old daemon stopped")
    assert int(open(str(tmp_path / "chg.new.pid")).read()) == pid


def test_a_daemon_removed_while_starting_is_stopped_across_a_worker_kill(node, tmp_path):
    """Removed while starting, then the worker killed: the next worker still
    stops that daemon once its pid file appears."""
    node.write([daemon_proc(node, tmp_path, "gone", 2.0)])
    node.start()
    node.wait_state("gone", "starting")
    node.write([])
    node.wait_state("gone", "cancelling")
    node.stop(signal.SIGKILL)
    node.start()
    wait_for(lambda: "gone" not in node.status(), timeout=20, what="gone stopped")
    wait_for(lambda: node.instances("late_daemon") == [], what="no daemon left")


def test_a_start_stuck_before_exec_fails_that_start_only(node, tmp_path):
    """A program stuck before exec (here held in its child past the exec
    timeout) is killed at that timeout; the starts of the same burst,
    collected after it and so past their own deadline, still count as
    started, once each."""
    node.write([node.proc("stuck", "/bin/sleep", "64001", restart=False,
                          logs=str(tmp_path / "stuck.log")),
                node.proc("after", "/bin/sleep", "64002")])
    if fork_path():
        node.start(wait=False, wrapper=patched_python(
            "import time",
            "from diprocd import spawn",
            "real_open_files = spawn._open_files",
            "def held(logs, *user):",
            "    if logs.endswith('stuck.log'):",
            "        time.sleep(spawn.EXEC_TIMEOUT + 5)",
            "    return real_open_files(logs, *user)",
            "spawn._open_files = held"))
    else:  # held in dpd-exec before its steps: its output is stuck.log
        node.start(wait=False, env=wrapped_helper(
            tmp_path, 'case "$(readlink /proc/$$/fd/1)" in',
            "*stuck.log) sleep %d ;;" % (spawn.EXEC_TIMEOUT + 5), "esac"))
    # The burst holds the loop until the timeout.
    wait_for(node.worker_up, timeout=20, what="the worker's status file")
    entry = node.wait_state("stuck", "failed", timeout=20)
    assert "did not reach exec" in entry["error"]
    pid = node.wait_running("after")
    assert node.state("after")["starts"] == 1
    assert node.instances("64002") == [pid]
    assert node.instances("64001") == []
    node.stop()


def test_logs_on_a_fifo_nobody_reads_is_a_start_error_at_once(node, tmp_path):
    """Not a child stuck before exec (holding the worker's descriptors, its
    pid file lock among them): an immediate, visible start error."""
    fifo = str(tmp_path / "nobody-reads.fifo")
    os.mkfifo(fifo)
    node.write([node.proc("piped", "/bin/sleep", "64003", logs=fifo,
                          restart=False)])
    node.start()
    entry = node.wait_state("piped", "failed", timeout=5)
    assert entry["error"] == "logs: No such device or address", entry
    node.stop()


def test_a_definition_restarted_with_another_pid_file_leaves_no_old_one(node, tmp_path):
    """Found by tests/chaos: the old pid file, naming the stopped pid, stayed."""
    node.write([sleeper(node, "p")])
    node.start()
    pid = node.wait_running("p")
    old_file, new_file = str(tmp_path / "run" / "p.pid"), str(tmp_path / "p.pid")
    assert read_pid(old_file) == pid
    node.write([sleeper(node, "p", pid_file=new_file)])
    new_pid = wait_for(lambda: node.state("p").get("pid") not in (None, pid)
                       and node.state("p")["state"] == "running"
                       and node.state("p")["pid"], what="p restarted")
    assert read_pid(new_file) == new_pid
    assert not os.path.exists(old_file)


def test_a_process_gone_while_the_worker_was_down_leaves_no_pid_file(node, tmp_path):
    """Found by tests/chaos: a process that died while no worker ran, then
    removed from CONFIG, kept its pid file (naming a dead pid) for good."""
    node.write([sleeper(node, "gone"), sleeper(node, "kept")])
    node.start()
    pids = {name: node.wait_running(name) for name in ("gone", "kept")}
    node.stop(signal.SIGKILL)
    os.kill(pids["gone"], signal.SIGKILL)
    wait_for(lambda: not is_alive(pids["gone"]), what="gone to die")
    node.write([sleeper(node, "kept")])
    node.start()
    assert node.wait_running("kept") == pids["kept"]
    assert "gone" not in node.status()
    assert not os.path.exists(str(tmp_path / "run" / "gone.pid"))
    assert read_pid(str(tmp_path / "run" / "kept.pid")) == pids["kept"]


def test_an_adopted_process_gets_its_pid_file(node, tmp_path):
    """Found by tests/chaos: a worker killed in the middle of a burst of
    starts has not written their pid files yet (it does once the burst
    runs); the next worker adopted those processes and never wrote them.
    Here the pid file is simply gone while no worker runs."""
    node.write([sleeper(node, "p")])
    node.start()
    pid = node.wait_running("p")
    node.stop(signal.SIGKILL)
    os.unlink(str(tmp_path / "run" / "p.pid"))
    node.start()
    assert node.wait_running("p") == pid and node.state("p")["adopted"]
    assert read_pid(str(tmp_path / "run" / "p.pid")) == pid
