"""The README's "From a checkout" walkthrough, run as written: its shell
commands are taken from README.md (editing the README changes what runs)
and fed, one complete command at a time, to one bash in the checkout, so
that its variables ($SRC, $DIR, $WORKER...) carry from block to block as
in a terminal. Three things differ, each said here: ``make venv-run`` is
not run (``make test`` made the venv), ``DIR=`` names the test's own
folder, and ``$SRC/.venv/bin/`` is the venv running the tests when the
checkout has none (a git worktree). The examples' loopback ports are used
as written.

After each command whose outcome the README tells, the test checks it on
its own, with deadlines: the worker runs the example's processes, the
client makes the node node1 of the master's file, ``dpdctl status`` shows
it and exits 1 (node2 "never seen"), the dashboard answers where the
README says, the edit restarts the sleep with its
new args, the invalid edit is logged as an ERROR by the master and changes
nothing, the stop leaves nothing running. Every process the walkthrough
starts carries the test's marker (the daemons) or is recorded from the
worker's status (the supervised ones, which get a clean environment) and
is ended at the end by its pid."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid

import pytest

from diprocd.kernel import start_ticks
from diprocd.ledger import (journal_path, read_document, read_journal,
                            status_path)
from helpers import (ROOT, kill_marked, marked_env, marked_pids, process_argv,
                     wait_for)

README = os.path.join(ROOT, "README.md")


def walkthrough():
    """The shell lines of the README's "From a checkout" section, in
    order (its fenced blocks; a backslash-newline joins two lines)."""
    with open(README) as handle:
        text = handle.read()
    section = text.split("\n## From a checkout\n", 1)[1].split(
        "<!-- END checkout -->", 1)[0]
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", section, re.S | re.M)
    assert blocks, "no shell blocks in From a checkout"
    return [line for block in blocks
            for line in block.replace("\\\n", " ").splitlines()
            if line.strip()]


def commands(lines):
    """Complete shell commands from ``lines`` (a for loop's lines make one),
    as ``bash -n`` sees them."""
    found, pending = [], []
    for line in lines:
        pending.append(line)
        text = "\n".join(pending)
        if subprocess.run(["bash", "-n", "-c", text], capture_output=True
                          ).returncode == 0:
            found.append(text)
            pending = []
    assert not pending, pending
    return found


class Shell:
    """One bash reading commands on its stdin, as a terminal's would."""

    def __init__(self, env, cwd):
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-s"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=cwd, start_new_session=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def run(self, command, timeout=60):
        """(exit code, output) of ``command``."""
        token = "__done_%s__" % uuid.uuid4().hex
        self.proc.stdin.write("%s\nprintf '\\n%s %%s\\n' \"$?\"\n"
                              % (command, token))
        self.proc.stdin.flush()
        output = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("%r did not end within %s s; output:\n%s"
                                     % (command, timeout, "\n".join(output)))
            if line.startswith(token):
                if output and output[-1] == "":
                    output.pop()
                return int(line.split()[1]), "\n".join(output)
            output.append(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def venv_bin():
    """The venv's bin the walkthrough names, or this Python's."""
    checkout = os.path.join(ROOT, ".venv", "bin")
    if os.path.exists(os.path.join(checkout, "dpd-workerd")):
        return None
    here = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(here, "dpd-workerd")):
        pytest.skip("no dpd-workerd in %s nor in %s (make venv-run)"
                    % (checkout, here))
    return here


class Walk:
    """What the walkthrough started, seen from outside."""

    def __init__(self, folder):
        self.folder = str(folder)
        pid_file = os.path.join(self.folder, "dpd-workerd.pid")
        self.status_file = status_path(pid_file)
        self.journal = journal_path(pid_file)
        self.supervised = {}  # pid: start ticks, every one the worker showed

    def procs(self):
        """{name: view} of the worker's status file; records the pids it
        and the journal show."""
        document = read_document(self.status_file) or {"procs": {}}
        for view in list(document["procs"].values()) + [
                entry for _, entry in read_journal(self.journal)]:
            pid = view.get("pid")
            if pid and pid not in self.supervised:
                ticks = start_ticks(pid)
                if ticks is not None:
                    self.supervised[pid] = ticks
        return document["procs"]

    def running(self, names):
        """{name: pid} when exactly ``names`` run (others may have exited)."""
        procs = self.procs()
        live = {name: view["pid"] for name, view in procs.items()
                if view.get("state") == "running"}
        return live if set(live) == set(names) else None

    def log(self, name):
        try:
            with open(os.path.join(self.folder, name)) as handle:
                return handle.read()
        except OSError:
            return ""

    def file(self, name):
        with open(os.path.join(self.folder, name)) as handle:
            return handle.read()

    def end_supervised(self):
        """Kill the processes the worker started (call it once the worker
        is gone: it would start them again)."""
        self.procs()
        for pid, ticks in self.supervised.items():
            if start_ticks(pid) == ticks:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_for(lambda: not any(start_ticks(p) == t for p, t in
                                 self.supervised.items()), timeout=10)


@pytest.mark.timeout(180)
def test_from_a_checkout_as_written(marker, tmp_path):
    lines = walkthrough()
    assert lines[0].startswith("make venv-run"), lines[0]
    dirs = [i for i, line in enumerate(lines) if line.startswith("DIR=")]
    assert len(dirs) == 1, "one DIR= line in the walkthrough: %s" % dirs
    lines = lines[1:]
    lines[dirs[0] - 1] = "DIR=%s" % tmp_path
    here = venv_bin()
    if here is not None:
        lines = [line.replace("$SRC/.venv/bin/", here + "/") for line in lines]
    walk = Walk(tmp_path)
    sleep_pid = {}

    def after_check(code, output):
        assert code == 0 and output.endswith("worker.json: OK"), output

    def after_worker(code, output):
        wait_for(lambda: walk.running({"sleep.worker.1"}), timeout=20,
                 what=lambda: walk.log("worker.log"))
        assert walk.procs()["echo.worker.1"]["state"] == "exited"

    def after_status(code, output):
        assert code == 0 and re.search(r"sleep\.worker\.1\s+running", output), \
            output

    def after_client(code, output):
        live = wait_for(lambda: walk.running({"sleep.node1.1"}), timeout=30,
                        what=lambda: walk.log("worker.log")
                        + walk.log("client.log") + walk.log("master.log"))
        assert '"sleep.node1.1"' in walk.file("worker.json")
        assert process_argv(live["sleep.node1.1"]) == ["/bin/sleep", "3600"]
        sleep_pid["before"] = live["sleep.node1.1"]

    def after_dpdctl(code, output):
        # "dpdctl status exits 1 here: the example's node2 has no client".
        assert code == 1, output
        assert re.search(r"node1\s+up\s+sleep\.node1\.1\s+running", output), \
            output
        assert re.search(r"node2\s+\*?never seen", output), output
        # "The master's dashboard is on <http://127.0.0.1:9556/>."
        with open(README) as handle:
            (url,) = re.findall(
                r"dashboard is on <(http://127\.0\.0\.1:\d+/)>", handle.read())
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()

    def after_edit(code, output):
        assert code == 0, output

        def restarted():
            live = walk.running({"sleep.node1.1"})
            return live and live["sleep.node1.1"] != sleep_pid["before"] \
                and live
        live = wait_for(restarted, timeout=20, what=lambda: walk.procs())
        pid = live["sleep.node1.1"]
        assert process_argv(pid) == ["/bin/sleep", "7200"]
        sleep_pid["after"] = pid

    def after_status_again(code, output):
        assert code == 0 and re.search(
            r"sleep\.node1\.1\s+running\s+%d\s" % sleep_pid["after"],
            output), output

    def after_invalid_edit(code, output):
        assert code == 0, output
        wait_for(lambda: "ERROR" in walk.log("master.log"), timeout=20,
                 what=lambda: walk.log("master.log"))
        assert '"7200"' in walk.file("worker.json")  # the last good list

    def after_grep(code, output):
        assert code == 0 and "ERROR" in output and "invalid" in output, output
        assert "args" in output, output  # the field named
        # Nothing disturbed: the same sleep, the same daemons.
        assert walk.running({"sleep.node1.1"}) == {
            "sleep.node1.1": sleep_pid["after"]}

    def after_kill(code, output):
        assert code == 0, output

    def after_empty_list(code, output):
        wait_for(lambda: walk.running(()) == {}, timeout=20,
                 what=lambda: walk.procs())

    def after_kill_worker(code, output):
        assert code == 0, output
        # (The shell itself is left.)
        wait_for(lambda: marked_pids(marker) == [shell.proc.pid], timeout=20,
                 what=lambda: "the walkthrough's daemons to exit: %s"
                 % marked_pids(marker))

    checks = [
        (r"dpd-workerd --check worker\.json", after_check),
        (r"dpd-workerd -f .*worker\.json .*&", after_worker),
        (r"dpd-workerd --status worker\.json", after_status),
        (r"dpd-clientd -f .*client\.json .*&", after_client),
        (r"dpdctl --master master\.json status", after_dpdctl),
        (r'sed -i .*"3600"/"7200"', after_edit),
        (r"dpd-workerd --status worker\.json", after_status_again),
        (r'sed -i .*"7200"/7200', after_invalid_edit),
        (r"grep ERROR master\.log", after_grep),
        (r"kill \$CLIENT \$MASTER", after_kill),
        (r"emptyworker\.json .*worker\.json", after_empty_list),
        (r"kill \$WORKER", after_kill_worker),
    ]
    shell = Shell(marked_env(marker), cwd=ROOT)
    try:
        # Each check after the first command, from here on, that it fits.
        pending = list(checks)
        for command in commands(lines):
            code, output = shell.run(command)
            if pending and re.search(pending[0][0], command):
                pending.pop(0)[1](code, output)
        assert not pending, "the walkthrough changed: not seen %s" % [
            pattern for pattern, _ in pending]
        assert walk.supervised and not any(
            start_ticks(p) == t for p, t in walk.supervised.items())
    finally:
        shell.close()
        kill_marked(marker)  # the daemons first, the worker restarts
        walk.end_supervised()
