import os
import pathlib
import shutil
import sys
import tempfile
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import kill_marked  # noqa: E402


@pytest.fixture
def marker():
    """A marker only this test uses; every marked process dies at teardown."""
    value = "dpdtest-" + uuid.uuid4().hex[:12]
    yield value
    kill_marked(value)


requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (setuid, chroot, namespaces)")


@pytest.fixture
def shared_tmp():
    """A fresh folder (0755) that processes running as other users can
    reach, unlike ``tmp_path`` (pytest makes /tmp/pytest-of-root 0700)."""
    folder = tempfile.mkdtemp(prefix="dpd-test-")
    os.chmod(folder, 0o755)
    yield pathlib.Path(folder)
    shutil.rmtree(folder)
