"""``limits`` and the default ``logs``, end to end: a real dpd-workerd, real
processes, /proc/PID/limits and real files."""

import os
import shutil
import stat
import subprocess

import pytest

from conftest import requires_root
from diprocd import config
from helpers import proc_limits, run_command, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_limits_are_set_soft_and_hard_before_exec(node):
    node.write([node.proc("limited", "/bin/sleep", "7301", limits={
        "nofile": [256, 512], "core": 0, "cpu": "unlimited",
        "as": 4 << 30, "stack": [8 << 20, "unlimited"], "memlock": 65536,
        "nproc": [50000, 60000]})])  # above what nobody runs here
    node.start()
    limits = proc_limits(node.wait_running("limited"))
    assert limits["Max open files"] == ("256", "512")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max cpu time"] == ("unlimited", "unlimited")
    assert limits["Max address space"] == (str(4 << 30), str(4 << 30))
    assert limits["Max stack size"] == (str(8 << 20), "unlimited")
    assert limits["Max locked memory"] == ("65536", "65536")
    assert limits["Max processes"] == ("50000", "60000")


def can_raise_hard_limits():
    """CAP_SYS_RESOURCE (24) in our effective set (a container may drop
    it, root or not)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


@requires_root
@pytest.mark.skipif(not can_raise_hard_limits(),
                    reason="no CAP_SYS_RESOURCE here: no hard limit can be "
                    "raised, by root either")
def test_a_hard_limit_above_the_workers_is_raised_as_root(node):
    """The limits are set before the user changes: nobody gets a hard
    nofile above the worker's own (only root may raise one)."""
    with open("/proc/sys/fs/nr_open") as handle:
        ceiling = int(handle.read())
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    target = min(ceiling, hard * 2 if hard > 0 else ceiling)
    if target <= hard:
        pytest.skip("the worker's hard nofile is already the kernel's ceiling")
    node.write([node.proc("raised", "/bin/sleep", "7302", user="nobody",
                          limits={"nofile": target})])
    node.start()
    limits = proc_limits(node.wait_running("raised"))
    assert limits["Max open files"] == (str(target), str(target))


def test_a_limit_the_kernel_refuses_is_a_start_error_naming_it(node):
    with open("/proc/sys/fs/nr_open") as handle:
        ceiling = int(handle.read())
    node.write([node.proc("refused", "/bin/sleep", "7303", restart=False,
                          limits={"nofile": ceiling + 1})])
    node.start()
    entry = node.wait_state("refused", "failed")
    assert entry["error"].startswith("limits: nofile [%d, %d]: "
                                     % (ceiling + 1, ceiling + 1)), entry


@pytest.mark.parametrize("limits, why", [
    ({"nofiles": 10}, 'unknown limit "nofiles"'),
    ({"core": -1}, 'limit "core": must be a number'),
    ({"core": "lots"}, 'limit "core": must be a number'),
    ({"stack": [10, 5]}, 'limit "stack": soft 10 is above hard 5'),
    ({"stack": ["unlimited", 5]}, 'limit "stack": soft "unlimited" is above'),
    ({"as": [1, 2, 3]}, 'limit "as": a list must be [soft, hard]'),
    ({"cpu": True}, 'limit "cpu": must be a number'),
    ([], "must be an object"),
])
def test_invalid_limits_name_the_limit(limits, why):
    _, problems, _ = config.validate_procs(
        [{"name": "p", "run": "/bin/true", "limits": limits}], "w.json",
        check_users=False)
    assert len(problems) == 1 and 'field "limits": ' + why in problems[0], \
        problems


# -- output kept by default ---------------------------------------------------


def test_output_without_logs_is_kept_in_log_dir(node, tmp_path):
    """No "logs": <log_dir>/<name>.log, log_dir defaulting to procs/ beside
    the worker's log_file, made by the worker (root's, 0750), the file
    opened for a process running as nobody."""
    log_dir = tmp_path / "procs"
    assert not log_dir.exists()
    script = 'echo "out $$"; echo "err $$" >&2; exec sleep 7304'
    node.write([node.proc("talker", "/bin/sh", "-c", script)])
    node.start()
    pid = node.wait_running("talker")
    path = log_dir / "talker.log"
    wait_for(lambda: path.exists() and "err" in path.read_text(),
             what="the output in %s" % path)
    assert path.read_text() == "out %d\nerr %d\n" % (pid, pid)
    info = os.stat(str(log_dir))
    assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_uid == os.geteuid()
    assert os.readlink("/proc/%d/fd/1" % pid) == str(path)
    tail = run_command("dpdctl", ["--worker", node.config_path, "tail",
                                  "talker"])
    assert tail.returncode == 0 and "err %d" % pid in tail.stdout, tail


def test_log_dir_key_and_logs_null(node, tmp_path):
    """log_dir names the folder; "logs": null keeps the old /dev/null."""
    node.write([node.proc("kept", "/bin/sh", "-c", "echo kept; exec sleep 7305"),
                node.proc("dropped", "/bin/sh", "-c",
                          "echo dropped; exec sleep 7306", logs=None)],
               log_dir=str(tmp_path / "elsewhere" / "out"))
    node.start()
    kept = node.wait_running("kept")
    dropped = node.wait_running("dropped")
    path = tmp_path / "elsewhere" / "out" / "kept.log"
    wait_for(lambda: path.exists() and path.read_text() == "kept\n",
             what="kept.log")
    assert os.readlink("/proc/%d/fd/1" % dropped) == "/dev/null"
    assert os.readlink("/proc/%d/fd/1" % kept) == str(path)
    assert sorted(os.listdir(str(tmp_path / "elsewhere" / "out"))) == [
        "kept.log"]


def test_without_log_file_nor_log_dir_output_goes_to_dev_null(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"pid_file": "%s/w.pid", "procs": [{"name": "p", '
                    '"run": "/bin/true"}]}' % tmp_path)
    os.chmod(str(path), 0o644)
    loaded = config.load_worker_config(str(path))
    assert loaded.log_dir is None and loaded.procs[0].logs == "/dev/null"


@pytest.mark.skipif(not shutil.which("logrotate"), reason="needs logrotate")
def test_the_shipped_logrotate_rule_rotates_default_logs(node, tmp_path):
    """debian/diprocd.logrotate on the default logs of a running process:
    copytruncate, and the process (O_APPEND) writes on at the new end, no
    hole of NULs where the old output was."""
    script = "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"
    node.write([node.proc("chatty", "/bin/sh", "-c", script)])
    node.start()
    node.wait_running("chatty")
    log = tmp_path / "procs" / "chatty.log"
    wait_for(lambda: log.exists() and log.stat().st_size > 200,
             what="some output")
    with open(os.path.join(ROOT, "debian", "diprocd.logrotate")) as handle:
        rule = handle.read()
    shipped = ("/var/log/diprocd/*.log /var/log/diprocd/procs/*.log "
               "/var/log/diprocd/client/*.log")
    assert shipped in rule
    conf = tmp_path / "logrotate.conf"
    conf.write_text(rule.replace(shipped, str(tmp_path / "procs" / "*.log")))
    result = subprocess.run(["logrotate", "-f", "--state",
                             str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rotated = tmp_path / "procs" / "chatty.log.1"
    assert rotated.exists() and rotated.read_text().startswith("line 1\n")
    last = int(rotated.read_text().splitlines()[-1].split()[1])
    wait_for(lambda: "line %d\n" % (last + 20) in log.read_text(),
             what="more output after the rotation")
    text = log.read_text()
    assert "\0" not in text and text.startswith("line ")
    assert int(text.split()[1]) > last - 5  # (copy, then truncate)
