"""`make demo`: started as a newcomer would, watched until both nodes run
their processes, an invalid edit of its master file shown on its screen,
stopped with Ctrl-C (SIGINT), leaving nothing behind; with the run-time
dependencies only (nothing from requirements-dev.txt)."""

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from diprocd.fileio import atomic_write
from diprocd.kernel import is_alive
from helpers import ROOT, marked_env, marked_pids, wait_for

ROW = re.compile(r"^\s+(node\d)\s+(\S+)\s+(.+?)\s+pid (\S+)$")


class Output:
    """Collect a child's stdout lines in a thread (no blocking reads)."""

    def __init__(self, stream):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(stream,),
                                       daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self):
        return "\n".join(self.lines)

    def last_table(self):
        """{(node, process): (state, pid)} of the latest table printed."""
        table = {}
        for line in self.lines:
            if line.endswith("cluster state"):
                table = {}
            match = ROW.match(line)
            if match:
                node, name, state, pid = match.groups()
                table[(node, name)] = (state, pid)
        return table


def all_running(output):
    table = output.last_table()
    running = {key: int(pid) for key, (state, pid) in table.items()
               if state == "running"}
    nodes = {node for node, _ in running}
    if nodes == {"node1", "node2"} and len(running) == len(table) == 4:
        return running
    return None


def _name(requirement):
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower() \
        .replace("_", "-")


def dev_only_modules():
    """The top-level modules of the distributions requirements-dev.txt adds
    to requirements.txt (pytest, hypothesis, supervisor...), as installed."""
    def names(path):
        with open(os.path.join(ROOT, path)) as handle:
            return {_name(line) for line in handle
                    if line.strip() and line[0] not in "#-"}
    dev = names("requirements-dev.txt") - names("requirements.txt")
    modules = {module for module, dists in
               importlib.metadata.packages_distributions().items()
               if any(_name(dist) in dev for dist in dists)}
    assert {"pytest", "hypothesis", "supervisor"} <= modules, modules
    return modules


def without_dev_modules(folder):
    """A PYTHONPATH folder whose sitecustomize makes importing any
    development-only module fail, in every Python started with it."""
    modules = sorted(dev_only_modules())
    with open(os.path.join(folder, "sitecustomize.py"), "w") as handle:
        handle.write(textwrap.dedent("""\
            import sys
            BLOCKED = set(%r)
            class NoDevModules:
                def find_spec(self, name, path=None, target=None):
                    if name.partition(".")[0] in BLOCKED:
                        raise ImportError("%%s is in requirements-dev.txt "
                                          "only" %% name)
            sys.meta_path.insert(0, NoDevModules())
            """ % modules))
    return folder


def test_make_demo_installs_the_runtime_dependencies_only(tmp_path):
    # What `make demo` runs on a checkout without a venv yet.
    commands = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo",
         "VENV=%s" % (tmp_path / "venv")], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert any("-r requirements.txt" in line for line in installs), commands
    assert not any("requirements-dev" in line for line in installs), commands
    assert commands.rstrip().splitlines()[-1].endswith("demo/run.py"), commands


@pytest.mark.timeout(120)
def test_make_demo_runs_a_cluster_and_stops_on_ctrl_c(marker, tmp_path):
    # `make demo` as typed: make, the venv's python, demo/run.py. Its own
    # session, so the SIGINT below is the test's Ctrl-C, sent to the whole
    # foreground group as a terminal would. Every Python of it (the demo,
    # its daemons) fails to import what requirements-dev.txt brings.
    blocker = without_dev_modules(str(tmp_path))
    env = marked_env(marker)
    env["PYTHONPATH"] = blocker + os.pathsep + env["PYTHONPATH"]
    refused = subprocess.run([sys.executable, "-c", "import pytest"], env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "requirements-dev.txt" in \
        refused.stderr, refused.stderr
    demo = subprocess.Popen(
        ["make", "--no-print-directory", "-s", "demo"], cwd=ROOT,
        env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True)
    output = Output(demo.stdout)
    try:
        running = wait_for(lambda: all_running(output), timeout=60,
                           what=lambda: "both nodes to run their processes:"
                           "\n%s" % output.text())
        folder = re.search(r"diprocd demo in (\S+)", output.text()).group(1)
        assert os.path.isdir(folder)
        # The demo's daemons and the nodes' processes all carry our marker.
        started = set(marked_pids(marker))
        assert set(running.values()) <= started
        # An invalid edit of the master file, as an editor saves it: the
        # master's refusal shows on the demo's screen, with the reason.
        master_file = os.path.join(folder, "master.json")
        with open(master_file) as handle:
            master = json.load(handle)
        master["nodes"]["node1"][0]["run"] = "bin/sleep"
        before = len(output.lines)
        atomic_write(master_file, json.dumps(master, indent=4) + "\n")

        def refusal():
            shown = output.lines[before:]
            return any("ERROR" in line and "invalid master file" in line
                       for line in shown) and any(
                "sleep.node1" in line and '"run"' in line for line in shown)
        wait_for(refusal, timeout=20, what=lambda: "the invalid edit on the "
                 "demo's screen:\n%s" % "\n".join(output.lines[before:]))
        assert all_running(output) == running, output.text()
        os.killpg(demo.pid, signal.SIGINT)
        # make, interrupted too, exits by SIGINT after its child, as at a
        # terminal; the demo itself says it stopped.
        assert demo.wait(timeout=60) in (0, -signal.SIGINT), output.text()
        output.thread.join(timeout=10)
        assert "stopped." in output.text()
        wait_for(lambda: not marked_pids(marker), timeout=20,
                 what=lambda: "every process of the demo to exit: %s"
                 % marked_pids(marker))
        assert not any(is_alive(pid) for pid in running.values())
        assert not os.path.exists(folder), "temporary folder left behind"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
