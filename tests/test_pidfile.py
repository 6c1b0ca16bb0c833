"""A daemon's pid file: ``read_locked_pid``, and the ``--pid-file`` and
``--pid`` queries of the three commands (what the init scripts ask), against
real daemons started in the foreground with the test's marker."""

import fcntl
import os
import signal
import subprocess

import pytest

from diprocd.daemon import read_locked_pid
from diprocd.kernel import is_alive
from helpers import (command_argv, run_command, start_daemon, valid_config, wait_for,
                     write_json)

COMMANDS = ("dpd-workerd", "dpd-clientd", "dpd-masterd")


def test_read_locked_pid(tmp_path):
    path = str(tmp_path / "d.pid")
    assert read_locked_pid(path) is None  # no file
    with open(path, "w") as handle:
        handle.write("%d\n" % os.getpid())
    assert read_locked_pid(path) is None  # a live pid, but nobody's lock
    holder = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert read_locked_pid(path) == os.getpid()
        os.ftruncate(holder, 0)
        assert read_locked_pid(path) is None  # locked, pid not written yet
        os.pwrite(holder, b"not a pid\n", 0)
        assert read_locked_pid(path) is None
    finally:
        os.close(holder)


def query(command, option, config, marker):
    result = run_command(command, [option, config], marker)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", COMMANDS)
def test_pid_queries_follow_a_real_daemon(command, tmp_path, marker):
    config = str(tmp_path / "config.json")
    doc = valid_config(command, tmp_path)
    write_json(config, doc)
    pid_file = doc["pid_file"]

    assert query(command, "--pid-file", config, marker) == (0, pid_file + "\n", "")
    assert query(command, "--pid", config, marker) == (3, "", "")

    daemon = start_daemon(command, marker, ["-f", config],
                          str(tmp_path / "daemon.out"))
    wait_for(lambda: daemon.poll() is not None
             or read_locked_pid(pid_file) == daemon.pid,
             what="%s to lock and fill %s" % (command, pid_file))
    assert daemon.poll() is None, open(str(tmp_path / "daemon.out")).read()
    assert query(command, "--pid", config, marker) == (0, "%d\n" % daemon.pid, "")

    # CONFIG broken after start, but for its "pid_file": the daemon can
    # still be found (to be stopped or reported).
    write_json(config, {"pid_file": pid_file, "log_file": 5, "junk": True})
    assert run_command(command, ["--check", config], marker).returncode == 1
    assert query(command, "--pid-file", config, marker) == (0, pid_file + "\n", "")
    assert query(command, "--pid", config, marker) == (0, "%d\n" % daemon.pid, "")

    # Killed hard: the pid file stays, naming a dead pid, then a live one
    # that is not the daemon. Neither is "running".
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    assert os.path.exists(pid_file)
    assert query(command, "--pid", config, marker) == (3, "", "")
    with open(pid_file, "w") as handle:
        handle.write("%d\n" % os.getpid())
    assert is_alive(os.getpid())
    assert query(command, "--pid", config, marker) == (3, "", "")


@pytest.mark.parametrize("command", COMMANDS)
def test_pid_queries_without_a_pid_file(command, tmp_path, marker):
    """Exit 6 and one line on stderr, naming CONFIG, when no absolute
    "pid_file" can be read from it."""
    config = str(tmp_path / "config.json")
    cases = [(None, "cannot read"), ("{not json", "not JSON"),
             ('["pid_file"]', "must be a JSON object"),
             ('{"procs": []}', 'missing required key "pid_file"'),
             ('{"pid_file": "run/d.pid"}', "must be an absolute path")]
    for text, problem in cases:
        if text is not None:
            with open(config, "w") as handle:
                handle.write(text)
        for option in ("--pid-file", "--pid"):
            code, out, err = query(command, option, config, marker)
            assert (code, out) == (6, ""), (text, option, err)
            assert err.count("\n") == 1 and problem in err and config in err, err
            assert err.startswith(command + ": "), err


@pytest.mark.parametrize("command", COMMANDS)
def test_queries_exclude_each_other(command, tmp_path):
    config = str(tmp_path / "config.json")
    pairs = [("--check", "--pid"), ("--pid", "--pid-file"),
             ("--pid-file", "--check")]
    if command == "dpd-workerd":
        pairs += [("--status", "--pid"), ("--status", "--pid-file")]
    for pair in pairs:
        result = run_command(command, list(pair) + [config])
        assert result.returncode == 2, (pair, result)
        assert "not allowed with" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_gives_the_exit_codes(command):
    result = run_command(command, ["--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for words in ("--pid-file", "--pid ", "3 not running",
                  '6 no absolute "pid_file"'):
        assert words in text, text


def test_a_reader_gone_ends_the_output_quietly():
    """``dpd-workerd --status | head``: the pipe closed before the output
    ends gives status 1 and no traceback."""
    args = ("dpd-workerd", "--status", "/nonexistent")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(command_argv(args[0], list(args[1:])),
                                stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=30)
    finally:
        os.close(write_end)
    assert result.returncode == 1 and result.stderr == "", result.stderr
