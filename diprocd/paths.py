"""Which CONFIG a command uses when its command line names none.

The first of these that names one (an empty value names none):

1. the command's environment variable, ``DPD_WORKER_CONFIG``,
   ``DPD_CLIENT_CONFIG`` or ``DPD_MASTER_CONFIG``;
2. its setting in ``/etc/default/diprocd`` (``WORKER_CONFIG``,
   ``CLIENT_CONFIG``, ``MASTER_CONFIG``), the file of the init scripts and
   of the systemd units, read here as plain ``NAME=value`` lines (quotes
   removed, nothing expanded, never run: it is a shell fragment, and a
   daemon running as the client's user has no business executing it);
3. the package's default, under ``/var/lib/diprocd/`` (``DEFAULTS``).

``lib/init.sh`` holds the same defaults in shell, and the same rule for an
install from before the system user ``diprocd``: while the worker's default
file does not exist and the old one does, the old one is used
(``tests/test_paths.py`` checks that both agree). Who may write
``/etc/default/diprocd`` does not need checking here: it only names a file,
and the daemons check who could have written that one (``trust``).

The worker trusts the package's system user ``diprocd`` (``CLIENT_USER``,
as which dpd-clientd runs) to own its CONFIG when that user owns CONFIG's
folder (``package_config_owner``), as ``lib/init.sh`` decides for the init
script's ``--config-owner``: so that ``dpd-workerd --status`` works bare
on a packaged node, whose worker file is in ``/var/lib/diprocd/worker/``,
that user's. It grants that user nothing: owning the folder, it can
replace the file anyway.
"""

import collections
import os
import pwd
import re

DEFAULTS_FILE = "/etc/default/diprocd"

# Before the system user diprocd, the worker's file was in /var/lib/diprocd.
OLD_WORKER_CONFIG = "/var/lib/diprocd/diprocd-worker.json"

Place = collections.namedtuple("Place", "setting env default")

# Each daemon's CONFIG: its setting in DEFAULTS_FILE, its environment
# variable, its default. dpdctl's --master is dpd-masterd's.
DEFAULTS = {
    "dpd-workerd": Place("WORKER_CONFIG", "DPD_WORKER_CONFIG",
                         "/var/lib/diprocd/worker/diprocd-worker.json"),
    "dpd-clientd": Place("CLIENT_CONFIG", "DPD_CLIENT_CONFIG",
                         "/var/lib/diprocd/diprocd-client.json"),
    "dpd-masterd": Place("MASTER_CONFIG", "DPD_MASTER_CONFIG",
                         "/var/lib/diprocd/diprocd-master.json"),
}

# The system user dpd-clientd runs as in the package (debian/postinst).
CLIENT_USER = "diprocd"

# The bound on what is read of DEFAULTS_FILE (it is a few lines).
MAX_DEFAULTS_BYTES = 1 << 16

_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def read_settings(path=DEFAULTS_FILE):
    """{NAME: value} of the ``NAME=value`` lines of a shell-style settings
    file, the last assignment of a name winning; {} when it cannot be read.
    A value in single or double quotes is what they hold; unquoted, it
    ends at the first blank (what follows is a comment, or shell this
    reader does not run)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_DEFAULTS_BYTES)
    except OSError:
        return {}
    settings = {}
    for line in os.fsdecode(data).splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match:
            settings[match.group(1)] = _unquote(match.group(2))
    return settings


def _unquote(value):
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        return value[1:end] if end > 0 else value[1:]
    return value.split(None, 1)[0] if value.strip() else ""


def config_path(command, environ=None, defaults_file=DEFAULTS_FILE):
    """(CONFIG, where it came from) for ``command`` (a key of DEFAULTS)
    run without one; the second, for messages: "DPD_WORKER_CONFIG",
    "WORKER_CONFIG in /etc/default/diprocd" or "the default"."""
    place = DEFAULTS[command]
    environ = os.environ if environ is None else environ
    if environ.get(place.env):
        path, origin = environ[place.env], place.env
    else:
        path = read_settings(defaults_file).get(place.setting)
        origin = "%s in %s" % (place.setting, defaults_file)
        if not path:
            path, origin = place.default, "the default"
    if (command == "dpd-workerd" and path == place.default
            and not os.path.exists(path) and os.path.exists(OLD_WORKER_CONFIG)):
        return OLD_WORKER_CONFIG, origin + ", from before the user diprocd"
    return path, origin


def package_config_owner(config_path):
    """The uid of ``CLIENT_USER`` when it exists and owns the folder of
    ``config_path`` (the worker's CONFIG), else None."""
    try:
        uid = pwd.getpwnam(CLIENT_USER).pw_uid
        folder = os.stat(os.path.dirname(os.path.abspath(config_path)))
    except (KeyError, OSError):
        return None
    return uid if folder.st_uid == uid else None
