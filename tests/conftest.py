import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import ROOT, clean_copy, kill_marked  # noqa: E402

# The workers the tests start use the tree's dpd-exec, built once a session
# (make dpd-exec) into a folder of its own, unless DIPROCD_EXEC is given:
# DIPROCD_EXEC=none runs them all on the fork path (diprocd/spawn.py).
_built_helper = None


def pytest_configure(config):
    global _built_helper
    if "DIPROCD_EXEC" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="dpd-exec-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "dpd-exec")
    result = subprocess.run(["make", "-s", "-C", ROOT, "dpd-exec",
                             "DPD_EXEC=" + path], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise pytest.UsageError("cannot build dpd-exec for the tests:\n"
                                + result.stdout + result.stderr)
    _built_helper = folder
    os.environ["DIPROCD_EXEC"] = path


def pytest_unconfigure(config):
    if _built_helper is not None:
        shutil.rmtree(_built_helper, ignore_errors=True)


def pytest_report_header(config):
    return "workers start processes with DIPROCD_EXEC=%s" % os.environ.get(
        "DIPROCD_EXEC")


@pytest.fixture
def marker():
    """A marker only this test uses; every marked process dies at teardown."""
    value = "dpdtest-" + uuid.uuid4().hex[:12]
    yield value
    kill_marked(value)


requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (setuid, chroot, namespaces)")


@pytest.fixture
def reachable_dir():
    """A folder every user can reach (0755, under /tmp; pytest's tmp_path
    is below a 0700 folder): for what a process running as nobody opens."""
    folder = tempfile.mkdtemp(prefix="dpd-test-")
    os.chmod(folder, 0o755)
    yield pathlib.Path(folder)
    shutil.rmtree(folder)


def deb_architecture():
    """This machine's Debian architecture, the .deb's (dpd-exec is
    compiled), or "" without dpkg."""
    if not shutil.which("dpkg"):
        return ""
    return subprocess.run(["dpkg", "--print-architecture"],
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory):
    """Build the .deb once a run: dpkg-buildpackage -us -uc -b in a clean
    copy (tests/test_packaging.py, tests/test_deb_install.py)."""
    for tool in ("dpkg-buildpackage", "dh", "pybuild", "fakeroot"):
        if not shutil.which(tool):
            pytest.skip("%s missing (tests/setup-system.sh installs debhelper, "
                        "dh-python, lintian with apt as root)" % tool)
    top = tmp_path_factory.mktemp("deb")
    source = clean_copy(top / "diprocd")
    deps = subprocess.run(["dpkg-checkbuilddeps"], cwd=source,
                          capture_output=True, text=True)
    if deps.returncode:
        pytest.skip("build dependencies missing: %s" % deps.stderr.strip())
    # Rules-Requires-Root: no, so the build runs as a user would run it.
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"],
                            cwd=source, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (deb,) = glob.glob(str(top / ("diprocd_*_%s.deb" % deb_architecture())))
    extracted = top / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(extracted)], check=True)
    control = top / "control"
    subprocess.run(["dpkg-deb", "-e", deb, str(control)], check=True)
    return {"deb": deb, "root": str(extracted), "control": str(control),
            "changes": glob.glob(str(top / "diprocd_*.changes"))[0]}
