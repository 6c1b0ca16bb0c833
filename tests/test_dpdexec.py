"""dpd-exec (lib/dpd-exec.c, diprocd/dpdexec.py) and spawn.py's two paths:
each start below runs through dpd-exec and through the fork path, and both
must give the same process and the same errors, naming the step."""

import os
import pwd
import re
import resource
import signal
import subprocess

import pytest

from conftest import requires_root
from diprocd import cgroup, dpdexec, kernel, spawn
from diprocd.errors import SpawnError
from diprocd.ledger import JournalSlot, read_journal
from diprocd.spec import ProcessSpec
from helpers import (Node, fork_path, is_alive, proc_limits, run_command,
                     wait_for)

ME = pwd.getpwuid(os.geteuid()).pw_name
HELPER = os.environ.get("DIPROCD_EXEC")

needs_helper = pytest.mark.skipif(
    HELPER in (None, "none"), reason="DIPROCD_EXEC=none: no dpd-exec")


@pytest.fixture(params=["dpd-exec", "fork"])
def helper(request):
    """dpd-exec's path, or None for the fork path."""
    if request.param == "fork":
        return None
    if HELPER in (None, "none"):
        pytest.skip("DIPROCD_EXEC=none: no dpd-exec")
    return HELPER


@pytest.fixture
def started():
    """Start a spec, return its pid; reaps what it started at the end."""
    pids = []

    def start(spec, helper, journal=None, nofile=None, **more):
        launch = spawn.launch(spec, journal, nofile, helper=helper, **more)
        pid = launch.wait()
        pids.append(pid)
        return pid

    yield start
    for pid in pids:
        kernel.kill_quietly(pid)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the fork path's: re-parented to init


def spec(tmp_path, run="/bin/sh", args=(), **fields):
    fields.setdefault("user", ME)
    fields.setdefault("logs", str(tmp_path / "out.log"))
    return ProcessSpec(name="p", run=run, args=tuple(args), **fields)


def failure(spec, helper, journal=None, **more):
    with pytest.raises(SpawnError) as caught:
        spawn.launch(spec, journal, None, helper=helper, **more).wait()
    return str(caught.value)


# --- the process a start makes -------------------------------------------------

def test_the_process_has_its_session_fds_signals_env_and_limits(
        tmp_path, helper, started):
    journal_path = tmp_path / "journal"
    journal_fd = os.open(str(journal_path), os.O_WRONLY | os.O_CREAT
                         | os.O_APPEND, 0o600)
    nofile = (512, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    # A descriptor the worker let be inherited (a library's, say).
    opened = os.open("/dev/null", os.O_RDONLY)
    leaked = os.dup2(opened, 40)  # inheritable
    os.close(opened)
    try:
        pid = started(spec(tmp_path, "/bin/sleep", ["100"], cwd="/tmp",
                           umask=0o027, env=(("ODD", "a b\nc=d"),)), helper,
                      JournalSlot(journal_fd, b'{"name": "p"}'), nofile)
    finally:
        os.close(journal_fd)
        os.close(leaked)
    stat = kernel.proc_stat(pid)
    # A session of its own (the fork path's leader is its intermediate
    # child), a process group it leads.
    assert os.getsid(pid) != os.getsid(0) and stat.pgrp == pid
    # (Right after the exec, the dynamic loader may hold the C library
    # open as fd 3 for a moment.)
    wait_for(lambda: sorted(os.listdir("/proc/%d/fd" % pid))
             == ["0", "1", "2"], timeout=5, what="only fds 0-2 open")
    assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
    assert os.readlink("/proc/%d/fd/1" % pid) == str(tmp_path / "out.log")
    assert os.readlink("/proc/%d/cwd" % pid) == "/tmp"
    status = dict(line.split(":", 1) for line in
                  open("/proc/%d/status" % pid).read().splitlines())
    # Python ignores SIGPIPE and SIGXFSZ, posix_spawn glibc's two hidden
    # signals (32, 33): none carries.
    assert int(status["SigIgn"], 16) == 0 and int(status["SigBlk"], 16) == 0
    assert status["Umask"].strip() == "0027"
    limits = [line for line in open("/proc/%d/limits" % pid)
              if line.startswith("Max open files")]
    assert limits[0].split()[3] == "512"
    environ = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
    assert b"ODD=a b\nc=d" in environ and b"USER=" + ME.encode() in environ
    assert not any(entry.startswith(b"DPD_TEST_MARKER=") for entry in environ)
    # The journal line names it by pid and kernel start time.
    entries = read_journal(str(journal_path))
    assert [(name, entry["pid"], entry["ticks"]) for name, entry in entries] \
        == [("p", pid, kernel.start_ticks(pid))]


def test_limits_soft_and_hard_the_specs_nofile_winning(tmp_path, helper,
                                                       started):
    """The worker's nofile (1024 here) first, then the spec's limits: its
    nofile wins."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    pid = started(spec(tmp_path, "/bin/sleep", ["100"], limits=(
        ("nofile", (256, 512)), ("core", (0, 0)),
        ("stack", (8 << 20, resource.RLIM_INFINITY)),
        ("nproc", (50000, 60000)))), helper, nofile=(1024, hard))
    limits = proc_limits(pid)
    assert limits["Max open files"] == ("256", "512")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max stack size"] == (str(8 << 20), "unlimited")
    assert limits["Max processes"] == ("50000", "60000")


def test_a_refused_limit_is_the_same_error_on_both_paths(tmp_path, helper):
    with open("/proc/sys/fs/nr_open") as handle:
        above = int(handle.read()) + 1
    assert failure(spec(tmp_path, "/bin/true", limits=(
        ("core", (0, 0)), ("nofile", (above, above)))), helper) == \
        "limits: nofile [%d, %d]: not allowed to raise maximum limit" % (
            above, above)


def test_arguments_pass_byte_for_byte(tmp_path, helper, started):
    args = ["-c", 'printf "[%s]" "$@"', "sh", "", "two words", "new\nline",
            "é", "-"]
    pid = started(spec(tmp_path, args=args), helper)
    wait_for(lambda: not kernel.is_alive(pid), what="sh to end")
    assert (tmp_path / "out.log").read_text() == \
        "[][two words][new\nline][é][-]"


@requires_root
def test_user_groups_and_chroot(tmp_path, helper, started):
    jail = tmp_path / "jail"
    (jail / "bin").mkdir(parents=True)
    (jail / "work").mkdir()
    binary = "/bin/sleep"  # with its libraries
    libs = subprocess.run(["ldd", binary], capture_output=True,
                          text=True).stdout.split()
    for path in [binary] + [p for p in libs if p.startswith("/")]:
        target = jail / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(os.path.realpath(path), "rb").read())
        target.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    pid = started(spec(tmp_path, binary, ["100"], chroot=str(jail),
                       cwd="work", user="nobody", logs="/dev/null"), helper)
    assert os.readlink("/proc/%d/root" % pid) == str(jail)
    assert os.readlink("/proc/%d/cwd" % pid) == str(jail / "work")
    status = dict(line.split(":", 1) for line in
                  open("/proc/%d/status" % pid).read().splitlines())
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert sorted(map(int, status["Groups"].split())) == sorted(
        set(os.getgrouplist("nobody", nobody.pw_gid)))


# --- failures, each naming its step ---------------------------------------------

PROBE = cgroup.detect("/run/dpd-test-probe.pid", create=False)


@pytest.fixture
def tree(tmp_path):
    """A worker's cgroup.Tree of this machine, its folders removed after
    (conftest's no_cgroup_left removes the worker's own)."""
    if os.geteuid() != 0 or not PROBE.enabled:
        pytest.skip("not root, or no writable cgroup hierarchy here: %s"
                    % PROBE.why)
    tree = cgroup.detect(str(tmp_path / "worker.pid"))
    yield tree
    for name in tree.names():
        tree.remove(name)


def cgroup_paths(pid):
    """The folders (paths below each hierarchy's root) of /proc/PID/cgroup."""
    with open("/proc/%d/cgroup" % pid) as handle:
        return [line.split(":", 2)[2] for line in handle.read().splitlines()]


@pytest.mark.parametrize("born", [True, False], ids=["born", "moved"])
def test_the_process_is_in_its_cgroups(tmp_path, helper, started, tree,
                                        born):
    """Born in its v2 folder (dpd-exec's clone3, the intermediate's on the
    fork path), or moved in by cgroup.procs; the other folders (v1 memory)
    joined: /proc/PID/cgroup names each, and only it is inside."""
    folders, fresh = tree.prepare("p", 64 << 20 if tree.memory else None)
    pid = started(spec(tmp_path, "/bin/sleep", ["100"]), helper,
                  cgroups=folders, born_inside=born and fresh
                  and tree.born_inside)
    paths = cgroup_paths(pid)
    for folder in folders:
        assert any(len(path) > 1 and folder.endswith(path)
                   for path in paths), (folder, paths)
    assert tree.members("p") == [pid]
    # It leads its process group, whichever way it was born.
    assert kernel.proc_stat(pid).pgrp == pid
    if helper is not None:  # and its session: setsid after the clone3
        assert os.getsid(pid) == pid


def test_a_folder_is_used_again_until_a_kill_hits_it(tmp_path, helper,
                                                    started, tree):
    """After a main process that died alone, the next start uses its folder
    as it is (same inode, its memory limit kept, a child born in it); after
    a cgroup.kill, and after a folder removed behind the tree's back, the
    folder is made anew."""
    limit = 64 << 20 if tree.memory else None
    folders, fresh = tree.prepare("p", limit)
    first = os.stat(folders[0]).st_ino
    pid = started(spec(tmp_path, "/bin/sleep", ["100"]), helper,
                  cgroups=folders, born_inside=fresh and tree.born_inside)
    kernel.kill_quietly(pid)
    wait_for(lambda: tree.members("p") == [], what="the folder to empty")
    again, fresh = tree.prepare("p", limit)
    assert again == folders and fresh and os.stat(folders[0]).st_ino == first
    if tree.memory == "cgroup v2":
        with open(os.path.join(folders[0], "memory.max")) as handle:
            assert handle.read().strip() == str(limit)
    pid = started(spec(tmp_path, "/bin/sleep", ["100"]), helper,
                  cgroups=folders, born_inside=fresh and tree.born_inside)
    assert tree.members("p") == [pid]
    assert tree.kill("p") == 1
    wait_for(lambda: tree.members("p") == [], what="the folder to empty")
    tree.prepare("p", limit)
    second = os.stat(folders[0]).st_ino
    assert second != first
    os.rmdir(folders[0])
    tree.prepare("p", limit)
    assert os.path.isdir(folders[0])


def test_a_failure_after_the_birth_in_a_cgroup(tmp_path, helper, tree):
    """The program born in its folder fails at a later step: the same
    error, and the worker is told its pid (the intermediate's P line
    first), dead by then."""
    folders, fresh = tree.prepare("p", None)
    if not (fresh and tree.born_inside):
        pytest.skip("no cgroup v2 here: nothing is born in a folder")
    with pytest.raises(SpawnError) as caught:
        spawn.launch(spec(tmp_path, cwd="/no/such/dir"), None, None,
                     folders, True, helper=helper).wait()
    assert str(caught.value) == "chdir /no/such/dir: No such file or directory"
    pid = caught.value.pid
    assert pid
    wait_for(lambda: not kernel.is_alive(pid), what="the failed child to end")
    assert tree.members("p") == []


def test_a_missing_cgroup_folder_is_a_start_error(tmp_path, helper, tree):
    folders, _ = tree.prepare("p", None)
    os.rmdir(folders[0])
    assert failure(spec(tmp_path, "/bin/true"), helper,
                   cgroups=[folders[0]]) == \
        "cgroup: %s/cgroup.procs: No such file or directory" % folders[0]


def test_a_missing_program(tmp_path, helper):
    assert failure(spec(tmp_path, "/no/such/program"), helper) == \
        "exec /no/such/program: No such file or directory"


def test_a_bad_cwd(tmp_path, helper):
    assert failure(spec(tmp_path, cwd="/no/such/dir"), helper) == \
        "chdir /no/such/dir: No such file or directory"
    (tmp_path / "file").write_text("")
    assert failure(spec(tmp_path, cwd=str(tmp_path / "file")), helper) == \
        "chdir %s: Not a directory" % (tmp_path / "file")


@requires_root
def test_an_unknown_chroot(tmp_path, helper):
    assert failure(spec(tmp_path, chroot="/no/such/jail"), helper) == \
        "chroot /no/such/jail: No such file or directory"


def test_an_unwritable_journal(tmp_path, helper):
    """A journal the process cannot append its line to: it never runs
    (no program runs unrecorded)."""
    path = tmp_path / "journal"
    path.write_bytes(b"")
    read_only = os.open(str(path), os.O_RDONLY)
    marker = tmp_path / "ran"
    try:
        text = failure(spec(tmp_path, args=["-c", "touch %s" % marker]),
                       helper, JournalSlot(read_only, b'{"name": "p"}'))
    finally:
        os.close(read_only)
    assert text == "journal: Bad file descriptor"
    assert not marker.exists() and path.read_bytes() == b""


def test_a_log_in_a_missing_folder(tmp_path, helper):
    assert failure(spec(tmp_path, logs=str(tmp_path / "no" / "x.log")),
                   helper) == "logs: folder %s does not exist" % (
                       tmp_path / "no")


@needs_helper
def test_a_plan_of_another_version_is_refused(tmp_path):
    """dpd-exec run by hand (or by a worker of another version): it says
    what is wrong on the report pipe and exits 127."""
    read_end, write_end = os.pipe()
    plan = os.memfd_create("plan")
    os.write(plan, b"dpd-exec plan 0\0")
    os.lseek(plan, 0, os.SEEK_SET)
    pid = os.posix_spawn(HELPER, [HELPER], {}, file_actions=[
        (os.POSIX_SPAWN_DUP2, write_end, 3), (os.POSIX_SPAWN_DUP2, plan, 5)])
    os.close(write_end)
    report = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.close(plan)
    assert os.waitpid(pid, 0)[1] == 127 << 8
    assert report.startswith("Eplan: not a dpd-exec plan 2"), report


@needs_helper
def test_a_helper_that_cannot_run_is_a_start_error(tmp_path):
    broken = tmp_path / "dpd-exec"
    broken.write_text("not a program")
    broken.chmod(0o755)
    text = failure(spec(tmp_path, "/bin/true"), str(broken))
    assert text == "dpd-exec %s: Exec format error" % broken


# --- which spawner ----------------------------------------------------------------

def test_find_looks_at_the_variable_then_the_prefix(tmp_path):
    assert dpdexec.find({"DIPROCD_EXEC": "none"}).path is None
    missing = dpdexec.find({"DIPROCD_EXEC": str(tmp_path / "x")})
    assert missing.path is None and "not an executable file" in missing.why
    installed = tmp_path / "lib" / "diprocd" / "dpd-exec"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    installed.chmod(0o755)
    found = dpdexec.find({}, prefix=str(tmp_path))
    assert found.path == str(installed)
    assert found.describe() == "dpd-exec %s" % installed
    given = dpdexec.find({"DIPROCD_EXEC": str(installed)}, prefix="/nowhere")
    assert given.path == str(installed)


def test_the_worker_says_which_spawner_it_uses(tmp_path, marker):
    node = Node(tmp_path, marker)
    try:
        node.write([node.proc("p", "/bin/sleep", "1000")])
        node.start()
        node.wait_running("p")
        spawner = node.status_doc()["spawner"]
        if fork_path():
            assert spawner == "fork (DIPROCD_EXEC=none)"
        else:
            assert spawner == "dpd-exec " + HELPER
        assert "starting processes with " + spawner in node.log()
        shown = run_command("dpd-workerd", ["--status", node.config_path])
        assert "starting processes with " + spawner in shown.stdout
    finally:
        node.close()


# --- the server ----------------------------------------------------------------

def _parent(pid):
    with open("/proc/%d/stat" % pid) as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _server_pids(node):
    return [int(pid) for pid in re.findall(r"dpd-exec server started, pid (\d+)",
                                           node.log())]


@needs_helper
def test_the_server_starts_processes_as_the_workers_children(tmp_path, marker):
    """With dpd-exec (and not $DIPROCD_EXEC_SERVER=none), the worker starts
    one ``dpd-exec --serve`` at its first start; each process is the
    worker's own child, leads its own session, and runs with its own
    environment. Killed, the server is replaced at the next start (a
    restart here); the worker's exit ends the server."""
    if os.environ.get(dpdexec.SERVER_ENV_VAR) == "none":
        pytest.skip("%s=none" % dpdexec.SERVER_ENV_VAR)
    node = Node(tmp_path, marker)
    servers = []
    try:
        node.write([node.proc("p", "/bin/sleep", "1000", env={"X": "1"})])
        node.start()
        pid = node.wait_running("p")
        servers = wait_for(lambda: _server_pids(node), what="the server")
        server = servers[0]
        with open("/proc/%d/cmdline" % server, "rb") as handle:
            assert handle.read() == b"dpd-exec\0--serve\0"
        assert _parent(pid) == node.daemon.pid
        assert os.getsid(pid) == pid
        with open("/proc/%d/environ" % pid, "rb") as handle:
            assert b"X=1" in handle.read().split(b"\0")
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: not is_alive(server), what="the server to end")
        os.kill(pid, signal.SIGKILL)
        again = wait_for(lambda: node.running().get("p") not in (None, pid)
                         and node.running()["p"], what="p restarted")
        assert _parent(again) == node.daemon.pid
        servers = _server_pids(node)
        assert len(servers) == 2 and is_alive(servers[1]), servers
        assert node.status()["p"]["starts"] == 2
    finally:
        node.close()
    wait_for(lambda: not any(is_alive(pid) for pid in servers),
             what="the server to end with the worker")
