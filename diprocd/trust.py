"""Who is trusted to write a file: the StrictModes-style checks (those of
sshd's StrictModes and of cron) on the files the daemons obey, and on the
folders the worker opens programs' logs in as root.

Whoever can write a worker's CONFIG runs any command as any user on the
node; whoever can write a key file or a folder above it can swap it. So a
file the daemons obey (their CONFIGs, key files) is refused, with a
ConfigError naming the path and the rule broken, when it (after
``realpath``: the file a symlink points to) is:

- writable by group or by others;
- owned by a user other than root, the daemon's own (effective) user, or
  an extra trusted owner the caller names (``owners``: uids; the worker's
  ``--config-owner``, the user its client runs as);
- with ``secret``: readable by others;

or when a folder from its parent up to ``/`` is writable by others without
the sticky bit, or owned by a user not trusted as above. A group-writable
folder is allowed: Debian's ``/usr/local`` is root:staff 2775, and only
root can put a user in such a group. (sshd refuses those too; cron does not.)

``check_file(path, what, secret=False, owners=None)`` checks a file by
path (a key reader calls ``check_file(path, "secret key", secret=True)``);
``check_opened(fd, ...)`` checks a file the caller opened, by ``fstat`` of
its descriptor, so the file checked is the file read.

``root_controlled(folder)`` answers another question: can anyone but root
change what ``folder`` names or holds (spawn.py opens a log as root only in
such a folder)?
"""

import os
import pwd
import stat

from diprocd.errors import ConfigError


def trusted_uids(owners=None):
    """root, the daemon's effective uid and ``owners``."""
    return {0, os.geteuid()} | set(owners or ())


def check_file(path, what, secret=False, owners=None):
    """Raise ConfigError unless ``path`` passes the module's rules; ``what``
    names the file in the message ("config", "secret key")."""
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except OSError as err:
        raise ConfigError("%s: cannot read: %s" % (path, err.strerror or err))
    _raise_problems(info, path, real, what, secret, owners)


def check_opened(fd, path, what, secret=False, owners=None,
                 checked_folder=None):
    """``check_file`` of the file open on ``fd`` (opened from ``path``).
    ``checked_folder``: the real path of ``path``'s folder, which passed
    ``check_file`` (a folder of thousands of key files): unless ``path`` is a
    symbolic link, only the file itself is checked then."""
    if checked_folder is not None and not os.path.islink(path):
        _raise_problems(os.fstat(fd), path, os.path.join(
            checked_folder, os.path.basename(path)), what, secret, owners,
            folders=False)
        return
    _raise_problems(os.fstat(fd), path, os.path.realpath(path), what, secret,
                    owners)


def _raise_problems(info, path, real, what, secret, owners, folders=True):
    uids = trusted_uids(owners)
    shown = path if real == os.path.abspath(path) else "%s (-> %s)" % (
        path, real)
    problems = _file_problems(info, uids, secret)
    for folder in _ancestors(real) if folders else ():
        problems += _folder_problems(folder, uids)
    if problems:
        raise ConfigError(["%s: unsafe %s, refused: %s" % (shown, what, why)
                           for why in problems])


def _file_problems(info, uids, secret):
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if mode & stat.S_IWGRP:
        problems.append("writable by group (mode %04o; chmod g-w)" % mode)
    if mode & stat.S_IWOTH:
        problems.append("writable by others (mode %04o; chmod o-w)" % mode)
    if secret and mode & stat.S_IROTH:
        problems.append("readable by others (mode %04o; chmod o-r)" % mode)
    if info.st_uid not in uids:
        problems.append("owned by %s, not by %s"
                        % (_user(info.st_uid), _users(uids)))
    return problems


def _folder_problems(folder, uids):
    try:
        info = os.stat(folder)
    except OSError as err:
        return ["its folder %s cannot be checked: %s"
                % (folder, err.strerror or err)]
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        problems.append("its folder %s is writable by others without the "
                        "sticky bit (mode %04o)" % (folder, mode))
    if info.st_uid not in uids:
        problems.append("its folder %s is owned by %s, not by %s"
                        % (folder, _user(info.st_uid), _users(uids)))
    return problems


def _ancestors(path):
    """The folders above ``path``, its parent first, ``/`` last."""
    folder = os.path.dirname(path)
    while True:
        yield folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _user(uid):
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _users(uids):
    names = [_user(uid).split(" (")[0] for uid in sorted(uids)]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 \
        else names[0]


def root_controlled(folder):
    """True when only root can change what ``folder`` holds or names: it,
    every folder above it, as written and as its symlinks resolve, is
    owned by root and writable by nobody else (or sticky, like /tmp), and
    every symlink on the way is root's. No user lookup: the worker's
    forked child calls it."""
    lexical = os.path.abspath(folder)
    real = os.path.realpath(lexical)
    try:
        for path in [lexical, real] + list(_ancestors(lexical)) + list(
                _ancestors(real)):
            if os.lstat(path).st_uid != 0 or not _root_only(os.stat(path)):
                return False
    except OSError:
        return False
    return True


def _root_only(info):
    mode = stat.S_IMODE(info.st_mode)
    return info.st_uid == 0 and (not mode & (stat.S_IWGRP | stat.S_IWOTH)
                                 or mode & stat.S_ISVTX)
