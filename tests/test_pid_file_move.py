"""A daemon whose CONFIG gets another ``pid_file`` while it runs: the lock
moves there at once, and the worker's status file and journal (the master's
nodes file) with it, so the client (which finds the status from CONFIG),
the init scripts and the next worker all find them. Regression: the worker
kept the old status path while the client followed CONFIG, so the master's
view froze (after a kill -9 it still showed the dead pid, 1 start)."""

import os
import signal

from diprocd.kernel import is_alive
from helpers import Master, Node, read_json, run_command, wait_for, write_json


def move_pid_file(conf, new_pid_file):
    """Edit a CONFIG as an operator would: pid_file only. Same folder: the
    processes' default pid files (beside the worker's) stay the same, so
    nothing restarts (another folder would change them all)."""
    doc = read_json(conf)
    doc["pid_file"] = new_pid_file
    write_json(conf, doc)


def master_view(master, node, name):
    try:
        return master.view()["nodes"][node]["status"]["procs"][name]
    except (TypeError, KeyError):
        return {}


def test_the_master_follows_a_worker_whose_pid_file_moved(tmp_path, marker):
    node = Node(tmp_path / "node1", marker)
    master = Master(tmp_path, marker, heartbeat=1,
                    nodes={"node1": [node.proc("s", "/bin/sleep", "7301")]})
    master.start()
    node.join(master, status_interval=0.3)
    try:
        view = lambda: master_view(master, "node1", "s")  # noqa: E731
        first = wait_for(lambda: view().get("state") == "running" and view(),
                         timeout=15, what=lambda: "s running at the master: "
                         "%s" % view())
        assert first["starts"] == 1
        moved = os.path.join(os.path.dirname(node.pid_file), "moved.pid")
        move_pid_file(node.config_path, moved)
        wait_for(lambda: os.path.exists(moved[:-4] + ".status.json"),
                 what="the worker's status beside its new pid file")
        os.kill(first["pid"], signal.SIGKILL)
        second = wait_for(lambda: view().get("starts") == 2
                          and view().get("state") == "running" and view(),
                          timeout=15, what=lambda: "the master to see the "
                          "restart: %s" % view())
        assert second["pid"] != first["pid"] and is_alive(second["pid"])
    finally:
        node.close()
        master.stop()


def test_a_moved_pid_file_takes_the_status_and_adoption_along(tmp_path,
                                                              marker):
    node = Node(tmp_path, marker)
    node.write([node.proc("s", "/bin/sleep", "7302")])
    node.start()
    pid = node.wait_running("s")
    old_status, old_journal = node.status_path, node.pid_file[:-4] + ".journal"
    moved = os.path.join(os.path.dirname(node.pid_file), "moved.pid")
    move_pid_file(node.config_path, moved)
    node.pid_file, node.status_path = moved, moved[:-4] + ".status.json"
    wait_for(lambda: os.path.exists(node.status_path)
             and not os.path.exists(old_status), what="the status moved")
    assert int(open(moved).read()) == node.daemon.pid
    assert not os.path.exists(old_journal)
    result = run_command("dpd-workerd", ["--status", node.config_path])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running, pid %d" % node.daemon.pid in result.stdout
    # The next worker, killed and started again as cron would, finds the
    # process at the new place: adopted, not started twice.
    node.stop(signal.SIGKILL)
    node.start()
    assert node.wait_state("s", "running", adopted=True)["pid"] == pid
    assert node.instances("7302") == [pid]
    node.stop()


def test_master_and_client_move_their_pid_file_on_reload(tmp_path, marker):
    """The same rule for the other two daemons; the master's nodes file
    moves with its pid file."""
    master = Master(tmp_path, marker, heartbeat=1, nodes={"node1": []})
    master.start()
    node = Node(tmp_path / "node1", marker)
    node.write([])
    node.write_client(master.stats, master.updates, status_interval=0.3)
    node.start_client()
    try:
        nodes_file = master.pid_file[:-4] + ".nodes.json"
        wait_for(lambda: os.path.exists(nodes_file), what="the nodes file")
        for conf, daemon, signum in ((master.config_path, master.daemon, None),
                                     (node.client_config_path, node.client,
                                      signal.SIGHUP)):
            old = read_json(conf)["pid_file"]
            new = old[:-4] + "-moved.pid"
            move_pid_file(conf, new)
            if signum:  # the client re-reads its file on SIGHUP
                daemon.send_signal(signum)
            wait_for(lambda: os.path.exists(new) and not os.path.exists(old),
                     what="%s moved to %s" % (old, new))
            assert int(open(new).read()) == daemon.pid
        wait_for(lambda: os.path.exists(master.pid_file[:-4]
                                        + "-moved.nodes.json")
                 and not os.path.exists(nodes_file),
                 what="the nodes file moved with the master's pid file")
        # Its default control socket follows too: dpdctl finds it from the
        # file, as it reads it now.
        result = run_command("dpdctl", ["--master", master.config_path,
                                        "status", "node1"], marker)
        assert result.returncode in (0, 1) and "node1" in result.stdout, \
            result
    finally:
        node.close()
        master.stop()


def test_a_pid_file_that_cannot_move_leaves_one_worker(tmp_path, marker):
    """The new pid file cannot be made (a folder is in its place): the
    worker keeps its pid file, status and journal together at the old
    place, and a second dpd-workerd on the same CONFIG, once the new place
    could be made, still finds the first one: one worker, one process."""
    node = Node(tmp_path, marker)
    node.write([node.proc("s", "/bin/sleep", "7303")])
    node.start()
    pid = node.wait_running("s")
    blocker = tmp_path / "run" / "moved.pid"
    blocker.mkdir()
    move_pid_file(node.config_path, str(blocker))
    wait_for(lambda: "cannot move the pid file" in node.log(),
             what="the failed move logged")
    assert read_json(node.status_path)["worker_pid"] == node.daemon.pid
    assert int(open(node.pid_file).read()) == node.daemon.pid
    blocker.rmdir()
    second = run_command("dpd-workerd", [node.config_path], marker)
    assert second.returncode == 0, second
    assert "already running (pid %d)" % node.daemon.pid in second.stdout
    assert node.instances("7303") == [pid]
    node.stop()
