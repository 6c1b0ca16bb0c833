"""File helpers: the one atomic-write routine of diprocd."""

import os


def atomic_write(path, data, mode=None, fsync=True, follow_symlinks=True):
    """Replace ``path`` with ``data`` (bytes or text) atomically.

    Writes a temporary file in the same folder, fsyncs it, renames it over
    ``path`` and fsyncs the folder, so a reader sees the old content or the
    new one, never a mix, even across a crash. ``mode`` defaults to the
    existing file's mode (else 0644). On any error (disk full, permissions)
    the temporary file is removed, the old file is left intact and the
    OSError propagates. ``fsync=False`` skips both fsyncs, for files that
    need atomicity but not durability (status files).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if follow_symlinks:
        path = os.path.realpath(path)  # replace a symlink's target, not the link
    else:
        # Where root writes into a folder a program's user controls (its
        # pid file), a planted symlink must not redirect the write: the
        # rename replaces the link itself.
        path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    # Our own unique name (not tempfile, whose imports every fork of the
    # worker would copy); O_EXCL refuses to reuse a stray file.
    tmp = os.path.join(folder, ".%s.%d.%s.tmp" % (
        os.path.basename(path), os.getpid(), os.urandom(6).hex()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
