"""``dpdctl --worker CONFIG``: a real worker, real processes, its real
control socket."""

import os
import pwd
import signal
import stat
import subprocess
import sys

import simplejson as json

from conftest import requires_root
from diprocd import control
from diprocd.kernel import is_alive
from helpers import ROOT, Node, process_doc, run_command, wait_for


def dpdctl(node, *args):
    return run_command("dpdctl", ["--worker", node.config_path] + list(args),
                       node.marker)


def started_node(tmp_path, marker, *procs):
    node = Node(tmp_path, marker)
    node.write([node.proc(*p) if isinstance(p, tuple) else p for p in procs])
    node.start()
    return node


def test_status_shows_every_process_with_its_real_pid(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8101"),
                        ("b", "/bin/sleep", "8102"))
    pids = {name: node.wait_running(name) for name in ("a", "b")}
    result = dpdctl(node, "status")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "PID"]
    for name, pid in pids.items():
        assert [name, "running", str(pid)] in [l.split()[:3] for l in lines]
    as_json = json.loads(dpdctl(node, "status", "--json").stdout)
    assert {n: p["pid"] for n, p in as_json["procs"].items()} == pids
    assert all(p["ok"] and p["state"] == "running"
               for p in as_json["procs"].values())
    node.stop()


def test_what_is_not_as_desired_comes_first_with_its_error(tmp_path, marker):
    node = started_node(tmp_path, marker, ("ok", "/bin/sleep", "8103"),
                        ("bad", "/no/such/binary"))
    node.wait_running("ok")
    node.wait_state("bad", "backoff", timeout=15)
    result = dpdctl(node, "status")
    assert result.returncode == 1
    rows = result.stdout.splitlines()[1:]
    assert rows[0].split()[:2] == ["bad", "*backoff"]
    # When it starts again, and the cause itself.
    assert "next start in " in rows[0]
    assert "started 5 times" in rows[0]
    assert "exec /no/such/binary: No such file or directory" in rows[0]
    assert rows[1].split()[:2] == ["ok", "running"]
    node.stop()


def test_restart_gives_a_new_pid_and_keeps_the_others(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8104"),
                        ("b", "/bin/sleep", "8105"))
    a, b = node.wait_running("a"), node.wait_running("b")
    # More than the 5-a-minute rule: operator restarts are not crashes.
    for _ in range(7):
        result = dpdctl(node, "restart", "a")
        assert result.returncode == 0, result
        new = int(result.stdout.split("pid")[1])
        assert new != a and is_alive(new) and not is_alive(a)
        a = new
    assert node.state("a")["state"] == "running"
    assert node.wait_running("b") == b
    assert node.instances("8104") == [a]
    node.stop()


def test_stop_survives_a_worker_restart_start_clears_it(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8106"))
    pid = node.wait_running("a")
    result = dpdctl(node, "stop", "a")
    assert result.returncode == 0, result
    wait_for(lambda: not is_alive(pid), what="a stopped")
    entry = node.wait_state("a", "stopped", held=True)
    assert entry["ok"] is False
    result = dpdctl(node, "status")
    assert result.returncode == 1 and "stopped by operator" in result.stdout
    node.stop(signal.SIGKILL)
    node.start()
    node.wait_state("a", "stopped", held=True)
    assert node.instances("8106") == []
    assert dpdctl(node, "start", "a").returncode == 0
    new = node.wait_running("a")
    assert node.state("a")["held"] is False
    assert dpdctl(node, "status").returncode == 0
    assert node.instances("8106") == [new]
    node.stop()


def test_stop_and_restart_of_a_process_in_backoff(tmp_path, marker):
    """A process waiting 100 s for its restart: dpdctl stop holds it (no
    start at its time), dpdctl restart starts it now."""
    seen = str(tmp_path / "seen")
    user = pwd.getpwuid(os.geteuid()).pw_name
    node = started_node(tmp_path, marker, process_doc(
        marker, "late", "/bin/sh", "-c",
        'if [ -e "$1" ]; then exec sleep 8107; fi; touch "$1"; exit 1', "sh",
        seen, user=user, restart_delay=100))
    entry = node.wait_state("late", "backoff", starts=1)
    assert 90 < entry["next_start"] - entry["since"] <= 110, entry
    assert dpdctl(node, "stop", "late").returncode == 0
    entry = node.wait_state("late", "stopped", held=True)
    assert entry["next_start"] is None and entry["starts"] == 1
    result = dpdctl(node, "restart", "late")
    assert result.returncode == 0, result
    assert "late: restarted, pid" in result.stdout
    entry = node.wait_state("late", "running", starts=2)
    assert node.instances("8107") == [entry["pid"]]
    node.stop()


def test_a_changed_definition_ends_the_operators_stop(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8107"))
    node.wait_running("a")
    assert dpdctl(node, "stop", "a").returncode == 0
    node.wait_state("a", "stopped", held=True)
    node.write([node.proc("a", "/bin/sleep", "8108")])
    node.wait_running("a")
    assert node.instances("8108") and not node.instances("8107")
    node.stop()


def test_tail_returns_the_last_lines(tmp_path, marker):
    logs = str(tmp_path / "talk.log")
    script = "for i in $(seq 1 50); do echo line $i; done; exec sleep 8109"
    node = Node(tmp_path, marker)
    node.write([node.proc("talk", "/bin/sh", "-c", script, logs=logs),
                node.proc("quiet", "/bin/sleep", "8110")])
    node.start()
    node.wait_running("talk")
    wait_for(lambda: os.path.exists(logs) and "line 50" in open(logs).read(),
             what="the output")
    result = dpdctl(node, "tail", "talk", "-n", "3")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["line 48", "line 49", "line 50"]
    result = dpdctl(node, "tail", "quiet")
    assert result.returncode == 1 and 'has no "logs"' in result.stderr
    node.stop()


def test_reload_and_status_while_config_is_invalid(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8111"))
    pid = node.wait_running("a")
    doc = json.load(open(node.config_path))
    doc["procs"][0]["run"] = "relative"
    with open(node.config_path, "w") as handle:
        json.dump(doc, handle)
    assert dpdctl(node, "reload").returncode == 0
    result = dpdctl(node, "status")
    assert "CONFIG is invalid now" in result.stdout, result
    status = run_command("dpd-workerd", ["--status", node.config_path])
    assert status.returncode == 1
    assert 'field "run": must be an absolute path' in status.stdout
    assert "running, pid %d" % node.daemon.pid in status.stdout
    assert str(pid) in status.stdout
    node.stop()


def test_errors_are_one_line_with_their_exit_code(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8112"))
    node.wait_running("a")
    result = dpdctl(node, "restart", "ghost")
    assert result.returncode == 1
    assert result.stderr.strip() == 'dpdctl: no process named "ghost" on ' \
        "this node"
    assert dpdctl(node, "bogus").returncode == 2
    assert dpdctl(node, "restart").returncode == 2
    node.stop()
    result = dpdctl(node, "status")
    assert result.returncode == 3
    assert control.control_path(node.pid_file) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run_command("dpdctl", ["--worker", str(tmp_path / "none.json"),
                                     "status"], node.marker)
    assert missing.returncode == 3 and "cannot read" in missing.stderr


def test_the_control_socket_is_0600_and_refuses_strangers(tmp_path, marker):
    node = started_node(tmp_path, marker, ("a", "/bin/sleep", "8113"))
    node.wait_running("a")
    path = control.control_path(node.pid_file)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    reply = control.request(path, {"cmd": "bogus"})
    assert reply == {"ok": False, "error": 'request: unknown command "bogus"'}
    node.stop()


def request_as(uid, path):
    """A status request to the control socket at ``path`` from a process
    running as ``uid``: "served", or "refused" and why."""
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from diprocd import control\n"
            "os.setuid(%d)\n"
            "try:\n    reply = control.request(%r, {'cmd': 'status'}, timeout=5)\n"
            "except Exception as err:\n"
            "    print('refused', type(err).__name__, err)\n"
            "else:\n    print('served' if reply['ok'] else 'refused', reply)"
            % (ROOT, uid, path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result
    return result.stdout


@requires_root
def test_a_user_other_than_root_and_the_workers_is_refused(reachable_dir,
                                                          marker):
    """Even through a socket file anyone may open, the worker checks the
    peer's uid (SO_PEERCRED): nobody is refused, and it is logged."""
    node = started_node(reachable_dir, marker, ("a", "/bin/sleep", "8114"))
    node.wait_running("a")
    path = control.control_path(node.pid_file)
    os.chmod(path, 0o666)
    assert request_as(65534, path).startswith("refused")
    wait_for(lambda: "refused uid 65534" in node.log(),
             what="the refusal in the worker's log")
    node.stop()


@requires_root
def test_the_owner_of_the_workers_config_is_served(reachable_dir, marker):
    """The user who owns the worker's CONFIG (the client's, which relays the
    operator's commands) is served and owns the socket file, 0600; a third
    user is refused; once CONFIG is root's again, so is the socket."""
    nobody = pwd.getpwnam("nobody").pw_uid
    daemon = pwd.getpwnam("daemon").pw_uid  # in every Debian's base-passwd
    node = Node(reachable_dir, marker)
    node.write([node.proc("a", "/bin/sleep", "8116")])
    os.chown(node.config_path, nobody, -1)
    node.start("--config-owner", "nobody")
    node.wait_running("a")
    path = control.control_path(node.pid_file)
    info = os.stat(path)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody, 0o600)
    assert request_as(nobody, path).startswith("served"), node.log()
    # Even through a socket file anyone may open: the uid is checked.
    os.chmod(path, 0o666)
    assert request_as(daemon, path).startswith("refused")
    wait_for(lambda: "refused uid %d" % daemon in node.log(),
             what="the refusal in the worker's log")
    os.chmod(path, 0o600)
    os.chown(node.config_path, 0, -1)
    node.daemon.send_signal(signal.SIGHUP)  # a chown alone is not a change
    wait_for(lambda: os.stat(path).st_uid == 0, what="the socket back to root")
    assert request_as(nobody, path).startswith("refused")
    assert dpdctl(node, "status").returncode == 0  # root still served
    node.stop()


def test_tail_of_a_fifo_is_refused_without_holding_the_worker(tmp_path,
                                                              marker):
    """A FIFO without a writer where logs should be: an open for reading
    would block the worker's loop for good."""
    logs = str(tmp_path / "out.log")
    node = Node(tmp_path, marker)
    node.write([node.proc("piped", "/bin/sleep", "8115", logs=logs)])
    node.start()
    node.wait_running("piped")
    os.unlink(logs)
    os.mkfifo(logs)  # (the program keeps the old file open)
    result = dpdctl(node, "tail", "piped")
    assert result.returncode == 1 and "not a regular file" in result.stderr
    assert dpdctl(node, "status").returncode == 0  # still serving
    node.stop()
