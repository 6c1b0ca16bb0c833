"""The .deb in a clean Debian 12 root: debootstrap --variant=minbase
bookworm from the mirror the host's apt uses, ``apt-get install
./diprocd_*.deb`` in it (apt brings python3-zmq and the rest), then the
README's packaged commands in that root: both init systems' files there,
the user made, nothing enabled or started, a worker, a master and a client
on loopback through the init scripts, ``dpd-workerd --status`` and
``dpdctl status`` bare, the stop, and ``apt-get purge``.

Every command in the root runs in one private mount and network namespace
(``Root``): /proc is mounted there only, and the root's loopback is its
own, so the examples' fixed ports collide with nothing; when the test ends
the processes whose root is this root are killed by pid, the namespace's
holder too, which takes the mount with it. Root only; skips when
debootstrap or the mirror is missing."""

import glob
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import requires_root
from helpers import wait_for

SUITE = "bookworm"
COMMANDS = ("dpd-workerd", "dpd-clientd", "dpd-masterd")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
WORKER_CONFIG = "/var/lib/diprocd/worker/diprocd-worker.json"
MASTER_CONFIG = "/var/lib/diprocd/diprocd-master.json"
CLIENT_CONFIG = "/var/lib/diprocd/diprocd-client.json"
EXAMPLES = "/usr/share/doc/diprocd/"


def apt_sources():
    """[(uri, suites, components)] of the host's apt sources, one-line and
    deb822 ("Types: deb"), in the order apt reads them."""
    found = []
    files = ["/etc/apt/sources.list"] + sorted(
        glob.glob("/etc/apt/sources.list.d/*.list")
        + glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in files:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if line.strip() and not line.startswith(("#", " ")) \
                            and ":" in line:
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", ()) and fields.get(
                        "enabled", ["yes"]) != ["no"]:
                    for uri in fields.get("uris", ()):
                        found.append((uri, fields.get("suites", []),
                                      fields.get("components", [])))
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = words[1:]
                if len(words) >= 3:
                    found.append((words[0], [words[1]], words[2:]))
    return found


def bookworm_mirror():
    """The first mirror of the host's apt that serves bookworm main and
    answers, else None."""
    for uri, suites, components in apt_sources():
        if SUITE in suites and "main" in components:
            try:
                urllib.request.urlopen("%s/dists/%s/Release" % (
                    uri.rstrip("/"), SUITE), timeout=20).close()
            except (OSError, ValueError):
                continue
            return uri
    return None


class Root:
    """A debootstrapped root and the namespace its commands run in."""

    def __init__(self, path):
        self.path = os.path.realpath(path)
        self.holder = None

    def enter(self):
        """Start the holder: a private mount namespace with /proc mounted
        in the root, and a network namespace whose loopback is up."""
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--net", "--",
             "sh", "-c", 'mount -t proc proc "$1/proc" && ip link set lo up '
             '&& echo ready && exec sleep 86400', "sh", self.path],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.holder.stdout.readline() == "ready\n"

    def run(self, script, net=True, timeout=120, check=True):
        """``sh -c script`` in the root, in the holder's namespaces (with
        ``net=False``, the host's network: apt's mirror); a clean
        environment. Return the CompletedProcess."""
        argv = ["nsenter", "-t", str(self.holder.pid), "--mount"]
        argv += ["--net"] if net else []
        argv += ["chroot", self.path, "env", "-i", "PATH=" + PATH,
                 "LANG=C.UTF-8", "HOME=/root",
                 "DEBIAN_FRONTEND=noninteractive", "sh", "-ec", script]
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, (script, result)
        return result

    def file(self, path):
        return os.path.join(self.path, path.lstrip("/"))

    def processes(self):
        """{pid: argv} of the live processes whose root is this root."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink("/proc/%s/root" % entry) != self.path:
                    continue
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    argv = handle.read().split(b"\0")[:-1]
            except OSError:
                continue
            if argv:  # not a zombie
                found[int(entry)] = [a.decode("utf-8", "replace") for a in argv]
        return found

    def close(self):
        """Kill what runs in the root, then the holder; the mount goes with
        its namespace. True when nothing is mounted under the root."""
        deadline = time.monotonic() + 20
        while self.processes() and time.monotonic() < deadline:
            for pid in self.processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=10)
        with open("/proc/self/mountinfo") as handle:
            mounts = [line.split()[4] for line in handle]
        return not any(m == self.path or m.startswith(self.path + "/")
                       for m in mounts)


@pytest.fixture
def debian_root(tmp_path):
    for tool in ("debootstrap", "unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            pytest.skip("needs %s (tests/setup-system.sh installs debootstrap)"
                        % tool)
    mirror = bookworm_mirror()
    if mirror is None:
        pytest.skip("no mirror of the host's apt answers for %s main" % SUITE)
    root = Root(tmp_path / "root")
    try:
        # In a mount namespace of its own: what debootstrap mounts in the
        # root goes with it, whatever happens.
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private",
             "debootstrap", "--variant=minbase", SUITE, root.path, mirror],
            capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        shutil.copy("/etc/resolv.conf", root.file("/etc/resolv.conf"))
        root.enter()
        yield root
    finally:
        if root.close():
            shutil.rmtree(str(tmp_path / "root"))


def listed(root, prefix):
    return sorted(os.path.basename(p) for p in glob.glob(root.file(prefix)))


def edit_json(root, path, change):
    with open(root.file(path)) as handle:
        document = json.load(handle)
    change(document)
    text = json.dumps(document, indent=4) + "\n"
    root.run("cat > %s.new <<'EOF'\n%sEOF\nmv %s.new %s" % (
        path, text, path, path))


def worker_status(root):
    """{name: (state, pid)} as `dpd-workerd --status` bare prints it, and
    its exit code."""
    result = root.run("dpd-workerd --status", check=False)
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[0] != "NAME":
            rows[words[0]] = (words[1], words[2])
    return rows, result


def state(root, name):
    return worker_status(root)[0].get(name, (None,))[0]


@requires_root
@pytest.mark.timeout(1200)
def test_deb_in_a_clean_debian_12_root(built_deb, debian_root):
    root = debian_root
    started = time.monotonic()
    deb = os.path.basename(built_deb["deb"])
    shutil.copy(built_deb["deb"], root.file("/tmp/" + deb))
    # As the README: apt install ./diprocd_*.deb, which brings the
    # dependencies from the mirror. No policy-rc.d: whatever the package
    # started would run.
    root.run("apt-get update -q", net=False, timeout=600)
    result = root.run("cd /tmp && apt-get install -y -q ./%s" % deb,
                      net=False, timeout=600)
    assert "Setting up diprocd" in result.stdout, result.stdout
    # Both init systems' files.
    assert listed(root, "/etc/init.d/dpd-*") == sorted(COMMANDS)
    units = listed(root, "/lib/systemd/system/dpd-*") \
        or listed(root, "/usr/lib/systemd/system/dpd-*")
    assert units == sorted(c + ".service" for c in COMMANDS)
    for command in COMMANDS:
        assert os.access(root.file("/etc/init.d/" + command), os.X_OK)
        assert os.access(root.file("/usr/bin/" + command), os.X_OK)
    # The system user, its folders.
    user = root.run("getent passwd diprocd").stdout.strip().split(":")
    assert (user[0], user[5], user[6]) == ("diprocd", "/var/lib/diprocd",
                                           "/usr/sbin/nologin")
    assert root.run("stat -c %U /var/lib/diprocd/worker").stdout == "diprocd\n"
    # Nothing enabled: no link to a unit or an init script under /etc;
    # nothing started.
    links = root.run("find /etc -name '*dpd-*' -type l").stdout
    assert links == "", links
    assert root.processes() == {}, root.processes()
    for command in COMMANDS + ("dpdctl",):
        assert root.run("%s --version" % command).stdout.startswith(command)

    # Single node, as the README: the example as the worker's default
    # CONFIG, checked and run bare, through its init script.
    root.run("cp %sdiprocd-worker.example.json %s" % (EXAMPLES, WORKER_CONFIG))
    assert root.run("dpd-workerd --check").stdout.endswith(": OK\n")
    root.run("/etc/init.d/dpd-workerd start")
    assert "is running" in root.run("/etc/init.d/dpd-workerd status").stdout
    wait_for(lambda: state(root, "sleep.worker.1") == "running", timeout=30,
             what=lambda: worker_status(root)[1])
    rows, result = worker_status(root)
    assert result.returncode == 0 and result.stderr == "", result
    assert rows["echo.worker.1"][0] == "exited", rows
    assert "sleep.worker.1" in root.run(
        "dpdctl --worker %s status" % WORKER_CONFIG).stdout
    # Again: "already running", the same worker.
    pid = root.run("dpd-workerd --pid").stdout
    assert "already running" in root.run("/etc/init.d/dpd-workerd start").stdout
    assert root.run("dpd-workerd --pid").stdout == pid

    # A master and a client on the root's loopback, from the examples,
    # edited as the README says (the master's address; the node's name).
    for example, config in (("master", MASTER_CONFIG),
                            ("client", CLIENT_CONFIG)):
        root.run("cp %sdiprocd-%s.example.json %s" % (EXAMPLES, example,
                                                      config))

    def loopback(document):
        for key in ("master_stats", "master_updates"):
            document[key] = document[key].replace("192.168.0.1", "127.0.0.1")
    edit_json(root, MASTER_CONFIG, loopback)
    edit_json(root, CLIENT_CONFIG, lambda d: (loopback(d), d.update(
        node_name="node1")))
    assert root.run("dpd-masterd --check").stdout.endswith(": OK\n")
    assert "node1" in root.run("dpd-clientd --check").stdout
    root.run("/etc/init.d/dpd-masterd start")
    root.run("/etc/init.d/dpd-clientd start")
    client = root.run("dpd-clientd --pid").stdout.strip()
    assert root.run("stat -c %%U /proc/%s" % client).stdout == "diprocd\n"

    def node1_runs():
        rows, _ = worker_status(root)
        if set(rows) == {"sleep.node1.1"} and rows["sleep.node1.1"][0] \
                == "running":
            return rows
    wait_for(node1_runs, timeout=60, what=lambda: (
        worker_status(root)[1], root.run("cat /var/log/diprocd/*.log "
                                         "/var/log/diprocd/client/*.log",
                                         check=False).stdout))
    # dpdctl status, bare on the master node: node1 up and as desired,
    # node2 (no client) never seen, so exit 1.
    def fleet():
        shown = root.run("dpdctl status", check=False)
        return shown if "sleep.node1.1" in shown.stdout else None
    shown = wait_for(fleet, timeout=30)
    assert shown.returncode == 1, shown
    assert "never seen" in shown.stdout and "node2" in shown.stdout, shown
    metrics = root.run("python3 -c 'import urllib.request; print(urllib."
                       "request.urlopen(\"http://127.0.0.1:9556/metrics\")"
                       ".read().decode())'").stdout
    assert "node1" in metrics

    # The stop: the client and the master, the node's processes (an empty
    # list), the worker; then nothing runs in the root.
    sleep_pid = int(worker_status(root)[0]["sleep.node1.1"][1])
    root.run("/etc/init.d/dpd-clientd stop")
    root.run("/etc/init.d/dpd-masterd stop")
    root.run("cp %sdiprocd-emptyworker.example.json %s.new && mv %s.new %s"
             % (EXAMPLES, WORKER_CONFIG, WORKER_CONFIG, WORKER_CONFIG))
    wait_for(lambda: sleep_pid not in root.processes(), timeout=30)
    root.run("/etc/init.d/dpd-workerd stop")
    assert root.run("/etc/init.d/dpd-workerd status",
                    check=False).returncode == 3
    wait_for(lambda: root.processes() == {}, timeout=30,
             what=lambda: root.processes())

    # Purge: the package's files go (folders holding the admin's files
    # stay), the user stays (see debian/diprocd.postrm).
    files = [path for path in root.run("dpkg -L diprocd").stdout.split()
             if not os.path.isdir(root.file(path))]
    root.run("apt-get purge -y -q diprocd", net=False, timeout=300)
    assert root.run("dpkg-query -W -f '${Status}' diprocd",
                    check=False).stdout in ("", "unknown ok not-installed")
    left = [path for path in files if os.path.lexists(root.file(path))]
    assert left == [], left
    assert not os.path.exists(root.file("/etc/default/diprocd"))
    assert root.run("find /etc -name '*dpd-*'").stdout == ""
    assert root.run("getent passwd diprocd").stdout.startswith("diprocd:")
    print("clean Debian 12 root: install to purge in %.0f s"
          % (time.monotonic() - started))
