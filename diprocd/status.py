"""The worker's status file: where it lives, reading it, rendering it.

The worker writes it atomically on every state change; it is also the
worker's memory across restarts (pid, kernel start time, definition
fingerprint of every process it started), used to adopt processes safely.
"""

import os

import simplejson as json

STATUS_VERSION = 1


def status_file_path(worker_pid_file):
    """``/run/dpd-workerd.pid`` -> ``/run/dpd-workerd.status.json``."""
    base, ext = os.path.splitext(worker_pid_file)
    if ext != ".pid":
        base = worker_pid_file
    return base + ".status.json"


def read_status(path):
    """The status document, or None when missing or unreadable."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("procs"), dict):
        return None
    return data
