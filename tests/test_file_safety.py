"""File safety: the StrictModes-style checks of the files the daemons obey
(``diprocd.trust``: one test a rule, with real daemons refusing at start or
keeping their last good configuration while running), the daemons' own
files (fixed modes whatever the umask, never written through a planted
symlink) and the programs' logs (opened with the program's user's rights,
never through a link at their name, never in a folder made up)."""

import os
import pwd
import signal
import stat

import pytest

from conftest import requires_root
from diprocd import trust
from diprocd.cli import config_lock_path
from diprocd.config import (load_master_control, load_pid_file,
                            load_worker_config)
from diprocd.errors import ConfigError
from diprocd.kernel import is_alive
from diprocd.ledger import journal_path
from diprocd.master import nodes_file_path
from helpers import (Master, Node, read_text, run_command, start_daemon,
                     stop_daemon, valid_config, wait_for, worker_doc,
                     write_json)

NOBODY = pwd.getpwnam("nobody")



def config_of(command, folder, mode=None):
    """``folder``/<command>.json, a CONFIG ``command`` starts with."""
    path = os.path.join(str(folder), command + ".json")
    write_json(path, valid_config(command, folder), mode=mode)
    return path


def refused(command, path, marker, *flags):
    """``command -f [flags] CONFIG`` must exit 1 at once: its stderr."""
    result = run_command(command, ["-f"] + list(flags) + [path], marker)
    assert result.returncode == 1, (result.stdout, result.stderr)
    return result.stderr


def mode_of(path):
    return stat.S_IMODE(os.lstat(str(path)).st_mode)


def folder_of(path, owner=0):
    """A new folder, owned by ``owner``, mode 0755."""
    os.mkdir(str(path))
    os.chown(str(path), owner, -1)
    return path


# -- the rules of trust.py, one test each --------------------------------------

def test_a_config_writable_by_group_is_refused_at_start(tmp_path, marker):
    path = config_of("dpd-workerd", tmp_path, mode=0o664)
    assert ("dpd-workerd: error: %s: unsafe config, refused: writable by "
            "group (mode 0664; chmod g-w)" % path) in refused(
                "dpd-workerd", path, marker)
    assert not os.path.exists(str(tmp_path / "run"))  # nothing done


def test_a_config_writable_by_others_is_refused_at_start(tmp_path, marker):
    path = config_of("dpd-clientd", tmp_path, mode=0o646)
    assert ("%s: unsafe config, refused: writable by others (mode 0646; "
            "chmod o-w)" % path) in refused("dpd-clientd", path, marker)


@requires_root
def test_a_config_owned_by_another_user_is_refused_at_start(tmp_path, marker):
    path = config_of("dpd-masterd", tmp_path)
    os.chown(path, NOBODY.pw_uid, -1)
    assert ("%s: unsafe config, refused: owned by nobody (uid %d), not by "
            "root" % (path, NOBODY.pw_uid)) in refused("dpd-masterd", path,
                                                       marker)


def test_a_config_in_a_folder_writable_by_others_is_refused(tmp_path, marker):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(str(folder), 0o777)
    path = config_of("dpd-workerd", folder)
    assert ("%s: unsafe config, refused: its folder %s is writable by others "
            "without the sticky bit (mode 0777)" % (path, folder)) in refused(
                "dpd-workerd", path, marker)


def test_a_config_in_a_sticky_folder_writable_by_others_is_accepted(
        tmp_path, marker):
    """Like /tmp: others may add files there, not replace ours."""
    folder = tmp_path / "sticky"
    folder.mkdir()
    os.chmod(str(folder), 0o1777)
    path = config_of("dpd-workerd", folder)
    result = run_command("dpd-workerd", ["--check", path], marker)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_a_secret_key_readable_by_others_is_refused(tmp_path):
    """As a key reader calls it; a public key may be read by all."""
    secret, public = tmp_path / "node1.key_secret", tmp_path / "node1.key"
    for path in (secret, public):
        path.write_text("key\n")
        os.chmod(str(path), 0o644)
    with pytest.raises(ConfigError) as caught:
        trust.check_file(str(secret), "secret key", secret=True)
    assert str(caught.value) == ("%s: unsafe secret key, refused: readable "
                                 "by others (mode 0644; chmod o-r)" % secret)
    trust.check_file(str(public), "public key")
    os.chmod(str(secret), 0o600)
    trust.check_file(str(secret), "secret key", secret=True)


def test_a_symlinked_config_is_checked_where_it_points(tmp_path):
    target = tmp_path / "etc" / "worker.json"
    target.parent.mkdir()
    write_json(str(target), valid_config("dpd-workerd", tmp_path), mode=0o666)
    (tmp_path / "lib").mkdir()
    link = tmp_path / "lib" / "worker.json"
    os.symlink(str(target), str(link))
    with pytest.raises(ConfigError) as caught:
        load_worker_config(str(link))
    assert caught.value.problems == [
        "%s (-> %s): unsafe config, refused: writable by %s (mode 0666; "
        "chmod %s-w)" % (link, target, who, who[0])
        for who in ("group", "others")]


@requires_root
def test_config_owner_trusts_the_user_who_writes_the_worker_file(node,
                                                                 tmp_path):
    """The Debian package's layout: dpd-clientd runs as its own user, who
    owns the worker's CONFIG and its folder; a re-read trusts it too.
    (No logs: their default folder would be in nobody's folder, where
    root opens nothing for nobody, see "File safety".)"""
    node.write([node.proc("p", "/bin/sleep", "64101", logs=None)])
    for path in (node.config_path, str(tmp_path)):
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    text = refused("dpd-workerd", node.config_path, node.marker)
    assert "%s: unsafe config, refused: owned by nobody" % (
        node.config_path) in text
    assert "its folder %s is owned by nobody" % tmp_path in text
    node.start("--config-owner", "nobody")
    pid = node.wait_running("p")
    new = node.config_path + ".new"
    write_json(new, worker_doc(tmp_path, [node.proc("p", "/bin/sleep",
                                                    "64102", logs=None)],
                               pid_file=node.pid_file))
    os.chown(new, NOBODY.pw_uid, NOBODY.pw_gid)
    os.rename(new, node.config_path)
    wait_for(lambda: node.instances("64102"), what=lambda: "the change "
             "applied; log:\n" + node.log())
    wait_for(lambda: not is_alive(pid), what="the old process stopped")
    result = run_command("dpd-workerd", ["--check", "--config-owner",
                                         str(NOBODY.pw_uid), node.config_path])
    assert result.returncode == 0, result.stderr


def test_an_unknown_config_owner_is_a_usage_error(tmp_path, marker):
    path = config_of("dpd-workerd", tmp_path)
    result = run_command("dpd-workerd", ["-f", "--config-owner",
                                         "no-such-user-dpd", path], marker)
    assert result.returncode == 2
    assert ('dpd-workerd: error: argument --config-owner: unknown user '
            '"no-such-user-dpd"') in result.stderr


def test_an_unsafe_change_while_running_keeps_the_last_good_config(node):
    """Refused and logged, the process untouched; the init scripts' --pid
    still finds the worker and dpdctl says why; once the mode is fixed the
    change applies."""
    node.write([node.proc("p", "/bin/sleep", "64103")])
    node.start()
    pid = node.wait_running("p")
    write_json(node.config_path, worker_doc(
        node.dir, [node.proc("p", "/bin/sleep", "64104")],
        pid_file=node.pid_file), mode=0o646)
    wait_for(lambda: "keeping the last good configuration" in node.log(),
             what=lambda: "the refusal; log:\n" + node.log())
    assert ("%s: unsafe config, refused: writable by others"
            % node.config_path) in node.log()
    assert node.state("p")["pid"] == pid and node.state("p")["starts"] == 1
    assert is_alive(pid) and node.instances("64104") == []
    found = run_command("dpd-workerd", ["--pid", node.config_path])
    assert (found.returncode, found.stdout) == (0, "%d\n" % node.daemon.pid)
    status = run_command("dpdctl", ["--worker", node.config_path, "status"])
    assert status.returncode == 1 and "writable by others" in status.stdout
    os.chmod(node.config_path, 0o644)
    wait_for(lambda: node.instances("64104"), what=lambda: "the change "
             "applied once safe; log:\n" + node.log())


@pytest.mark.parametrize("command", ["dpd-masterd", "dpd-clientd"])
def test_an_unsafe_master_or_client_file_while_running_is_refused(
        tmp_path, marker, command):
    path = config_of(command, tmp_path)
    log = str(tmp_path / "out.log")
    daemon = start_daemon(command, marker, ["-f", path], log)
    try:
        wait_for(lambda: ("master up" if command == "dpd-masterd"
                          else "listening to") in read_text(log, ""),
                 what=lambda: "the daemon up: " + read_text(log, ""))
        os.chmod(path, 0o646)
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the last good" in read_text(log),
                 what=lambda: "the refusal: " + read_text(log))
        assert "unsafe config, refused: writable by others" in read_text(log)
        assert daemon.poll() is None
    finally:
        assert stop_daemon(daemon) == 0


def test_stopping_a_daemon_does_not_need_a_safe_config(tmp_path):
    """What the init scripts (--pid-file, --pid) and dpdctl read."""
    path = config_of("dpd-masterd", tmp_path, mode=0o666)
    assert load_pid_file(path) == str(tmp_path / "run" / "dpd-masterd.pid")
    assert load_master_control(path) == "ipc://%s" % (
        tmp_path / "run" / "dpd-masterd.control")


# -- the daemons' own files ---------------------------------------------------------

def plant_link(path, tmp_path):
    """A symlink at ``path`` to a victim file (0600); return the victim."""
    victim = tmp_path / "victim"
    victim.write_text("SECRET\n")
    os.chmod(str(victim), 0o600)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(str(victim), path)
    return victim


def untouched(victim):
    return victim.read_text() == "SECRET\n" and mode_of(victim) == 0o600


@pytest.mark.parametrize("which", ["pid file", "journal"])
def test_a_symlink_at_the_pid_file_or_journal_is_refused(node, tmp_path,
                                                         which):
    """Files held open and rewritten in place: a link there is an error."""
    node.write([])
    path = node.pid_file if which == "pid file" else journal_path(
        node.pid_file)
    victim = plant_link(path, tmp_path)
    node.start(wait=False)
    assert node.daemon.wait(timeout=20) == 1
    assert "%s: it is a symbolic link (refused: never followed)" % (
        path) in node.log()
    assert untouched(victim) and os.path.islink(path)


def test_a_symlink_at_the_status_file_is_replaced(node, tmp_path):
    """A file replaced by rename: the rename replaces the link."""
    node.write([])
    victim = plant_link(node.status_path, tmp_path)
    node.start()
    assert not os.path.islink(node.status_path)
    assert mode_of(node.status_path) == 0o644 and untouched(victim)


def test_the_workers_own_files_have_fixed_modes_whatever_the_umask(node):
    node.write([])
    files = {node.pid_file: 0o644, journal_path(node.pid_file): 0o600,
             config_lock_path(node.config_path): 0o644}
    for path in files:
        with open(path, "w"):
            os.chmod(path, 0o666)
    node.start(wrapper=["sh", "-c", 'umask 000 && exec "$@"', "sh"])
    files[node.status_path] = 0o644
    assert {path: mode_of(path) for path in files} == files


@pytest.mark.parametrize("planted", ["symlink", "file writable by others"])
def test_the_masters_nodes_file_is_replaced_mode_0644(tmp_path, marker,
                                                      planted):
    (tmp_path / "master").mkdir()
    master = Master(tmp_path / "master", marker, nodes={"node1": []})
    path = nodes_file_path(master.pid_file)
    if planted == "symlink":
        victim = plant_link(path, tmp_path)
    else:
        write_json(path, {}, mode=0o666)
    node = Node(tmp_path / "node1", marker)
    try:
        master.start()
        node.join(master)
        wait_for(lambda: "node1" in (master.view() or {}).get("nodes", {}),
                 what=lambda: "the node in the nodes file: " + master.log())
        assert not os.path.islink(path) and mode_of(path) == 0o644
        assert planted != "symlink" or untouched(victim)
    finally:
        node.close()
        master.stop()


# -- logs ---------------------------------------------------------------------------

@pytest.fixture
def open_node(reachable_dir, marker):
    """A node whose folder the programs' user (nobody) can reach."""
    node = Node(reachable_dir, marker)
    yield node
    node.close()


def talker(node, name, logs):
    """Says one line, then sleeps; as nobody (a root worker's default);
    started once."""
    return node.proc(name, "/bin/sh", "-c", "echo hello; exec sleep 64105",
                     logs=str(logs), restart=False)


@requires_root
def test_a_log_that_is_a_symlink_is_a_start_error(open_node,
                                                  reachable_dir):
    """nobody, who owns the folder of its log, links it to a root file."""
    app = folder_of(reachable_dir / "app", NOBODY.pw_uid)
    victim = reachable_dir / "victim"
    victim.write_text("SECRET\n")
    os.chmod(str(victim), 0o600)
    logs = app / "app.log"
    os.symlink(str(victim), str(logs))
    os.lchown(str(logs), NOBODY.pw_uid, NOBODY.pw_gid)
    open_node.write([talker(open_node, "p", logs)])
    open_node.start()
    entry = open_node.wait_state("p", "failed")
    assert entry["error"] == ("logs: %s is a symbolic link (never followed)"
                              % logs)
    assert untouched(victim)


@requires_root
def test_a_symlink_on_the_way_to_a_log_does_not_redirect_roots_write(
        open_node, reachable_dir):
    """nobody's folder holds a link to a root folder: nobody may not write
    there, and root does not do it for it."""
    that = folder_of(reachable_dir / "that", NOBODY.pw_uid)
    root_dir = folder_of(reachable_dir / "root-dir")
    os.symlink(str(root_dir), str(that / "sub"))
    os.lchown(str(that / "sub"), NOBODY.pw_uid, NOBODY.pw_gid)
    logs = that / "sub" / "app.log"
    open_node.write([talker(open_node, "p", logs)])
    open_node.start()
    entry = open_node.wait_state("p", "failed")
    assert entry["error"] == ("logs: %s: permission denied to user nobody, "
                              "and a folder on the way is not root's alone"
                              % logs)
    assert os.listdir(str(root_dir)) == []


@requires_root
def test_logs_in_a_root_folder_and_in_the_users_own_folder(open_node,
                                                           reachable_dir):
    """/var/log/app.log for a program running as nobody: opened as root
    (only root controls that folder). In nobody's own folder: opened, so
    created, with nobody's rights."""
    var_log = folder_of(reachable_dir / "var-log")
    own = folder_of(reachable_dir / "own", NOBODY.pw_uid)
    open_node.write([talker(open_node, "root-folder", var_log / "app.log"),
                     talker(open_node, "own-folder", own / "app.log")])
    open_node.start()
    for name, folder, owner in (("root-folder", var_log, 0),
                                ("own-folder", own, NOBODY.pw_uid)):
        open_node.wait_running(name)
        wait_for(lambda: read_text(str(folder / "app.log"), "") == "hello\n",
                 what="the line in %s" % folder)
        assert os.stat(str(folder / "app.log")).st_uid == owner


def test_a_missing_logs_folder_is_a_start_error_and_is_not_made(
        open_node, reachable_dir):
    logs = reachable_dir / "no" / "such" / "app.log"
    open_node.write([talker(open_node, "p", logs)])
    open_node.start()
    entry = open_node.wait_state("p", "failed")
    assert entry["error"] == "logs: folder %s does not exist" % logs.parent
    assert not os.path.exists(str(reachable_dir / "no"))
