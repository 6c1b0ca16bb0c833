"""A cgroup per process (diprocd/cgroup.py), end to end: real dpd-workerd,
real process trees, the machine's real cgroup hierarchy. Root only, and
skipped where no hierarchy is writable (the worker then signals process
groups, as test_worker.py checks). The node fixture (conftest) removes this
test's cgroups, with anything left in them."""

import json
import os
import signal
import subprocess

import pytest

from conftest import requires_root
from diprocd import cgroup, config, preflight, status
from diprocd.kernel import is_alive
from helpers import (holds_within, marked_env, read_text, run_command,
                     wait_for)

PROBE = cgroup.detect("/run/dpd-test-probe.pid", create=False)
requires_cgroup = pytest.mark.skipif(
    not PROBE.enabled, reason="no writable cgroup hierarchy here: %s"
    % PROBE.why)
requires_memory = pytest.mark.skipif(
    PROBE.memory is None, reason="no writable memory cgroup here: %s"
    % PROBE.why)


def on_this_machine(test):
    """Root, and a writable hierarchy: the real thing."""
    return requires_root(requires_cgroup(test))


def tree_of(node):
    return cgroup.detect(node.pid_file, create=False)


def escaping(node, name, number, **fields):
    """A process whose child calls setsid (its own session and group, out
    of reach of a group signal), that child's pid in <name>.child."""
    child_file = str(node.dir / (name + ".child"))
    script = ('setsid sleep %d & echo $! > %s; exec sleep %d'
              % (number, child_file, number + 1))
    fields.setdefault("user", "root")  # writes in the test's folder
    return node.proc(name, "/bin/sh", "-c", script, **fields), child_file


def start_escaping(node, name, number):
    """A node running only ``escaping`` ``name``: (its pid, its setsid'd
    child's pid, the file that names the child)."""
    definition, child_file = escaping(node, name, number)
    node.write([definition])
    node.start()
    pid = node.wait_running(name)
    child = child_pid(child_file)
    # $! is known before the child's setsid ran.
    wait_for(lambda: os.getsid(child) != os.getsid(pid),
             what="the child's own session")
    return pid, child, child_file


def child_pid(path):
    text = wait_for(lambda: read_text(path, default="").strip(),
                    what="the child's pid in %s" % path)
    return int(text)


def dpdctl(node, *args):
    return run_command("dpdctl", ["--worker", node.config_path] + list(args))


@on_this_machine
def test_the_mechanism_is_in_the_status(node):
    node.write([])
    node.start()
    tree = node.status_doc()["tree"]
    assert tree["mechanism"] == PROBE.mechanism
    assert tree["path"] == tree_of(node).base
    assert tree["memory"] == PROBE.memory
    status = run_command("dpd-workerd", ["--status", node.config_path])
    line = "process trees: %s in %s; memory_max: %s" % (
        tree["mechanism"], tree["path"], tree["memory"] or "not enforced")
    assert line in status.stdout, status.stdout
    result = dpdctl(node, "status")
    assert line in result.stdout, result.stdout
    assert "a cgroup per process: %s" % tree["mechanism"] in node.log()


@on_this_machine
def test_stop_ends_a_descendant_that_called_setsid(node):
    pid, child, child_file = start_escaping(node, "escaper", 7401)
    tree = tree_of(node)
    assert set(tree.members("escaper")) == {pid, child}
    result = dpdctl(node, "stop", "escaper")
    assert result.returncode == 0, result
    node.wait_state("escaper", "stopped")
    wait_for(lambda: not is_alive(child), what="the setsid'd child to end")
    assert not is_alive(pid)
    assert not os.path.exists(os.path.join(tree.base, "escaper"))
    assert "escaper: 1 processes left in its cgroup after its main " \
        "process: killed" in node.log()


@on_this_machine
def test_removal_ends_the_tree_and_removes_its_cgroup(node):
    _, child, _ = start_escaping(node, "removed", 7403)
    node.write([])
    wait_for(lambda: "removed" not in node.status(), what="the removal")
    wait_for(lambda: not is_alive(child), what="the setsid'd child to end")
    assert tree_of(node).names() == []


@on_this_machine
def test_the_stop_deadline_kills_the_whole_cgroup(node):
    """A main process deaf to SIGTERM: at stop_timeout its whole cgroup is
    killed, the setsid'd child with it."""
    child_file = str(node.dir / "deaf.child")
    script = ("trap '' TERM; setsid sleep 7405 & echo $! > %s; "
              "while :; do sleep 1; done" % child_file)
    node.write([node.proc("deaf", "/bin/sh", "-c", script, stop_timeout=1,
                          user="root")])
    node.start()
    first = node.wait_running("deaf")
    first_child = child_pid(child_file)
    os.unlink(child_file)
    # A restart: the same folder, killed at the deadline, then a new start
    # that must run (a child born in a v2 folder after its cgroup.kill is
    # killed at birth: the folder is made anew).
    assert dpdctl(node, "restart", "deaf").returncode == 0
    pid = wait_for(lambda: node.state("deaf").get("pid") not in (None, first)
                   and node.state("deaf")["pid"], what="the restart")
    assert not holds_within(lambda: not is_alive(pid), 1.0)  # it stays
    assert node.state("deaf")["starts"] == 2
    assert not is_alive(first_child)
    child = child_pid(child_file)
    assert dpdctl(node, "stop", "deaf").returncode == 0
    entry = node.wait_state("deaf", "stopped")
    assert entry["last_exit"] == "killed by SIGKILL"
    wait_for(lambda: not is_alive(child) and not is_alive(pid),
             what="the tree to end")


@on_this_machine
@requires_memory
def test_memory_max_kills_a_program_that_allocates_past_it(node):
    script = ("import time\nheld = []\nwhile True:\n"
              "    held.append(bytearray(8 << 20))\n    time.sleep(0.005)\n")
    limit = 64 << 20
    node.write([node.proc("hog", "/usr/bin/python3", "-c", script,
                          memory_max=limit, restart=False)])
    node.start()
    entry = node.wait_state("hog", "exited", timeout=30)
    assert entry["last_exit"] == ("killed by SIGKILL (out of memory: "
                                  "memory_max %d bytes)" % limit), entry


@on_this_machine
def test_adoption_after_kill_9_finds_the_tree(node):
    """The worker killed with -9; the next one adopts the process (no
    second start) and its cgroup: a stop still ends the setsid'd child."""
    pid, child, child_file = start_escaping(node, "adoptee", 7407)
    node.stop(signal.SIGKILL)
    node.start()
    entry = node.wait_state("adoptee", "running", adopted=True)
    assert entry["pid"] == pid and entry["starts"] == 1
    assert "adoptee: adopted with its cgroup (2 processes)" in node.log()
    assert is_alive(child)
    assert dpdctl(node, "stop", "adoptee").returncode == 0
    node.wait_state("adoptee", "stopped")
    wait_for(lambda: not is_alive(child), what="the setsid'd child to end")


@on_this_machine
def test_what_a_dead_main_process_left_is_killed_at_the_next_start(node):
    """Main process gone while no worker ran: its setsid'd child is killed
    and the process started afresh, alone in its cgroup."""
    pid, child, child_file = start_escaping(node, "orphaned", 7409)
    node.stop(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid), what="the main process to end")
    os.unlink(child_file)
    node.start()
    wait_for(lambda: not is_alive(child), what="the left child to end")
    new = node.wait_running("orphaned")
    assert new != pid
    assert "orphaned: 1 processes in its cgroup, their main process gone: " \
        "killed" in node.log()
    assert child_pid(child_file) in tree_of(node).members("orphaned")


@on_this_machine
@pytest.mark.parametrize("mechanism", cgroup.MECHANISMS)
def test_each_mechanism_ends_a_whole_tree(mechanism, tmp_path, marker):
    """cgroup.kill (v2), freeze+kill+thaw (v1 freezer), kill until empty
    (v1 pids), each on the machine's own hierarchy, forced."""
    tree = cgroup.detect(str(tmp_path / "t.pid"), mechanisms=(mechanism,))
    if tree.mechanism != mechanism:
        pytest.skip("no writable %s here: %s" % (mechanism, tree.why))
    try:
        folders, _ = tree.prepare("t", None)

        def join():
            for folder in folders:
                with open(os.path.join(folder, "cgroup.procs"), "w") as handle:
                    handle.write(str(os.getpid()))

        main = subprocess.Popen(
            ["/bin/sh", "-c", "setsid sleep 7411 & exec sleep 7412"],
            env=marked_env(marker), preexec_fn=join)
        members = wait_for(lambda: len(tree.members("t")) == 2
                           and tree.members("t"), what="two members")
        assert main.pid in members
        assert tree.kill("t") == 2
        assert main.wait(10) == -signal.SIGKILL
        wait_for(lambda: not any(is_alive(pid) for pid in members),
                 what="both to end")
        assert tree.remove("t")
        assert tree.names() == []
    finally:
        tree.remove("t")
        tree.tidy()
    assert not os.path.exists(tree.base)


# -- detection, on files shaped as the kernel's (any user, any machine) -----

def fake_proc(tmp_path, monkeypatch, mountinfo, own):
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(own)
    monkeypatch.setattr(cgroup, "MOUNTINFO", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(cgroup, "OWN_CGROUPS", str(tmp_path / "cgroup"))


@pytest.mark.parametrize("mechanism", cgroup.MECHANISMS)
def test_without_a_hierarchy_it_is_the_process_group(mechanism, tmp_path,
                                                     monkeypatch):
    fake_proc(tmp_path, monkeypatch,
              "22 1 0:21 / /proc rw - proc proc rw\n", "0::/\n")
    tree = cgroup.detect(str(tmp_path / "w.pid"), mechanisms=(mechanism,))
    assert (tree.mechanism, tree.base, tree.memory) == (
        "process group", None, None)
    assert tree.why == "no cgroup hierarchy mounted"
    assert tree.members("x") == [] and tree.prepare("x", 1) == ([], False)
    assert tree.kill("x") == 0 and tree.remove("x")
    line = status.tree_line(tree.describe())
    assert line.startswith("process trees: process group (no writable "
                           "cgroup: a descendant that calls setsid survives "
                           "a stop; memory_max not enforced)")


def test_a_hierarchy_is_found_under_the_workers_own_cgroup(tmp_path,
                                                            monkeypatch):
    """A cgroup2 mount (a folder here) and the worker's own cgroup in it:
    diprocd/<pid file name>.<crc> below that; nothing made without
    create."""
    mount = tmp_path / "unified"
    (mount / "system.slice" / "dpd.service").mkdir(parents=True)
    fake_proc(tmp_path, monkeypatch,
              "30 23 0:27 / %s rw - cgroup2 cgroup2 rw\n" % mount,
              "0::/system.slice/dpd.service\n")
    pid_file = str(tmp_path / "run" / "dpd-workerd.pid")
    tree = cgroup.detect(pid_file, create=False)
    name = cgroup.worker_folder_name(pid_file)
    assert name.startswith("dpd-workerd.") and len(name) == 12 + 8
    assert tree.mechanism == "cgroup v2"
    assert tree.base == str(mount / "system.slice" / "dpd.service" /
                            "diprocd" / name)
    assert not os.path.exists(str(mount / "system.slice" / "dpd.service" /
                                  "diprocd"))
    assert cgroup.worker_folder_name(pid_file + "x") != name


def test_check_warns_where_memory_max_cannot_be_enforced(tmp_path,
                                                         monkeypatch):
    fake_proc(tmp_path, monkeypatch,
              "22 1 0:21 / /proc rw - proc proc rw\n", "0::/\n")
    path = tmp_path / "w.json"
    path.write_text(json.dumps({
        "pid_file": str(tmp_path / "w.pid"),
        "procs": [{"name": "capped", "run": "/bin/sleep", "logs": None,
                   "memory_max": 1 << 30},
                  {"name": "free", "run": "/bin/sleep"}]}))
    os.chmod(str(path), 0o644)
    report = preflight.check(config.load_worker_config, str(path))
    assert report.ok
    assert report.warnings == [
        '%s: process "capped": field "memory_max": not enforced on this '
        'machine: no cgroup hierarchy mounted' % path]


@pytest.mark.parametrize("create", [False, True])
def test_memory_is_not_enabled_below_a_cgroup_with_processes(
        tmp_path, monkeypatch, create):
    """A systemd service's cgroup holding the worker (the memory controller
    given to it, as Delegate=yes would): memory.max cannot be had below it
    (the kernel's "no internal processes" rule), which detection says
    without writing, and ``--check`` (no ``create``) too."""
    mount = tmp_path / "cg"
    service = mount / "system.slice" / "dpd.service"
    pid_file = str(tmp_path / "run" / "dpd-workerd.pid")
    base = service / "diprocd" / cgroup.worker_folder_name(pid_file)
    base.mkdir(parents=True)
    for folder in (mount, mount / "system.slice", service):
        (folder / "cgroup.controllers").write_text("memory pids\n")
        (folder / "cgroup.subtree_control").write_text(
            "" if folder == service else "memory pids\n")
        (folder / "cgroup.procs").write_text("1\n")
    (service / "cgroup.procs").write_text("%d\n" % os.getpid())
    (base / "cgroup.kill").write_text("")
    fake_proc(tmp_path, monkeypatch,
              "30 23 0:27 / %s rw - cgroup2 cgroup2 rw\n" % mount,
              "0::/system.slice/dpd.service\n")
    tree = cgroup.detect(pid_file, create=create, mechanisms=("cgroup v2",))
    assert (tree.mechanism, tree.base, tree.memory) == (
        "cgroup v2", str(base), None)
    assert tree.why == ("cannot enable the memory controller below %s: it "
                        "holds processes of its own (as a systemd service's "
                        "cgroup holds the worker)" % service)
    assert (service / "cgroup.subtree_control").read_text() == ""
