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

from diprocd import cgroup  # noqa: E402
from helpers import ROOT, Node, clean_copy, kill_marked  # noqa: E402

# Where the workers of this machine make their cgroup folders (one per
# worker, below each hierarchy's diprocd/), or none.
_PROBE = cgroup.detect("/run/dpd-test-probe.pid", create=False)
_CGROUP_PARENTS = sorted({os.path.dirname(folder) for folder in (
    _PROBE.base, _PROBE.memory_base) if folder})


def _worker_cgroups():
    out = set()
    for parent in _CGROUP_PARENTS:
        try:
            out.update(entry.path for entry in os.scandir(parent)
                       if entry.is_dir(follow_symlinks=False))
        except OSError:
            pass
    return out


# The worker folders this session's tests made that are not removed yet.
_CGROUPS_MADE = set()


@pytest.fixture(autouse=True)
def no_cgroup_left():
    """The cgroup folders this test's workers made go once empty (a worker
    keeps them while its processes run; a test ends those by marker, often
    after its worker), or after a later test, or at the session's end when
    still in use (3000 processes take a while to end). rmdir only: the
    kernel refuses to remove a cgroup that has processes, so nothing
    running loses its folder."""
    before = _worker_cgroups()
    yield
    _CGROUPS_MADE.update(_worker_cgroups() - before)
    _remove_cgroups_made()


def pytest_sessionfinish(session):
    _remove_cgroups_made()


def _remove_cgroups_made():
    for folder in sorted(_CGROUPS_MADE):
        try:
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    _rmdir(entry.path)
        except OSError:
            pass
        _rmdir(folder)
        if not os.path.exists(folder):
            _CGROUPS_MADE.discard(folder)


def _rmdir(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


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


@pytest.fixture
def node(tmp_path, marker):
    """A dpd-workerd's node in tmp_path (helpers.Node), its daemons ended
    at teardown; tmp_path reachable (0755) for processes running as
    nobody."""
    os.chmod(str(tmp_path), 0o755)
    node = Node(tmp_path, marker)
    yield node
    node.close()


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
