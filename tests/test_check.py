"""--check, run as an operator runs it (the real commands): every error and
every warning once, what CONFIG resolves to on this node, what would fail
at start here, and conflicting options refused."""

import itertools
import json
import os
import socket

import pytest

from helpers import client_doc, master_doc, run_command, worker_doc

COMMANDS = ("dpd-workerd", "dpd-masterd", "dpd-clientd")


def check(command, path):
    result = run_command(command, ["--check", str(path)])
    return result.returncode, result.stdout, result.stderr


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_errors_and_warnings_together_each_once(tmp_path):
    doc = worker_doc(tmp_path, [
        {"name": "a", "run": "/bin/true", "colour": "red"},
        {"name": "b", "run": "relative", "user": "no-such-user-dpd"}],
        extra=1)
    del doc["pid_file"]
    code, out, err = check("dpd-workerd", write(tmp_path / "w.json", doc))
    assert code == 1 and out == ""
    lines = err.splitlines()
    expected = [
        'error: %s/w.json: missing required key "pid_file"' % tmp_path,
        'error: %s/w.json: process "b": field "run": must be an absolute '
        'path, got "relative"' % tmp_path,
        'error: %s/w.json: process "b": field "user": unknown user '
        '"no-such-user-dpd"' % tmp_path,
        'warning: %s/w.json: unknown key "extra" (ignored)' % tmp_path,
        'warning: %s/w.json: process "a": unknown field "colour" (ignored)'
        % tmp_path,
        "%s/w.json: invalid: 3 errors, 2 warnings" % tmp_path]
    assert lines == expected, err


def test_master_and_client_keep_their_warnings_beside_errors(tmp_path):
    master = master_doc(tmp_path, {"n1": [{"name": "a", "run": "x"}]},
                        master_stats="tcp://0.0.0.0:5001", colour=1)
    code, _, err = check("dpd-masterd", write(tmp_path / "m.json", master))
    assert code == 1
    assert err.count('field "run": must be an absolute path') == 1, err
    assert err.count('unknown key "colour"') == 1, err
    assert err.count("without CURVE, traffic on tcp://0.0.0.0:5001") == 1, err
    client = client_doc(tmp_path, colour=1, status_interval=-1)
    code, _, err = check("dpd-clientd", write(tmp_path / "c.json", client))
    assert code == 1
    assert err.count('key "status_interval"') == 1, err
    assert err.count('unknown key "colour"') == 1, err
    assert err.endswith("c.json: invalid: 1 error, 1 warning\n"), err


@pytest.mark.parametrize("raw, resolved", [
    ("%H", "{host}"), ("web-%H", "web-{host}"), ("100%%-%H", "100%-{host}"),
    ("plain", "plain")])
def test_client_shows_the_node_name_it_resolves_to(tmp_path, raw, resolved):
    (tmp_path / "worker.json").write_text("{}")
    path = write(tmp_path / "c.json", client_doc(tmp_path, node_name=raw))
    code, out, err = check("dpd-clientd", path)
    assert code == 0, err
    assert out.splitlines() == [
        '%s: node name "%s"' % (path, resolved.format(
            host=socket.gethostname())), "%s: OK" % path]


def test_what_would_fail_at_start_on_this_node(tmp_path):
    (tmp_path / "plain").write_text("not a program")
    program = tmp_path / "program"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    jail = tmp_path / "jail"
    (jail / "srv").mkdir(parents=True)
    procs = [
        {"name": "good", "run": str(program), "cwd": str(tmp_path),
         "logs": str(tmp_path / "good.log")},
        {"name": "lognew", "run": str(program),
         "logs": str(tmp_path / "new" / "folder" / "x.log")},
        {"name": "loglink", "run": str(program),
         "logs": str(tmp_path / "link.log")},
        {"name": "missing", "run": str(tmp_path / "nothing")},
        {"name": "plain", "run": str(tmp_path / "plain")},
        {"name": "folder", "run": str(tmp_path)},
        {"name": "nocwd", "run": str(program), "cwd": str(tmp_path / "gone")},
        {"name": "nochroot", "run": "/bin/sh",
         "chroot": str(tmp_path / "no-jail")},
        {"name": "jailed", "run": "/bin/sh", "chroot": str(jail),
         "cwd": "srv"},
        {"name": "jailcwd", "run": "/srv", "chroot": str(jail),
         "cwd": "tmp"},
        {"name": "logfolder", "run": str(program), "logs": str(tmp_path)},
        {"name": "logunder", "run": str(program),
         "logs": str(tmp_path / "plain" / "x.log")},
    ]
    os.symlink(str(tmp_path / "good.log"), str(tmp_path / "link.log"))
    doc = worker_doc(tmp_path, procs,
                     log_file=str(tmp_path / "plain" / "worker.log"),
                     log_dir=str(tmp_path / "procs"))
    code, out, err = check("dpd-workerd", write(tmp_path / "w.json", doc))
    assert code == 0 and out.endswith("OK\n"), err
    at = "warning: %s/w.json: " % tmp_path
    fails = " (its start would fail)"
    expected = [
        at + 'key "log_file": %s/plain is not a folder (the start would '
        "fail)" % tmp_path,
        at + 'process "lognew": field "logs": folder %s/new/folder does not '
        "exist (never made)" % tmp_path + fails,
        at + 'process "loglink": field "logs": %s/link.log is a symbolic '
        "link (never followed)" % tmp_path + fails,
        at + 'process "missing": field "run": %s/nothing does not exist'
        % tmp_path + fails,
        at + 'process "plain": field "run": %s/plain is not executable'
        % tmp_path + fails,
        at + 'process "folder": field "run": %s is a folder' % tmp_path + fails,
        at + 'process "nocwd": field "cwd": %s/gone does not exist'
        % tmp_path + fails,
        at + 'process "nochroot": field "chroot": %s/no-jail does not exist'
        % tmp_path + fails,
        at + 'process "jailed": field "run": /bin/sh in the chroot does not '
        "exist" + fails,
        at + 'process "jailcwd": field "run": /srv in the chroot is a folder'
        + fails,
        at + 'process "jailcwd": field "cwd": tmp in the chroot does not '
        "exist" + fails,
        at + 'process "logfolder": field "logs": %s is a folder' % tmp_path
        + fails,
        at + 'process "logunder": field "logs": %s/plain is not a folder'
        % tmp_path + fails,
    ]
    assert err.splitlines() == expected, err
    assert not (tmp_path / "new").exists()  # --check makes nothing


def test_master_does_not_look_at_the_nodes_files(tmp_path):
    """A node list names another machine's programs and users."""
    master = master_doc(tmp_path, {"n1": [
        {"name": "a", "run": str(tmp_path / "nothing"), "user": "elsewhere",
         "cwd": str(tmp_path / "gone")}]})
    code, out, err = check("dpd-masterd", write(tmp_path / "m.json", master))
    assert (code, err) == (0, ""), err
    assert out == "%s/m.json: OK\n" % tmp_path


def test_pid_file_that_cannot_be_made(tmp_path):
    (tmp_path / "plain").write_text("")
    path = write(tmp_path / "c.json", client_doc(
        tmp_path, pid_file=str(tmp_path / "plain" / "run" / "c.pid")))
    (tmp_path / "worker.json").write_text("{}")
    code, _, err = check("dpd-clientd", path)
    assert code == 0
    assert err == ('warning: %s: key "pid_file": folder %s/plain/run cannot '
                   "be made: %s/plain is not a folder (the start would fail)\n"
                   % (path, tmp_path, tmp_path))


QUERIES = {"dpd-workerd": ("--check", "--status", "--pid-file", "--pid",
                           "--config-path"),
           "dpd-masterd": ("--check", "--pid-file", "--pid", "--config-path"),
           "dpd-clientd": ("--check", "--pid-file", "--pid", "--config-path")}


@pytest.mark.parametrize("command", COMMANDS)
def test_conflicting_options_are_a_usage_error(command, tmp_path):
    """--check --status used to be said to run only the check: any two of
    the queries exit 2 with a message, doing nothing."""
    path = write(tmp_path / "config.json", {})
    for pair in itertools.permutations(QUERIES[command], 2):
        result = run_command(command, list(pair) + [str(path)])
        assert result.returncode == 2, (pair, result)
        assert "not allowed with argument" in result.stderr, (pair, result)
        assert result.stdout == ""
    assert os.listdir(tmp_path) == ["config.json"]
