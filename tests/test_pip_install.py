"""The README's "With pip" lines, as written but for the folder: a venv,
``pip install .`` of a clean copy of the checkout (its dependencies from
PyPI, or pip's cache that ``make venv`` filled), dpd-exec built into the
venv; then the four commands answer and a worker run from that venv starts
its process through that dpd-exec."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, clean_copy, marked_env, wait_for

README = os.path.join(ROOT, "README.md")


def pip_lines():
    with open(README) as handle:
        section = handle.read().split("\n### With pip\n", 1)[1]
    (block,) = re.findall(r"^```\n(.*?)^```$", section, re.S | re.M)[:1]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(600)
def test_with_pip_as_the_readme_says(tmp_path, marker):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (make venv installs gcc)")
    source = clean_copy(tmp_path / "src")
    prefix = str(tmp_path / "opt")
    lines = pip_lines()
    assert len(lines) == 3 and lines[0].startswith("python3 -m venv"), lines
    for line in lines:
        line = line.replace("/opt/diprocd", prefix)
        if line.startswith("python3 "):  # the Python running the tests
            line = sys.executable + line[len("python3"):]
        result = subprocess.run(["sh", "-ec", line], cwd=str(source),
                                capture_output=True, text=True, timeout=500)
        assert result.returncode == 0, (line, result.stdout[-2000:],
                                        result.stderr[-2000:])
    for command in ("dpd-workerd", "dpd-masterd", "dpd-clientd", "dpdctl"):
        shown = subprocess.run([os.path.join(prefix, "bin", command),
                                "--version"], capture_output=True, text=True)
        assert shown.returncode == 0 and shown.stdout.startswith(command), \
            shown
    # A worker from that venv, one process: started through its dpd-exec.
    folder = tmp_path / "node"
    folder.mkdir()
    config = folder / "worker.json"
    config.write_text('{"pid_file": "%s/w.pid", "procs": [{"name": "s", '
                      '"run": "/bin/sleep", "args": ["600"], "env": '
                      '{"DPD_TEST_MARKER": "%s"}}]}' % (folder, marker))
    env = marked_env(marker)
    env.pop("DIPROCD_EXEC", None)
    log = open(folder / "worker.log", "w")
    worker = subprocess.Popen([os.path.join(prefix, "bin", "dpd-workerd"),
                               "-f", "-v", str(config)], stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: "s: started" in (folder / "worker.log").read_text(),
                 timeout=30, what=lambda: (folder / "worker.log").read_text())
        text = (folder / "worker.log").read_text()
        assert "starting processes with dpd-exec %s/lib/diprocd/dpd-exec" \
            % prefix in text, text
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
