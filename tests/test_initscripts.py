"""The init scripts and cron lines, run for real as root.

Each test builds a private mount namespace (``unshare -m``) in which
/etc/default, /var/lib, /var/log and /var/run are bind mounts of the test's
own folders, so the host is untouched: /etc/default/diprocd points the
scripts at the checkout's bin/ (DAEMON_DIR) and at configs made from the
shipped examples, and DIPROCD_LIB at the checkout's lib/, where the body the
three scripts source lives; the checkout's init.d/ is /etc/init.d, where the
cron lines find the scripts. A holder process keeps the namespace alive;
every command enters it with nsenter. Every process carries the test's
marker.
"""

import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import requires_root
from diprocd.daemon import read_locked_pid, read_pid
from diprocd.kernel import is_alive
from helpers import (BIN, MARKER_VAR, ROOT, free_port, marked_env,
                     marked_pids, read_json, wait_for, write_json)

DAEMONS = ("dpd-workerd", "dpd-clientd", "dpd-masterd")
EXAMPLE = {"dpd-workerd": "diprocd-worker.example.json",
           "dpd-clientd": "diprocd-client.example.json",
           "dpd-masterd": "diprocd-master.example.json"}
CONFIG_VAR = {"dpd-workerd": "WORKER_CONFIG", "dpd-clientd": "CLIENT_CONFIG",
              "dpd-masterd": "MASTER_CONFIG"}
SYSTEM_PYTHON = "/usr/bin/python3"


def system_python_problem():
    """Why Debian's python3 cannot run the checkout's daemons, or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return "no %s" % SYSTEM_PYTHON
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import zmq, simplejson, daemon"],
        capture_output=True, text=True)
    if probe.returncode:
        return ("%s lacks python3-zmq/python3-simplejson/python3-daemon "
                "(tests/setup-system.sh installs them)" % SYSTEM_PYTHON)
    return None


pytestmark = [
    requires_root,
    pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("nsenter")),
                       reason="needs unshare and nsenter (util-linux)"),
    pytest.mark.skipif(not shutil.which("start-stop-daemon"),
                       reason="needs start-stop-daemon (dpkg)"),
    pytest.mark.skipif(not os.path.exists("/lib/lsb/init-functions"),
                       reason="needs /lib/lsb/init-functions"),
    pytest.mark.skipif(system_python_problem() is not None,
                       reason=str(system_python_problem())),
]


class Namespace:
    """A private mount namespace with the test's folders over the system's."""

    MOUNTS = {"etc-default": "/etc/default", "var-lib": "/var/lib",
              "var-log": "/var/log", "run": "/var/run"}
    INIT_D = os.path.join(ROOT, "init.d")

    def __init__(self, tmp_path, marker):
        self.tmp = tmp_path
        self.marker = marker
        for name in self.MOUNTS:
            (tmp_path / name).mkdir()
        # /etc/default keeps the host's files (init-functions may read some).
        shutil.copytree("/etc/default", tmp_path / "etc-default",
                        dirs_exist_ok=True, symlinks=True)
        (tmp_path / "var-lib" / "diprocd").mkdir()
        script = "set -e\n" + "".join(
            "mount --bind %s %s\n" % (tmp_path / name, target)
            for name, target in self.MOUNTS.items()) + (
            "mount --bind %s /etc/init.d\n" % self.INIT_D) + (
            "echo ready\nexec sleep 3600\n")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=marked_env(marker), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError("namespace setup failed: %s"
                                 % self.holder.stderr.read())

    def host(self, path):
        """The host path of ``path`` as seen inside the namespace."""
        for name, target in self.MOUNTS.items():
            if path == target or path.startswith(target + "/"):
                return str(self.tmp / name) + path[len(target):]
        return path

    def env(self):
        env = marked_env(self.marker)
        env.pop("PYTHONPATH", None)
        env["DIPROCD_LIB"] = os.path.join(ROOT, "lib")
        # The host may run systemd: never let init-functions redirect to it.
        env["SYSTEMCTL_SKIP_REDIRECT"] = "1"
        return env

    def run(self, args, timeout=60, env=None):
        return subprocess.run(
            ["nsenter", "--target", str(self.holder.pid), "--mount", "--"]
            + list(args), env=env or self.env(), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def close(self):
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def namespace(tmp_path, marker):
    ns = Namespace(tmp_path, marker)
    yield ns
    ns.close()


def write_defaults(ns):
    """The shipped /etc/default/diprocd, with DAEMON_DIR at the checkout."""
    # install_config puts each CONFIG where the defaults say.
    with open(os.path.join(ROOT, "lib", "init.sh")) as handle:
        defaults = handle.read()
    for daemon in DAEMONS:
        assert "\n%s=/var/lib/diprocd/%s\n" % (
            CONFIG_VAR[daemon], EXAMPLE[daemon].replace(".example", "")) in defaults
    with open(os.path.join(ROOT, "init.d", "diprocd")) as handle:
        shipped = handle.read()
    with open(ns.host("/etc/default/diprocd"), "w") as handle:
        handle.write(shipped + "\nDAEMON_DIR=%s\n" % BIN)


def install_config(ns, daemon):
    """Copy the shipped example where the defaults say, as the README
    tells a user to; loopback free ports; the marker in supervised processes'
    environment (the worker gives them a clean one)."""
    config = read_json(os.path.join(ROOT, "examples", EXAMPLE[daemon]))
    if daemon == "dpd-workerd":
        for proc in config["procs"]:
            proc.setdefault("env", {})[MARKER_VAR] = ns.marker
    else:
        stats, updates = free_port(), free_port()
        config["master_stats"] = "tcp://127.0.0.1:%d" % stats
        config["master_updates"] = "tcp://127.0.0.1:%d" % updates
    if daemon == "dpd-clientd":
        config["node_name"] = "node1"
        write_json(ns.host(config["conf_file"]), read_json(
            os.path.join(ROOT, "examples", "diprocd-emptyworker.example.json")))
    path = "/var/lib/diprocd/" + EXAMPLE[daemon].replace(".example", "")
    write_json(ns.host(path), config)
    return config


def init_script(ns, daemon, action, env=None):
    return ns.run(["/etc/init.d/" + daemon, action], env=env)


def daemon_pids(ns, daemon):
    """Live marked processes running bin/<daemon> (not the init script)."""
    pids = []
    for pid in marked_pids(ns.marker):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"/bin/" + daemon.encode()) for arg in argv[:2]):
            pids.append(pid)
    return pids


def skip_unless_daemon_exists(daemon):
    module = {"dpd-workerd": "worker", "dpd-clientd": "client",
              "dpd-masterd": "master"}[daemon]
    if not os.path.exists(os.path.join(ROOT, "diprocd", module + ".py")):
        pytest.skip("diprocd/%s.py is not in this tree yet" % module)
    if not os.path.exists(os.path.join(ROOT, "examples", EXAMPLE[daemon])):
        pytest.skip("examples/%s is missing" % EXAMPLE[daemon])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("daemon", DAEMONS)
def test_init_script_lifecycle(namespace, daemon):
    skip_unless_daemon_exists(daemon)
    ns = namespace
    write_defaults(ns)
    config = install_config(ns, daemon)
    pid_file = ns.host(config["pid_file"])

    result = init_script(ns, daemon, "status")
    assert result.returncode == 3, result

    result = init_script(ns, daemon, "start")
    assert result.returncode == 0, result
    pid = read_locked_pid(pid_file)
    assert pid and is_alive(pid), "no live pid in %s" % pid_file
    assert daemon_pids(ns, daemon) == [pid]

    result = init_script(ns, daemon, "status")
    assert result.returncode == 0, result
    assert str(pid) in result.stdout

    result = init_script(ns, daemon, "start")
    assert result.returncode == 0, result
    assert "already running" in result.stdout
    assert daemon_pids(ns, daemon) == [pid]
    assert read_locked_pid(pid_file) == pid

    log = ns.host(config["log_file"])
    result = init_script(ns, daemon, "reload")
    assert result.returncode == 0, result
    if daemon == "dpd-workerd":
        wait_for(lambda: "SIGHUP" in open(log).read(), timeout=10,
                 what="the worker to log the SIGHUP")
    result = init_script(ns, daemon, "force-reload")
    assert result.returncode == 0, result
    assert daemon_pids(ns, daemon) == [pid]

    result = init_script(ns, daemon, "restart")
    assert result.returncode == 0, result
    new_pid = read_locked_pid(pid_file)
    assert new_pid and new_pid != pid and not is_alive(pid)
    assert daemon_pids(ns, daemon) == [new_pid]

    result = init_script(ns, daemon, "stop")
    assert result.returncode == 0, result
    assert not is_alive(new_pid)
    assert not os.path.exists(pid_file)
    assert daemon_pids(ns, daemon) == []

    result = init_script(ns, daemon, "status")
    assert result.returncode == 3, result
    result = init_script(ns, daemon, "stop")
    assert result.returncode == 0, result
    result = init_script(ns, daemon, "reload")
    assert result.returncode == 7, result


@pytest.mark.timeout(180)
def test_worker_example_runs_its_processes(namespace):
    """The single-node example, started by the init script, runs sleep."""
    skip_unless_daemon_exists("dpd-workerd")
    ns = namespace
    write_defaults(ns)
    config = install_config(ns, "dpd-workerd")
    assert init_script(ns, "dpd-workerd", "start").returncode == 0
    sleep_pid_file = ns.host("/var/run/sleep.worker.1.pid")
    wait_for(lambda: read_pid(sleep_pid_file), timeout=10,
             what="sleep.worker.1's pid file")
    sleep_pid = read_pid(sleep_pid_file)
    assert is_alive(sleep_pid)
    wait_for(lambda: os.path.exists(ns.host("/var/log/diprocd/echo.worker.1.log"))
             and "foo" in open(ns.host("/var/log/diprocd/echo.worker.1.log")).read(),
             timeout=10, what="echo's output in its log")
    result = ns.run([os.path.join(BIN, "dpd-workerd"), "--status",
                     "/var/lib/diprocd/diprocd-worker.json"],
                    env=dict(ns.env(), PATH="/usr/bin:/bin"))
    assert "sleep.worker.1" in result.stdout, result
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
    # Stopping the worker leaves its processes running (they are adopted by
    # the next worker); the marker fixture ends them.
    assert is_alive(sleep_pid)
    assert config["pid_file"] == "/var/run/dpd-workerd.pid"


def test_start_ignores_stale_pid_file(namespace):
    """A pid file left by a killed daemon, whose pid now belongs to another
    live process, neither blocks start nor gets that process signalled."""
    skip_unless_daemon_exists("dpd-workerd")
    ns = namespace
    write_defaults(ns)
    config = install_config(ns, "dpd-workerd")
    pid_file = ns.host(config["pid_file"])
    with open(pid_file, "w") as handle:
        handle.write("%d\n" % ns.holder.pid)
    assert init_script(ns, "dpd-workerd", "status").returncode == 1
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
    assert is_alive(ns.holder.pid)
    with open(pid_file, "w") as handle:
        handle.write("%d\n" % ns.holder.pid)
    result = init_script(ns, "dpd-workerd", "start")
    assert result.returncode == 0, result
    pid = read_locked_pid(pid_file)
    assert pid != ns.holder.pid and daemon_pids(ns, "dpd-workerd") == [pid]
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
    assert is_alive(ns.holder.pid)


def test_status_and_stop_after_config_broke(namespace):
    """CONFIG broken after start but for its "pid_file": status still finds
    the daemon and stop still stops it (the scripts ask the daemon's
    --pid-file, which reads that key alone)."""
    skip_unless_daemon_exists("dpd-workerd")
    ns = namespace
    write_defaults(ns)
    config = install_config(ns, "dpd-workerd")
    config_path = ns.host("/var/lib/diprocd/diprocd-worker.json")
    write_json(config_path, dict(config, procs=[]))  # nothing left running
    pid_file = ns.host(config["pid_file"])
    assert init_script(ns, "dpd-workerd", "start").returncode == 0
    pid = read_locked_pid(pid_file)
    assert pid and daemon_pids(ns, "dpd-workerd") == [pid]
    write_json(config_path, {"pid_file": config["pid_file"], "procs": "broken"})
    result = init_script(ns, "dpd-workerd", "status")
    assert result.returncode == 0 and str(pid) in result.stdout, result
    result = init_script(ns, "dpd-workerd", "stop")
    assert result.returncode == 0, result
    assert not is_alive(pid) and not os.path.exists(pid_file)
    assert daemon_pids(ns, "dpd-workerd") == []
    assert init_script(ns, "dpd-workerd", "status").returncode == 3


def test_config_without_a_pid_file(namespace):
    """CONFIG readable but no "pid_file" in it: status 4 (unknown), stop 1,
    start 6, each saying why in the daemon's words."""
    ns = namespace
    write_defaults(ns)
    with open(ns.host("/var/lib/diprocd/diprocd-worker.json"), "w") as handle:
        handle.write('{"procs": []}')
    for action, code in (("status", 4), ("stop", 1), ("start", 6)):
        result = init_script(ns, "dpd-workerd", action)
        assert result.returncode == code, result
        assert 'missing required key "pid_file"' in result.stdout, result
    assert daemon_pids(ns, "dpd-workerd") == []


def test_removed_but_not_purged_is_silent(namespace, tmp_path):
    """The init scripts are conffiles: after "apt remove" they stay, while
    the body they source and the commands are gone. Then every action exits
    0 and says nothing (Debian policy 9.3.2)."""
    ns = namespace
    write_defaults(ns)
    removed = str(tmp_path / "removed")
    without_body = dict(ns.env(), DIPROCD_LIB=removed)
    for action in ("start", "status", "stop"):
        result = init_script(ns, "dpd-workerd", action, env=without_body)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    with open(ns.host("/etc/default/diprocd"), "a") as handle:
        handle.write("DAEMON_DIR=%s\n" % removed)  # the body, no commands
    for action in ("start", "status", "stop"):
        result = init_script(ns, "dpd-workerd", action)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result


def test_unconfigured(namespace):
    """No config file: status 3, stop succeeds, start fails with LSB 6."""
    ns = namespace
    write_defaults(ns)
    assert init_script(ns, "dpd-workerd", "status").returncode == 3
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
    result = init_script(ns, "dpd-workerd", "start")
    assert result.returncode == 6 and "not configured" in result.stdout, result
    assert init_script(ns, "dpd-workerd", "bogus").returncode == 3


def cron_command(daemon):
    """The command of the cron.d line (fields 7 on: after the user)."""
    with open(os.path.join(ROOT, "cron", daemon + ".cron")) as handle:
        lines = [line for line in handle.read().splitlines()
                 if line.strip() and not line.startswith("#")
                 and not re.match(r"^[A-Z]+=", line)]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    assert fields[5] == "root"
    assert "%" not in fields[6], "an unescaped %% in a cron line is a newline"
    return fields[6]


def cron_env(ns):
    """What cron runs a line with: /bin/sh -c LINE, cron's PATH."""
    return dict(ns.env(), PATH="/usr/sbin:/usr/bin:/sbin:/bin", SHELL="/bin/sh")


def test_cron_line_mails_errors(namespace):
    """No CONFIG: the cron line fails, and says why on stderr only (cron
    mails what a line prints)."""
    ns = namespace
    write_defaults(ns)
    result = ns.run(["/bin/sh", "-c", cron_command("dpd-workerd")],
                    env=cron_env(ns))
    assert result.returncode != 0 and result.stdout == "", result
    assert "/var/lib/diprocd/diprocd-worker.json" in result.stderr, result
    assert daemon_pids(ns, "dpd-workerd") == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("daemon", DAEMONS)
def test_cron_line_respawns_exactly_one(namespace, daemon):
    skip_unless_daemon_exists(daemon)
    ns = namespace
    write_defaults(ns)
    config = install_config(ns, daemon)
    pid_file = ns.host(config["pid_file"])
    command = ["/bin/sh", "-c", cron_command(daemon)]

    for _ in range(2):
        result = ns.run(command, env=cron_env(ns))
        assert result.returncode == 0, result
        assert result.stdout == "", "cron would mail: %r" % result.stdout
    pid = wait_for(lambda: read_locked_pid(pid_file), timeout=10, what="pid file")
    wait_for(lambda: daemon_pids(ns, daemon) == [pid], timeout=10,
             what="exactly one %s" % daemon)

    # The daemon dies hard (its pid file stays): the next run starts one.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid), what="the daemon to die")
    result = ns.run(command, env=cron_env(ns))
    assert result.returncode == 0, result
    new_pid = wait_for(lambda: read_locked_pid(pid_file) not in (None, pid)
                       and read_locked_pid(pid_file), timeout=10,
                       what="a new daemon")
    wait_for(lambda: daemon_pids(ns, daemon) == [new_pid], timeout=10,
             what="exactly one %s" % daemon)
    assert init_script(ns, daemon, "stop").returncode == 0
    assert daemon_pids(ns, daemon) == []
