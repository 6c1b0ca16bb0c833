"""Shared test helpers: deadlines instead of sleeps, and process markers.

Every process a test starts carries the test's own marker in its
environment (``DPD_TEST_MARKER=<uuid>``); ``kill_marked`` ends exactly those
processes, found by pid through /proc, never by name.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
MARKER_VAR = "DPD_TEST_MARKER"


def wait_for(condition, timeout=10.0, interval=0.01, what=None):
    """Poll ``condition()`` until it returns a true value; return it. Raise
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what or condition))
        time.sleep(interval)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked_pids(marker, var=MARKER_VAR):
    """Pids of live processes whose environment carries ``var=marker``."""
    needle = ("%s=%s" % (var, marker)).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read()
            with open("/proc/%s/stat" % entry, "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_marked(marker, timeout=10.0):
    """SIGKILL every process carrying ``marker`` and wait until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        pids = marked_pids(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError("processes with marker %s survive: %s"
                                 % (marker, pids))
        time.sleep(0.02)


def marked_env(marker, extra=None):
    env = dict(os.environ)
    env[MARKER_VAR] = marker
    env["PYTHONPATH"] = ROOT
    env.update(extra or {})
    return env


def start_daemon(command, marker, args, log_path, extra_env=None):
    """Start ``bin/<command> args...`` with the marker; output to log_path."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, os.path.join(BIN, command)] + list(args),
            env=marked_env(marker, extra_env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()


def run_command(command, args, marker=None, timeout=30, **kwargs):
    """Run ``bin/<command> args...`` to completion; return CompletedProcess."""
    return subprocess.run(
        [sys.executable, os.path.join(BIN, command)] + list(args),
        env=marked_env(marker or "none"), capture_output=True, text=True,
        timeout=timeout, **kwargs)


def write_json(path, obj):
    """Atomic rename, as a careful editor would do."""
    tmp = path + ".tmp-test"
    with open(tmp, "w") as handle:
        json.dump(obj, handle, indent=1)
    os.rename(tmp, path)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except OSError:
        return False
