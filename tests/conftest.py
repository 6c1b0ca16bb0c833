import os
import sys
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
