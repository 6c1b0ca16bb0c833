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

from helpers import Node, clean_copy, kill_marked  # noqa: E402


@pytest.fixture
def marker():
    """A marker only this test uses; every marked process dies at teardown."""
    value = "dpdtest-" + uuid.uuid4().hex[:12]
    yield value
    kill_marked(value)


@pytest.fixture
def node(tmp_path, marker):
    """A Node (helpers) in ``tmp_path``: its worker is killed at the end,
    its processes by the marker."""
    os.chmod(str(tmp_path), 0o755)  # processes running as nobody may need it
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
    (deb,) = glob.glob(str(top / "diprocd_*_all.deb"))
    extracted = top / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(extracted)], check=True)
    control = top / "control"
    subprocess.run(["dpkg-deb", "-e", deb, str(control)], check=True)
    return {"deb": deb, "root": str(extracted), "control": str(control),
            "changes": glob.glob(str(top / "diprocd_*.changes"))[0]}
