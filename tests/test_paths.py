"""Which CONFIG a command uses without one (diprocd.paths): the variable,
/etc/default/diprocd, the default; the same defaults as lib/init.sh; the
real commands run bare in a scratch folder. (On a node laid out as the
package's, with the init scripts: tests/test_initscripts.py.)"""

import os
import re
import subprocess

import pytest

from diprocd import ctl, paths
from helpers import (ROOT, Master, Node, command_argv, marked_env,
                     run_command, start_daemon, valid_config, wait_for,
                     write_json)

WORKER = paths.DEFAULTS["dpd-workerd"]


def test_the_defaults_are_lib_init_sh_s():
    """lib/init.sh keeps its own shell defaults (the init scripts run
    without Python's help): they must be these, setting for setting, and
    its fallback for an install from before the user the same file."""
    with open(os.path.join(ROOT, "lib", "init.sh")) as handle:
        body = handle.read()
    block = body.split("# The defaults, written here only", 1)[1].split("\n\n")[0]
    shell = dict(re.findall(r"^([A-Z_]+)=(.*)$", block, re.M))
    assert {place.setting: place.default
            for place in paths.DEFAULTS.values()} == {
        name: value for name, value in shell.items()
        if name.endswith("_CONFIG")}
    assert "[ -e %s ]; then\n    WORKER_CONFIG=%s\n" % (
        paths.OLD_WORKER_CONFIG, paths.OLD_WORKER_CONFIG) in body
    assert "[ -r %s ] && . %s\n" % (paths.DEFAULTS_FILE,
                                   paths.DEFAULTS_FILE) in body
    # The user trusted to own the worker's file when it owns its folder
    # (the init script's --config-owner, the worker's own choice without
    # it: tests/test_deb_install.py runs both on a packaged root).
    assert "\nclient_user=%s\n" % paths.CLIENT_USER in body
    assert '[ "$(stat -c %U -- "${WORKER_CONFIG%/*}" 2>/dev/null)" != ' \
        '"$client_user" ]' in body


def test_settings_are_read_as_plain_assignments(tmp_path):
    """The shipped file (every line a comment) sets nothing; quotes are
    removed, nothing is expanded or run, the last assignment wins."""
    assert paths.read_settings(os.path.join(ROOT, "init.d", "diprocd")) == {}
    assert paths.read_settings(str(tmp_path / "missing")) == {}
    defaults = tmp_path / "diprocd"
    defaults.write_text(
        "# WORKER_CONFIG=/commented\n"
        "WORKER_CONFIG=/first.json\n"
        "  WORKER_CONFIG=/var/lib/w.json  # moved\n"
        'CLIENT_CONFIG="/srv/my client.json"\n'
        "export MASTER_CONFIG='/srv/$HOME/m.json'\n"
        "WORKER_OPTS=\n"
        "touch /tmp/never-run\n"
        "if true; then X=1; fi\n")
    assert paths.read_settings(str(defaults)) == {
        "WORKER_CONFIG": "/var/lib/w.json",
        "CLIENT_CONFIG": "/srv/my client.json",
        "MASTER_CONFIG": "/srv/$HOME/m.json", "WORKER_OPTS": ""}


def test_the_variable_then_the_file_then_the_default(tmp_path):
    defaults = tmp_path / "diprocd"
    where = str(defaults)
    assert paths.config_path("dpd-workerd", {}, where)[0] in (
        WORKER.default, paths.OLD_WORKER_CONFIG)
    assert paths.config_path("dpd-clientd", {}, where) == (
        "/var/lib/diprocd/diprocd-client.json", "the default")
    defaults.write_text("CLIENT_CONFIG=/etc/c.json\nMASTER_CONFIG=\n")
    assert paths.config_path("dpd-clientd", {}, where) == (
        "/etc/c.json", "CLIENT_CONFIG in %s" % where)
    # Empty names nothing: the default.
    assert paths.config_path("dpd-masterd", {"DPD_MASTER_CONFIG": ""},
                             where) == (
        "/var/lib/diprocd/diprocd-master.json", "the default")
    assert paths.config_path("dpd-clientd", {"DPD_CLIENT_CONFIG": "/v.json"},
                             where) == ("/v.json", "DPD_CLIENT_CONFIG")


def bare_env(**config):
    """Variables for run_command/start_daemon: these DPD_*_CONFIG, the
    others empty (whatever this machine's environment holds)."""
    env = {place.env: "" for place in paths.DEFAULTS.values()}
    env.update(config)
    return env


def run_bare(command, args, marker, **config):
    """``bin/COMMAND ARGS`` without CONFIG, these variables set."""
    return subprocess.run(command_argv(command, args),
                          env=marked_env(marker, bare_env(**config)),
                          capture_output=True, text=True, timeout=30)


def test_bare_worker_and_dpdctl_with_the_variables(tmp_path, marker):
    """A scratch worker and master, each started with no CONFIG but its
    variable: --status, --pid, --check and dpdctl status find them the same
    way; a CONFIG given on the command line wins."""
    node = Node(tmp_path / "node", marker)
    node.write([node.proc("talk", "/bin/sleep", "8401")])
    worker_env = {"DPD_WORKER_CONFIG": node.config_path}
    node.daemon = start_daemon("dpd-workerd", marker, ["-f"], node.log_path,
                               extra_env=bare_env(**worker_env))
    try:
        wait_for(node.worker_up, what="the bare worker's status file")
        pid = node.wait_running("talk")
        result = run_bare("dpd-workerd", ["--status"], marker, **worker_env)
        assert result.returncode == 0 and str(pid) in result.stdout, result
        result = run_bare("dpd-workerd", ["--pid"], marker, **worker_env)
        assert result.stdout == "%d\n" % node.daemon.pid, result
        result = run_bare("dpd-workerd", ["--config-path"], marker,
                          **worker_env)
        assert result.stdout == node.config_path + "\n"
        # A second one, bare too, is the same daemon's CONFIG.
        result = run_bare("dpd-workerd", ["-f"], marker, **worker_env)
        assert "already running (pid %d)" % node.daemon.pid in result.stdout
        os.makedirs(str(tmp_path / "other"))
        other = str(tmp_path / "other" / "w.json")
        write_json(other, valid_config("dpd-workerd", tmp_path / "other"))
        result = run_bare("dpd-workerd", ["--check", other], marker,
                          **worker_env)
        assert result.returncode == 0 and "other" in result.stdout, result
    finally:
        node.close()

    master = Master(tmp_path / "master", marker, nodes={"node1": []})
    os.makedirs(str(master.dir), exist_ok=True)
    master.write()
    master_env = {"DPD_MASTER_CONFIG": master.config_path}
    master.daemon = start_daemon("dpd-masterd", marker, ["-f"],
                                 master.log_path,
                                 extra_env=bare_env(**master_env))
    try:
        result = wait_for(lambda: (lambda r: r.returncode != 3 and r)(
            run_bare("dpdctl", ["status"], marker, **master_env)),
            what="dpdctl status to reach the bare master")
        assert result.returncode == 1 and "never seen" in result.stdout, result
        result = run_bare("dpd-masterd", ["--check"], marker, **master_env)
        assert result.returncode == 0, result
    finally:
        master.stop()


def test_bare_client_check_and_a_missing_file(tmp_path, marker):
    client = valid_config("dpd-clientd", tmp_path)
    write_json(str(tmp_path / "client.json"), client)
    result = run_bare("dpd-clientd", ["--check"], marker,
                      DPD_CLIENT_CONFIG=str(tmp_path / "client.json"))
    assert result.returncode == 0, result
    assert result.stdout.endswith("client.json: OK\n"), result
    # Named by the variable, missing: the command says where it looked.
    missing = str(tmp_path / "nothing.json")
    result = run_bare("dpd-workerd", ["--status"], marker,
                      DPD_WORKER_CONFIG=missing)
    assert result.returncode == 1
    assert ("dpd-workerd: no CONFIG given: %s (DPD_WORKER_CONFIG) does not "
            "exist" % missing) in result.stderr, result
    # --pid and --pid-file keep to one line, which names the file.
    for query in ("--pid", "--pid-file"):
        result = run_bare("dpd-workerd", [query], marker,
                          DPD_WORKER_CONFIG=missing)
        assert result.returncode == 6 and result.stdout == "", result
        assert result.stderr.count("\n") == 1 and missing in result.stderr


@pytest.mark.parametrize("command", sorted(paths.DEFAULTS))
def test_the_help_says_where_config_comes_from(command):
    result = run_command(command, ["--help"])
    place = paths.DEFAULTS[command]
    text = " ".join(result.stdout.split())
    assert ("without CONFIG: $%s if set, else %s in %s, else %s." % (
        place.env, place.setting, paths.DEFAULTS_FILE, place.default)) in text
    assert "[CONFIG]" in result.stdout


def test_dpdctl_help_names_the_masters_default():
    text = " ".join(ctl.make_parser().format_help().split())
    assert "$DPD_MASTER_CONFIG, else MASTER_CONFIG in /etc/default/diprocd, " \
        "else /var/lib/diprocd/diprocd-master.json" in text
