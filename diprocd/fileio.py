"""File helpers: the one atomic-write routine of diprocd, the removal of
what it leaves when its process is killed in the middle of a write, and the
one way a daemon opens its own files in place (pid files, the journal).

None of them leaves a file writable by others, whatever the umask: modes
are set with fchmod. None writes through a symlink planted at the file's
name: ``atomic_write(follow_symlinks=False)`` replaces the link,
``open_in_place`` refuses it."""

import errno
import os
import stat
import string

from diprocd import kernel

# What follows the writer's pid in a temporary file's name: 6 random bytes.
_TEMP_RANDOM_CHARS = 12


def _temp_path(path):
    """``.<name>.<pid>.<12 hex digits>.tmp`` beside ``path``."""
    folder, name = os.path.split(path)
    return os.path.join(folder, ".%s.%d.%s.tmp" % (
        name, os.getpid(), os.urandom(_TEMP_RANDOM_CHARS // 2).hex()))


def atomic_write(path, data, mode=None, fsync=True, follow_symlinks=True):
    """Replace ``path`` with ``data`` (bytes or text) atomically.

    Writes a temporary file in the same folder, fsyncs it, renames it over
    ``path`` and fsyncs the folder, so a reader sees the old content or the
    new one, never a mix, even across a crash. ``mode`` defaults to the
    existing file's mode without group and others' write (else 0644). With
    ``follow_symlinks`` a symlink at ``path`` is written through (the
    target replaced: config management's links); without, the link itself
    is replaced (a daemon's own files, in a folder others may write). On
    any error (disk full, permissions)
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
        mode = existing_mode(path, 0o644) & ~(stat.S_IWGRP | stat.S_IWOTH)
    # Our own unique name (not tempfile, whose imports every fork of the
    # worker would copy); O_EXCL refuses to reuse a stray file.
    tmp = _temp_path(path)
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


def existing_mode(path, default):
    """The permission bits of the file at ``path``, or ``default`` when
    there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return default


def open_in_place(path, flags, mode):
    """``os.open(path, flags, mode)`` of a daemon's own file that it keeps
    and rewrites in place (pid file, journal): never through a symlink at
    ``path`` (refused: OSError ELOOP saying so), and with ``mode`` whatever
    the umask or an earlier mode."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, "it is a symbolic link (refused: "
                          "never followed)")
        raise
    try:
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_dead_writers_temps(path):
    """Remove the temporary files that ``atomic_write(path)`` left behind
    when its process was killed in the middle of a write (a half-written
    copy each): those whose writer's pid, in their name, is not alive.
    Return the names removed."""
    folder, name = os.path.split(os.path.realpath(path))
    prefix, removed = "." + name + ".", []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid, _, random = entry[len(prefix):-len(".tmp")].partition(".")
        if not (pid.isdigit() and len(random) == _TEMP_RANDOM_CHARS
                and set(random) <= set(string.hexdigits)):
            continue  # another file's temporary, or not one of ours
        if kernel.is_alive(int(pid)):
            continue  # its writer may still be at work
        try:
            os.unlink(os.path.join(folder, entry))
        except OSError:
            continue
        removed.append(entry)
    return removed
