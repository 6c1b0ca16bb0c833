"""The init scripts and cron lines, run for real as root.

Each test builds a private mount namespace (``unshare -m``) in which
/etc/default, /var/lib, /var/log and /var/run are bind mounts of the test's
own folders, so the host is untouched: /etc/default/diprocd points the
scripts at the checkout's bin/ (DAEMON_DIR) and at configs made from the
shipped examples, and DIPROCD_LIB at the checkout's lib/, where the body the
three scripts source lives; the checkout's init.d/ is /etc/init.d, where the
cron lines find the scripts. Where a test needs the package's system user
diprocd, /etc/passwd and /etc/group are copies that have it. A holder
process keeps the namespace alive; every command enters it with nsenter.
Every process carries the test's marker.
"""

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess

import pytest

from conftest import requires_root
from diprocd import paths
from diprocd.daemon import read_locked_pid, read_pid
from diprocd.kernel import is_alive
from helpers import (BIN, MARKER_VAR, ROOT, Master,
                     free_port, marked_env, marked_pids, process_argv,
                     process_doc, read_json, read_text, wait_for, write_json)

DAEMONS = ("dpd-workerd", "dpd-clientd", "dpd-masterd")
EXAMPLE = {"dpd-workerd": "diprocd-worker.example.json",
           "dpd-clientd": "diprocd-client.example.json",
           "dpd-masterd": "diprocd-master.example.json"}
CONFIG_VAR = {"dpd-workerd": "WORKER_CONFIG", "dpd-clientd": "CLIENT_CONFIG",
              "dpd-masterd": "MASTER_CONFIG"}
# Where the defaults put each CONFIG, the daemons' (diprocd.paths), which
# lib/init.sh must repeat (write_defaults checks it); the worker's file in
# the folder of the package's system user diprocd.
DEFAULT_CONFIG = {command: place.default
                  for command, place in paths.DEFAULTS.items()}
# Where it was before that user: an install from then keeps working.
OLD_WORKER_CONFIG = paths.OLD_WORKER_CONFIG
CLIENT_USER = "diprocd"
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
    ALIASES = {"/run": "/var/run"}  # /var/run is a link to /run
    INIT_D = os.path.join(ROOT, "init.d")

    def __init__(self, tmp_path, marker, client_user=False):
        """``client_user``: the package's system user diprocd exists, and
        owns the folders its postinst gives it (``self.client_uid``)."""
        self.tmp = tmp_path
        self.marker = marker
        for name in self.MOUNTS:
            (tmp_path / name).mkdir()
        # /etc/default keeps the host's files (init-functions may read some).
        shutil.copytree("/etc/default", tmp_path / "etc-default",
                        dirs_exist_ok=True, symlinks=True)
        for folder in ("var-lib/diprocd/worker", "var-log/diprocd/client"):
            (tmp_path / folder).mkdir(parents=True)
        files = {}
        self.client_uid = None
        if client_user:
            files = self._add_client_user()
        script = "set -e\n" + "".join(
            "mount --bind %s %s\n" % (tmp_path / name, target)
            for name, target in list(self.MOUNTS.items()) + list(files.items())
        ) + ("mount --bind %s /etc/init.d\n" % self.INIT_D) + (
            "echo ready\nexec sleep 3600\n")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=marked_env(marker), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError("namespace setup failed: %s"
                                 % self.holder.stderr.read())

    def _add_client_user(self):
        """Copies of /etc/passwd and /etc/group with the system user and
        group diprocd (a free uid below 1000), as the postinst makes them;
        its folders its own. Returns {copy: the file it covers}."""
        taken = {entry.pw_uid for entry in pwd.getpwall()} | {
            entry.gr_gid for entry in grp.getgrall()}
        uid = max(set(range(100, 1000)) - taken)
        files = {}
        for name, line in (("passwd", "%s:x:%d:%d::/var/lib/diprocd:"
                            "/usr/sbin/nologin\n" % (CLIENT_USER, uid, uid)),
                           ("group", "%s:x:%d:\n" % (CLIENT_USER, uid))):
            copy = self.tmp / ("etc-" + name)
            shutil.copy("/etc/" + name, copy)
            with open(copy, "a") as handle:
                handle.write(line)
            files[copy] = "/etc/" + name
        os.chown(self.tmp / "var-lib/diprocd/worker", uid, uid)
        os.chmod(self.tmp / "var-lib/diprocd/worker", 0o750)
        os.chown(self.tmp / "var-log/diprocd/client", uid, uid)
        self.client_uid = uid
        return files

    def host(self, path):
        """The host path of ``path`` as seen inside the namespace."""
        for alias, target in self.ALIASES.items():
            if path == alias or path.startswith(alias + "/"):
                path = target + path[len(alias):]
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


@pytest.fixture
def user_namespace(tmp_path, marker):
    """A namespace where the package's system user diprocd exists."""
    ns = Namespace(tmp_path, marker, client_user=True)
    yield ns
    ns.close()


def write_defaults(ns):
    """The shipped /etc/default/diprocd, with DAEMON_DIR at the checkout."""
    # install_config puts each CONFIG where the defaults say.
    with open(os.path.join(ROOT, "lib", "init.sh")) as handle:
        defaults = handle.read()
    for daemon in DAEMONS:
        assert "\n%s=%s\n" % (CONFIG_VAR[daemon], DEFAULT_CONFIG[daemon]) \
            in defaults
    with open(os.path.join(ROOT, "init.d", "diprocd")) as handle:
        shipped = handle.read()
    with open(ns.host("/etc/default/diprocd"), "w") as handle:
        handle.write(shipped + "\nDAEMON_DIR=%s\n" % BIN)


def install_config(ns, daemon, path=None, **settings):
    """Copy the shipped example where the defaults say (or to ``path``), as
    the README tells a user to, with ``settings``; loopback free ports; the
    marker in supervised processes' environment (the worker gives them a
    clean one)."""
    config = read_json(os.path.join(ROOT, "examples", EXAMPLE[daemon]))
    if daemon == "dpd-workerd":
        for proc in config["procs"]:
            proc.setdefault("env", {})[MARKER_VAR] = ns.marker
    else:
        stats, updates = free_port(), free_port()
        config["master_stats"] = "tcp://127.0.0.1:%d" % stats
        config["master_updates"] = "tcp://127.0.0.1:%d" % updates
    if "http_listen" in config:
        config["http_listen"] = "127.0.0.1:%d" % free_port()
    config.update(settings)
    if daemon == "dpd-clientd":
        config["node_name"] = "node1"
        write_json(ns.host(config["conf_file"]), read_json(
            os.path.join(ROOT, "examples", "diprocd-emptyworker.example.json")))
    write_json(ns.host(path or DEFAULT_CONFIG[daemon]), config)
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


def process_uid(pid):
    """The real uid of ``pid`` (all four are checked equal)."""
    with open("/proc/%d/status" % pid) as handle:
        uids = [line.split()[1:] for line in handle
                if line.startswith("Uid:")][0]
    assert len(set(uids)) == 1, uids
    return int(uids[0])


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
                     DEFAULT_CONFIG["dpd-workerd"]],
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
    config_path = ns.host(DEFAULT_CONFIG["dpd-workerd"])
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
    with open(ns.host(DEFAULT_CONFIG["dpd-workerd"]), "w") as handle:
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
    assert DEFAULT_CONFIG["dpd-workerd"] in result.stderr, result
    assert daemon_pids(ns, "dpd-workerd") == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("daemon,client_user", [
    (daemon, False) for daemon in DAEMONS] + [("dpd-clientd", True)],
    ids=list(DAEMONS) + ["dpd-clientd-as-diprocd"])
def test_cron_line_respawns_exactly_one(request, daemon, client_user):
    """``client_user``: the package's user exists and owns the worker's
    folder: the line, run by root, starts dpd-clientd as that user."""
    skip_unless_daemon_exists(daemon)
    ns = request.getfixturevalue("user_namespace" if client_user
                                 else "namespace")
    write_defaults(ns)
    config = install_config(ns, daemon)
    pid_file = ns.host(config["pid_file"])
    command = ["/bin/sh", "-c", cron_command(daemon)]

    for _ in range(2):
        result = ns.run(command, env=cron_env(ns))
        assert result.returncode == 0, result
        assert result.stdout == result.stderr == "", "cron would mail: %r" % (
            result.stdout + result.stderr)
    pid = wait_for(lambda: read_locked_pid(pid_file), timeout=10, what="pid file")
    wait_for(lambda: daemon_pids(ns, daemon) == [pid], timeout=10,
             what="exactly one %s" % daemon)
    assert process_uid(pid) == (ns.client_uid if client_user else 0)

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
    assert process_uid(new_pid) == process_uid(pid)
    assert init_script(ns, daemon, "stop").returncode == 0
    assert daemon_pids(ns, daemon) == []


def test_cron_line_does_nothing_under_systemd(namespace):
    """On a host booted with systemd (/run/systemd/system exists) the units
    restart the daemons: the cron line exits 0 at once, starting nothing
    and printing nothing, even with a daemon configured and not running."""
    ns = namespace
    write_defaults(ns)
    install_config(ns, "dpd-workerd")
    os.makedirs(ns.host("/run/systemd/system"))
    result = ns.run(["/bin/sh", "-c", cron_command("dpd-workerd")],
                    env=cron_env(ns))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert daemon_pids(ns, "dpd-workerd") == []


# --- the commands without CONFIG --------------------------------------------------

def bare_env(ns):
    """The namespace's environment without the variables that name a
    CONFIG (the commands take theirs from /etc/default/diprocd), and
    Debian's python3, which the init scripts run them with."""
    env = dict(ns.env(), PATH="/usr/bin:/bin")
    for place in paths.DEFAULTS.values():
        env.pop(place.env, None)
    return env


def bare(ns, command, *args):
    """``bin/COMMAND ARGS`` with no CONFIG, in the namespace."""
    return ns.run([os.path.join(BIN, command)] + list(args), env=bare_env(ns))


def config_of(ns, daemon, doc):
    """The CONFIG the init script gave the running daemon (its last
    argument)."""
    return process_argv(read_locked_pid(ns.host(doc["pid_file"])))[-1]


@pytest.mark.timeout(180)
def test_bare_commands_use_the_init_scripts_configs(namespace):
    """On a node set up as the package's, the commands need no CONFIG: each
    finds the one its init script runs it with (the same default, the same
    setting of /etc/default/diprocd, read the same way), so `dpd-workerd
    --status` and `dpdctl status` work bare."""
    skip_unless_daemon_exists("dpd-masterd")
    ns = namespace
    write_defaults(ns)
    worker = install_config(ns, "dpd-workerd")
    master = install_config(ns, "dpd-masterd")
    for daemon, doc in (("dpd-workerd", worker), ("dpd-masterd", master)):
        assert init_script(ns, daemon, "start").returncode == 0
        assert config_of(ns, daemon, doc) == DEFAULT_CONFIG[daemon]
        result = bare(ns, daemon, "--config-path")
        assert result.stdout == DEFAULT_CONFIG[daemon] + "\n", result
    wait_for(lambda: read_pid(ns.host("/var/run/sleep.worker.1.pid")),
             timeout=10, what="sleep.worker.1's pid file")
    result = wait_for(lambda: (lambda r: r.returncode == 0 and r)(
        bare(ns, "dpd-workerd", "--status")), timeout=10,
        what="dpd-workerd --status to say all is as desired")
    assert "sleep.worker.1" in result.stdout, result
    # The example's nodes have no client here: "never seen", exit 1.
    result = bare(ns, "dpdctl", "status")
    assert result.returncode == 1, result
    assert "node1" in result.stdout and "never seen" in result.stdout, result
    assert bare(ns, "dpd-masterd", "--pid").stdout.strip() == str(
        read_locked_pid(ns.host(master["pid_file"])))
    for daemon in ("dpd-workerd", "dpd-masterd"):
        assert init_script(ns, daemon, "stop").returncode == 0
    # Moved by /etc/default/diprocd, quoted as a shell user may write it:
    # the init script and the bare command move together.
    moved = "/var/lib/diprocd/elsewhere/worker.json"
    os.makedirs(ns.host(os.path.dirname(moved)))
    install_config(ns, "dpd-workerd", path=moved)
    with open(ns.host("/etc/default/diprocd"), "a") as handle:
        handle.write('WORKER_CONFIG="%s"\n' % moved)
    assert init_script(ns, "dpd-workerd", "start").returncode == 0
    assert config_of(ns, "dpd-workerd", worker) == moved
    assert bare(ns, "dpd-workerd", "--config-path").stdout == moved + "\n"
    assert bare(ns, "dpd-workerd", "--status").returncode == 0
    # The variable beats the file; a CONFIG given beats both.
    env = dict(bare_env(ns), DPD_WORKER_CONFIG="/x.json")
    result = ns.run([os.path.join(BIN, "dpd-workerd"), "--config-path"], env=env)
    assert result.stdout == "/x.json\n", result
    result = ns.run([os.path.join(BIN, "dpd-workerd"), "--config-path",
                     "/y.json"], env=env)
    assert result.stdout == "/y.json\n", result
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0


@pytest.mark.timeout(180)
def test_bare_worker_finds_an_install_from_before_the_user(namespace):
    """The worker's file where it was before the system user, none at the
    new default: the init script and the bare command both take the old
    one; once a file is at the new default, both take that."""
    skip_unless_daemon_exists("dpd-workerd")
    ns = namespace
    write_defaults(ns)
    doc = install_config(ns, "dpd-workerd", path=OLD_WORKER_CONFIG, procs=[])
    result = bare(ns, "dpd-workerd", "--config-path")
    assert result.stdout == OLD_WORKER_CONFIG + "\n", result
    assert init_script(ns, "dpd-workerd", "start").returncode == 0
    assert config_of(ns, "dpd-workerd", doc) == OLD_WORKER_CONFIG
    assert bare(ns, "dpd-workerd", "--status").returncode == 0
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
    install_config(ns, "dpd-workerd", procs=[])
    assert bare(ns, "dpd-workerd", "--config-path").stdout == \
        DEFAULT_CONFIG["dpd-workerd"] + "\n"


# --- the package's system user, diprocd ---------------------------------------

def run_as_client_user(ns, *command):
    return ns.run(["setpriv", "--reuid=" + CLIENT_USER, "--regid=" + CLIENT_USER,
                   "--init-groups", "--"] + list(command))


@pytest.mark.timeout(180)
def test_client_runs_as_the_system_user(user_namespace, tmp_path, marker):
    """With the package's user diprocd owning the worker's folder, the init
    script runs dpd-clientd as diprocd: its pid file (in /run/diprocd, which
    the script makes), its log and the worker's file it rewrites with the
    list of a real master are its own; it cannot write its own CONFIG or
    that folder; status, start again and stop work as for root."""
    skip_unless_daemon_exists("dpd-clientd")
    ns = user_namespace
    write_defaults(ns)
    (tmp_path / "master").mkdir()
    master = Master(tmp_path / "master", marker, heartbeat=0.5, nodes={
        "node1": [process_doc(marker, "a", "/bin/sleep", "8301")]})
    master.start()
    try:
        config = install_config(ns, "dpd-clientd",
                                master_stats=master.stats,
                                master_updates=master.updates)
        assert config["pid_file"].startswith("/run/diprocd/")
        result = init_script(ns, "dpd-clientd", "start")
        assert result.returncode == 0 and "warning" not in result.stderr, result
        pid_file = ns.host(config["pid_file"])
        pid = read_locked_pid(pid_file)
        assert pid and process_uid(pid) == ns.client_uid
        assert daemon_pids(ns, "dpd-clientd") == [pid]
        worker_file = ns.host(config["conf_file"])
        wait_for(lambda: read_json(worker_file)["procs"] == master.nodes["node1"],
                 what="the master's list in the worker's file")
        log = ns.host(config["log_file"])
        wait_for(lambda: "wrote" in read_text(log, default=""),
                 what="the client's log")
        for path in (pid_file, os.path.dirname(pid_file), worker_file, log):
            assert os.stat(path).st_uid == ns.client_uid, path
        for path in (DEFAULT_CONFIG["dpd-clientd"], "/var/lib/diprocd"):
            result = run_as_client_user(ns, "test", "-w", path)
            assert result.returncode == 1, (path, result)

        result = init_script(ns, "dpd-clientd", "status")
        assert result.returncode == 0 and str(pid) in result.stdout, result
        result = init_script(ns, "dpd-clientd", "start")
        assert "already running" in result.stdout, result
        assert daemon_pids(ns, "dpd-clientd") == [pid]
        result = init_script(ns, "dpd-clientd", "stop")
        assert result.returncode == 0, result
        assert not is_alive(pid) and not os.path.exists(pid_file)
        assert init_script(ns, "dpd-clientd", "status").returncode == 3
    finally:
        master.stop()


def test_prepare_client_as_the_systemd_unit_runs_it(user_namespace):
    """dpd-clientd.service runs ``prepare-client diprocd`` as root with no
    CONFIG (ExecStartPre=+): it makes /run/diprocd and the lock beside the
    client's CONFIG (the one dpd-clientd finds bare) diprocd's, leaves a
    link planted at the lock's name as it is (a link, never followed),
    and does nothing more without a CONFIG."""
    ns = user_namespace
    write_defaults(ns)
    helper = [os.path.join(ROOT, "lib", "prepare-client"), CLIENT_USER]
    env = dict(bare_env(ns), DAEMON_DIR=BIN)
    result = ns.run(helper, env=env)  # no CONFIG yet
    assert result.returncode == 0 and result.stderr == "", result
    assert os.stat(ns.host("/run/diprocd")).st_uid == ns.client_uid
    assert not os.path.exists(ns.host("/var/lib/diprocd/.diprocd-client.json.lock"))
    for config in (DEFAULT_CONFIG["dpd-clientd"], "/var/lib/diprocd/other.json"):
        install_config(ns, "dpd-clientd", path=config)
        lock = ns.host(os.path.join(os.path.dirname(config),
                                    "." + os.path.basename(config) + ".lock"))
        result = ns.run(helper, env=dict(env, DPD_CLIENT_CONFIG=config))
        assert result.returncode == 0, result
        stat = os.lstat(lock)
        assert (stat.st_uid, stat.st_mode & 0o777) == (ns.client_uid, 0o644)
    target = ns.host("/var/lib/diprocd/target")
    with open(target, "w"):
        pass
    lock = ns.host("/var/lib/diprocd/.diprocd-client.json.lock")
    os.unlink(lock)
    os.symlink("/var/lib/diprocd/target", lock)
    assert ns.run(helper, env=env).returncode == 0
    assert os.path.islink(lock) and os.stat(target).st_uid == 0


@pytest.mark.timeout(180)
def test_an_install_from_before_the_system_user_keeps_working(user_namespace):
    """The worker's file where the package put it before its user (with
    the client's pid file in /var/run): the init scripts find it there and
    run both daemons as root, as then, though the user now exists."""
    skip_unless_daemon_exists("dpd-clientd")
    ns = user_namespace
    write_defaults(ns)
    old_pid_file = "/var/run/dpd-clientd.pid"
    config = install_config(ns, "dpd-clientd", pid_file=old_pid_file,
                            log_file="/var/log/diprocd/dpd-clientd.log",
                            conf_file=OLD_WORKER_CONFIG)
    worker = install_config(ns, "dpd-workerd", path=OLD_WORKER_CONFIG,
                            procs=[])
    assert not os.path.exists(ns.host(DEFAULT_CONFIG["dpd-workerd"]))
    for daemon, doc in (("dpd-workerd", worker), ("dpd-clientd", config)):
        result = init_script(ns, daemon, "start")
        assert result.returncode == 0, result
        pid = read_locked_pid(ns.host(doc["pid_file"]))
        assert pid and process_uid(pid) == 0
        assert daemon_pids(ns, daemon) == [pid]
        assert init_script(ns, daemon, "status").returncode == 0
    for daemon in ("dpd-clientd", "dpd-workerd"):
        assert init_script(ns, daemon, "stop").returncode == 0
        assert daemon_pids(ns, daemon) == []


@pytest.mark.timeout(180)
def test_worker_trusts_the_client_user(user_namespace):
    """With the package's user, the init script tells dpd-workerd to trust
    it to own its CONFIG (--config-owner diprocd, the file-safety rules),
    and the worker runs a file that user wrote, in its folder."""
    skip_unless_daemon_exists("dpd-workerd")
    ns = user_namespace
    write_defaults(ns)
    config = install_config(ns, "dpd-workerd")
    worker_file = ns.host(DEFAULT_CONFIG["dpd-workerd"])
    os.chown(worker_file, ns.client_uid, ns.client_uid)
    os.chmod(worker_file, 0o600)
    result = init_script(ns, "dpd-workerd", "start")
    assert result.returncode == 0, result
    pid = read_locked_pid(ns.host(config["pid_file"]))
    assert pid and process_uid(pid) == 0
    assert process_argv(pid)[2:4] == ["--config-owner", CLIENT_USER]
    wait_for(lambda: read_pid(ns.host("/var/run/sleep.worker.1.pid")),
             timeout=10, what="sleep.worker.1's pid file")
    assert init_script(ns, "dpd-workerd", "stop").returncode == 0
