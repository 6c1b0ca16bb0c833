"""The .deb in a clean Debian 12 root: debootstrap --variant=minbase
bookworm from the mirror the host's apt uses, ``apt-get install
./diprocd_*.deb`` in it (apt brings python3-zmq and the rest), then the
README's packaged commands in that root: both init systems' files there,
the user made, nothing enabled or started, a worker, a master and a client
on loopback through the init scripts, ``dpd-workerd --status`` and
``dpdctl status`` bare, CURVE as the README's "Securing a two-node
cluster, step by step" says (its commands taken from the README), the
init script's reload and restart (processes adopted), the cron line's
respawn after a kill -9 of the worker, the stop, enabling with
``insserv`` and ``systemctl enable`` (not ``--now``: a chroot runs no
systemd to start a unit) and undoing it, and ``apt-get purge``. In a
second root, an install from before the user diprocd (the worker's file
where it was, both daemons run as root) moved by the README's steps: the
client then runs as diprocd, the worker's processes adopted.

Every command in the root runs in one private mount and network namespace
(``Root``): /proc is mounted there only, and the root's loopback is its
own, so the examples' fixed ports collide with nothing; when the test ends
the processes whose root is this root are killed by pid, the namespace's
holder too, which takes the mount with it. Root only; skips when
debootstrap or the mirror is missing."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import requires_root
from helpers import ROOT, wait_for

SUITE = "bookworm"
COMMANDS = ("dpd-workerd", "dpd-clientd", "dpd-masterd")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
WORKER_CONFIG = "/var/lib/diprocd/worker/diprocd-worker.json"
MASTER_CONFIG = "/var/lib/diprocd/diprocd-master.json"
CLIENT_CONFIG = "/var/lib/diprocd/diprocd-client.json"
EXAMPLES = "/usr/share/doc/diprocd/"
README = os.path.join(ROOT, "README.md")
SECURING = "### Securing a two-node cluster, step by step"


def securing_steps():
    """The README's "Securing a two-node cluster, step by step", as
    ([shell command], {file: added JSON keys}) for the master and node1 in
    one root: its sh blocks up to the status, the master's address made
    loopback, ``scp`` a ``cp`` (both ends are here), and the two commands
    its text gives for a node installed from the package (the chown of the
    secret key, the client's --check as diprocd, instead of as root). The
    JSON keys are added before the first check, as the README's order
    has it."""
    with open(README) as handle:
        section = handle.read().split(SECURING, 1)[1].split("\n### ", 1)[0]
    section = section.replace("192.168.0.1", "127.0.0.1")
    blocks = re.findall(r"^```(sh|json)\n(.*?)^```$", section, re.S | re.M)
    shell = [block for kind, block in blocks if kind == "sh"]
    added = [json.loads("{%s}" % block.strip().rstrip(","))
             for kind, block in blocks if kind == "json"]
    prose = {word: " ".join(command.split()) for command, word in
             re.findall(r"`((chown|setpriv) [^`]+)`", section)}
    lines = []
    for block in shell[:3]:  # the operator's, from elsewhere, is not run
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("scp "):
                line = re.sub(r"\b127\.0\.0\.1:", "", "cp" + line[3:])
                if len(set(line.split()[1:])) == 1:
                    continue  # master.key: the node's copy is the master's
            if line.startswith("dpd-clientd --check"):
                lines.append(prose["chown"])
                line = prose["setpriv"]
            if line:
                lines.append(line)
    return lines, dict(zip((MASTER_CONFIG, CLIENT_CONFIG), added))


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


def install(root, built_deb):
    """As the README: apt install ./diprocd_*.deb, which brings the
    dependencies from the mirror. No policy-rc.d: whatever the package
    started would run."""
    deb = os.path.basename(built_deb["deb"])
    shutil.copy(built_deb["deb"], root.file("/tmp/" + deb))
    root.run("apt-get update -q", net=False, timeout=600)
    result = root.run("cd /tmp && apt-get install -y -q ./%s" % deb,
                      net=False, timeout=600)
    assert "Setting up diprocd" in result.stdout, result.stdout


def loopback(document):
    """The examples' master address, 192.168.0.1, made the root's own."""
    for key in ("master_stats", "master_updates"):
        document[key] = document[key].replace("192.168.0.1", "127.0.0.1")


def master_and_client(root, **client_keys):
    """The master's and the client's examples in place, edited as the
    README says (the master's address; the node's name), and
    ``client_keys``."""
    for example, config in (("master", MASTER_CONFIG),
                            ("client", CLIENT_CONFIG)):
        root.run("cp %sdiprocd-%s.example.json %s" % (EXAMPLES, example,
                                                      config))
    edit_json(root, MASTER_CONFIG, loopback)
    edit_json(root, CLIENT_CONFIG, lambda d: (loopback(d), d.update(
        node_name="node1", **client_keys)))


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
        if line.startswith("process trees: "):
            break  # the line under the table
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
    install(root, built_deb)
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
    master_and_client(root)
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

    # CURVE, as "Securing a two-node cluster, step by step" says, the
    # master and node1 here: keys, the two files, the checks, the
    # restarts; then dpdctl status shows node1 up again, its list sealed.
    steps, added = securing_steps()
    assert len(steps) >= 12 and len(added) == 2, (steps, added)
    for line in steps:
        if line.startswith(("{", '"')):
            continue
        if line == "dpdctl status":
            wait_for(lambda: "sleep.node1.1" in root.run(
                "dpdctl status", check=False).stdout, timeout=60,
                what=lambda: root.run("dpdctl status; tail -5 "
                                      "/var/log/diprocd/dpd-masterd.log",
                                      check=False))
            continue
        if line.startswith("dpd-masterd --check"):
            for path, keys in added.items():
                edit_json(root, path, lambda d, keys=keys: d.update(keys))
        root.run(line)
    assert root.run("stat -c %a /etc/diprocd/master.key_secret").stdout \
        == "600\n"
    log = root.run("cat /var/log/diprocd/dpd-masterd.log").stdout
    assert "CURVE: 1 node keys in /etc/diprocd/clients" in log, log

    # The init script's reload (SIGHUP) and restart: the same processes
    # go on, adopted by the new worker.
    sleep_pid = int(worker_status(root)[0]["sleep.node1.1"][1])
    worker = root.run("dpd-workerd --pid").stdout
    root.run("/etc/init.d/dpd-workerd reload")
    assert root.run("dpd-workerd --pid").stdout == worker
    root.run("/etc/init.d/dpd-workerd restart")
    assert root.run("dpd-workerd --pid").stdout not in ("", worker)
    wait_for(lambda: worker_status(root)[0].get("sleep.node1.1")
             == ("running", str(sleep_pid)), timeout=30,
             what=lambda: worker_status(root)[1])
    log = root.run("cat /var/log/diprocd/dpd-workerd.log").stdout
    assert "received SIGHUP" in log and "adopted" in log, log

    # The cron line, copied as the README says, run by hand as cron would
    # (no systemd runs here): nothing while the worker runs; after a kill
    # -9 of the worker, a new one, which adopts the sleep.
    root.run("cp /usr/share/doc/diprocd/dpd-workerd.cron "
             "/etc/cron.d/dpd-workerd")
    (line,) = [line for line in root.run("cat /etc/cron.d/dpd-workerd")
               .stdout.splitlines() if line.strip()
               and not line.startswith("#") and "=" not in line.split()[0]]
    respawn = " ".join(line.split()[6:])  # after the time fields and user
    worker = root.run("dpd-workerd --pid").stdout
    root.run(respawn)
    assert root.run("dpd-workerd --pid").stdout == worker
    os.kill(int(worker), signal.SIGKILL)
    wait_for(lambda: root.run("dpd-workerd --pid", check=False).returncode
             != 0, timeout=10)
    root.run(respawn)
    assert root.run("dpd-workerd --pid").stdout not in ("", worker)
    wait_for(lambda: worker_status(root)[0].get("sleep.node1.1")
             == ("running", str(sleep_pid)), timeout=30,
             what=lambda: worker_status(root)[1])
    root.run("rm /etc/cron.d/dpd-workerd")  # the admin's copy: not purged

    # The stop: the client and the master, the node's processes (an empty
    # list), the worker; then nothing runs in the root.
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

    # Enabling, as the README says, with each init system's own tool
    # (installed here: minbase has neither): insserv links the scripts,
    # systemctl enables the units. The README's `--now` also starts one,
    # which needs a running systemd: a chroot has none (systemctl says so
    # and fails), so here only the enabling is done. Then undone.
    root.run("apt-get install -y -q insserv systemd", net=False, timeout=600)
    for command in COMMANDS:
        root.run("insserv %s" % command)
    assert sorted(os.path.basename(link)[3:] for link in glob.glob(
        root.file("/etc/rc2.d/S*dpd-*"))) == sorted(COMMANDS)
    for command in COMMANDS:
        enabled = root.run("systemctl enable %s" % command)
        assert "multi-user.target.wants/%s.service" % command \
            in enabled.stdout + enabled.stderr, enabled
    assert listed(root, "/etc/systemd/system/multi-user.target.wants/dpd-*") \
        == sorted(c + ".service" for c in COMMANDS)
    assert root.processes() == {}, root.processes()
    for command in COMMANDS:
        root.run("systemctl disable %s && insserv -r %s" % (command, command))
    assert root.run("find /etc -name '*dpd-*' -type l").stdout == ""

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


OLD_WORKER_CONFIG = "/var/lib/diprocd/diprocd-worker.json"
MOVING = "**An install from before the user**"


def moving_steps():
    """The README's steps that move an install from before the user
    diprocd to the unprivileged client: (shell lines, {key: value} its
    comment lines give for the client's file)."""
    with open(README) as handle:
        section = handle.read().split(MOVING, 1)[1]
    (block,) = re.findall(r"^```\n(.*?)^```$", section, re.S | re.M)[:1]
    lines, keys = [], {}
    for line in block.splitlines():
        if line.startswith("#"):
            keys.update(json.loads("{%s}" % line.lstrip("# ").rstrip(",")
                                   ) if line.lstrip("# ").startswith('"')
                        else {})
        elif line.strip():
            lines.append(line.split("  #", 1)[0].strip())
    return lines, keys


@requires_root
@pytest.mark.timeout(1200)
def test_an_install_from_before_the_user_moves_as_the_readme_says(
        built_deb, debian_root):
    """The worker's file where it was before the user diprocd (its
    folder root's): the scripts run both daemons as root; the README's
    steps then move it, and the client runs as diprocd while the worker's
    processes run on, adopted."""
    root = debian_root
    install(root, built_deb)
    root.run("cp %sdiprocd-worker.example.json %s" % (EXAMPLES,
                                                      OLD_WORKER_CONFIG))
    # The client's file as the example had it before the user.
    master_and_client(root, conf_file=OLD_WORKER_CONFIG,
                      pid_file="/var/run/dpd-clientd.pid",
                      log_file="/var/log/diprocd/dpd-clientd.log")
    for command in ("dpd-masterd", "dpd-workerd", "dpd-clientd"):
        root.run("/etc/init.d/%s start" % command)
    client = root.run("dpd-clientd --pid").stdout.strip()
    assert root.run("stat -c %%U /proc/%s" % client).stdout == "root\n"

    def node1_runs():
        rows, _ = worker_status(root)
        if rows.get("sleep.node1.1", ("",))[0] == "running":
            return rows
    rows = wait_for(node1_runs, timeout=60, what=lambda: worker_status(root))
    sleep_pid = rows["sleep.node1.1"][1]

    steps, keys = moving_steps()
    assert len(steps) == 4 and set(keys) == {"conf_file", "pid_file",
                                             "log_file"}, (steps, keys)
    for line in steps:
        if line.startswith("/etc/init.d/dpd-workerd start"):
            edit_json(root, CLIENT_CONFIG, lambda d: d.update(keys))
        root.run(line)
    client = root.run("dpd-clientd --pid").stdout.strip()
    assert root.run("stat -c %%U /proc/%s" % client).stdout == "diprocd\n"
    assert root.run("stat -c %%U %s" % WORKER_CONFIG).stdout == "diprocd\n"
    assert not os.path.exists(root.file(OLD_WORKER_CONFIG))
    wait_for(lambda: worker_status(root)[0].get("sleep.node1.1")
             == ("running", sleep_pid), timeout=30,
             what=lambda: worker_status(root)[1])
    # The client, as diprocd, still rewrites the worker's file: an edit of
    # the master's list reaches the node.
    edit_json(root, MASTER_CONFIG, lambda d: d["nodes"]["node1"][0].update(
        args=["7200"]))
    wait_for(lambda: '"7200"' in root.run("cat %s" % WORKER_CONFIG).stdout,
             timeout=30, what=lambda: root.run(
                 "tail -5 /var/log/diprocd/client/dpd-clientd.log",
                 check=False))
    for command in ("dpd-clientd", "dpd-masterd"):
        root.run("/etc/init.d/%s stop" % command)
