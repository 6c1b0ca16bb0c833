import os
import pathlib
import shutil
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import Node, kill_marked  # noqa: E402


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
