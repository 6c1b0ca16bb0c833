"""A worker whose CONFIG gets another ``pid_file`` while it runs: its pid
file, status file and journal move there at once, so the client (which
finds the status from CONFIG), the init scripts and the next worker all find
them. Regression: the worker kept the old status path while the client
followed CONFIG, so the master's view froze."""

import os
import signal

from diprocd.kernel import is_alive
from helpers import (MARKER_VAR, free_port, marked_pids, read_json,
                     run_command, start_daemon, wait_for, write_json)


def sleeper(marker, seconds):
    return {"name": "s", "run": "/bin/sleep", "args": [seconds],
            "env": {MARKER_VAR: marker}}


def worker_doc(tmp_path, pid_name, procs):
    return {"pid_file": str(tmp_path / pid_name),
            "log_file": str(tmp_path / "worker.log"), "procs": procs}


def move_pid_file(conf, new_pid_file):
    """Edit the worker's CONFIG as an operator would: pid_file only."""
    doc = read_json(conf)
    doc["pid_file"] = new_pid_file
    write_json(conf, doc)


def stop(*daemons):
    for daemon in daemons:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
    for daemon in daemons:
        assert daemon.wait(timeout=10) == 0


def master_view(nodes_file):
    try:
        return read_json(nodes_file)["nodes"]["node1"]["status"]["procs"]["s"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def test_the_master_follows_a_worker_whose_pid_file_moved(tmp_path, marker):
    stats = "tcp://127.0.0.1:%d" % free_port()
    updates = "tcp://127.0.0.1:%d" % free_port()
    master_conf = str(tmp_path / "master.json")
    write_json(master_conf, {
        "pid_file": str(tmp_path / "master.pid"), "master_stats": stats,
        "master_updates": updates, "heartbeat": 1,
        "nodes": {"node1": [sleeper(marker, "7301")]}})
    conf = str(tmp_path / "worker.json")
    write_json(conf, worker_doc(tmp_path, "w.pid", []))
    client_conf = str(tmp_path / "client.json")
    write_json(client_conf, {
        "pid_file": str(tmp_path / "client.pid"), "master_stats": stats,
        "master_updates": updates, "node_name": "node1", "conf_file": conf,
        "status_interval": 0.3})
    daemons = [start_daemon(name, marker, ["-f", "-v", path],
                            str(tmp_path / (name + ".out")))
               for name, path in (("dpd-masterd", master_conf),
                                  ("dpd-clientd", client_conf),
                                  ("dpd-workerd", conf))]
    nodes_file = str(tmp_path / "master.nodes.json")
    try:
        first = wait_for(lambda: master_view(nodes_file).get("state") ==
                         "running" and master_view(nodes_file), timeout=15,
                         what=lambda: "the master to see s running: %s"
                         % master_view(nodes_file))
        assert first["starts"] == 1
        # Same folder: the processes' default pid files stay the same, so
        # nothing restarts (another folder would change them all).
        move_pid_file(conf, str(tmp_path / "w2.pid"))
        wait_for(lambda: os.path.exists(tmp_path / "w2.status.json"),
                 what="the worker's status beside its new pid file")
        os.kill(first["pid"], signal.SIGKILL)
        second = wait_for(
            lambda: master_view(nodes_file).get("starts") == 2
            and master_view(nodes_file).get("state") == "running"
            and master_view(nodes_file), timeout=15,
            what=lambda: "the master to see the restart: %s"
            % master_view(nodes_file))
        assert second["pid"] != first["pid"] and is_alive(second["pid"])
    finally:
        stop(*daemons)


def test_a_moved_pid_file_takes_the_status_and_adoption_along(tmp_path,
                                                              marker):
    conf = str(tmp_path / "worker.json")
    write_json(conf, worker_doc(tmp_path, "w.pid", [sleeper(marker, "7302")]))
    out = str(tmp_path / "worker.out")
    worker = start_daemon("dpd-workerd", marker, ["-f", "-v", conf], out)
    try:
        status = str(tmp_path / "w.status.json")
        pid = wait_for(lambda: os.path.exists(status) and read_json(status)[
            "procs"].get("s", {}).get("pid"), what="s running")
        new_pid_file = str(tmp_path / "w2.pid")
        move_pid_file(conf, new_pid_file)
        new_status = str(tmp_path / "w2.status.json")
        wait_for(lambda: os.path.exists(new_status)
                 and not os.path.exists(tmp_path / "w.pid"),
                 what="the pid file and the status moved")
        assert int(open(new_pid_file).read()) == worker.pid
        assert not os.path.exists(status)
        assert not os.path.exists(tmp_path / "w.journal")
        result = run_command("dpd-workerd", ["--status", conf])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "running, pid %d" % worker.pid in result.stdout
        # The next worker, killed and started again as cron would, finds
        # the process at the new place: adopted, not started twice.
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        worker = start_daemon("dpd-workerd", marker, ["-f", "-v", conf], out)
        wait_for(lambda: read_json(new_status)["worker_pid"] == worker.pid
                 and read_json(new_status)["procs"]["s"].get("adopted"),
                 what=lambda: "s adopted: %s" % open(new_status).read())
        assert read_json(new_status)["procs"]["s"]["pid"] == pid
        sleepers = [p for p in marked_pids(marker)
                    if b"7302" in open("/proc/%d/cmdline" % p, "rb").read()]
        assert sleepers == [pid]
    finally:
        stop(worker)


def test_master_and_client_move_their_pid_file_on_sighup(tmp_path, marker):
    """The same rule for the other two daemons: the lock moves at once (the
    master's nodes file with it); init scripts reading CONFIG find them."""
    stats = "tcp://127.0.0.1:%d" % free_port()
    updates = "tcp://127.0.0.1:%d" % free_port()
    master_conf = str(tmp_path / "master.json")
    write_json(master_conf, {
        "pid_file": str(tmp_path / "m.pid"), "master_stats": stats,
        "master_updates": updates, "heartbeat": 1, "nodes": {"node1": []}})
    client_conf = str(tmp_path / "client.json")
    write_json(client_conf, {
        "pid_file": str(tmp_path / "c.pid"), "master_stats": stats,
        "master_updates": updates, "node_name": "node1",
        "conf_file": str(tmp_path / "worker.json"), "status_interval": 0.3})
    write_json(str(tmp_path / "worker.json"),
               worker_doc(tmp_path, "w.pid", []))
    master = start_daemon("dpd-masterd", marker, ["-f", "-v", master_conf],
                          str(tmp_path / "master.out"))
    client = start_daemon("dpd-clientd", marker, ["-f", "-v", client_conf],
                          str(tmp_path / "client.out"))
    try:
        wait_for(lambda: os.path.exists(tmp_path / "m.nodes.json"),
                 what="the master's nodes file")
        for conf, daemon, old, new in ((master_conf, master, "m", "m2"),
                                       (client_conf, client, "c", "c2")):
            move_pid_file(conf, str(tmp_path / (new + ".pid")))
            if daemon is client:
                daemon.send_signal(signal.SIGHUP)  # the client re-reads on HUP
            wait_for(lambda: os.path.exists(tmp_path / (new + ".pid"))
                     and not os.path.exists(tmp_path / (old + ".pid")),
                     what="%s moved" % old)
            assert int(open(tmp_path / (new + ".pid")).read()) == daemon.pid
        wait_for(lambda: os.path.exists(tmp_path / "m2.nodes.json")
                 and not os.path.exists(tmp_path / "m.nodes.json"),
                 what="the nodes file moved with the master's pid file")
    finally:
        stop(client, master)
