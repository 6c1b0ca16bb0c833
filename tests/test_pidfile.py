"""A daemon's pid file: ``read_locked_pid``."""

import fcntl
import os

from diprocd.daemon import read_locked_pid


def test_read_locked_pid(tmp_path):
    path = str(tmp_path / "d.pid")
    assert read_locked_pid(path) is None  # no file
    with open(path, "w") as handle:
        handle.write("%d\n" % os.getpid())
    assert read_locked_pid(path) is None  # a live pid, but nobody's lock
    holder = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert read_locked_pid(path) == os.getpid()
        os.ftruncate(holder, 0)
        assert read_locked_pid(path) is None  # locked, pid not written yet
        os.pwrite(holder, b"not a pid\n", 0)
        assert read_locked_pid(path) is None
    finally:
        os.close(holder)
