"""The master's dashboard in a real browser: Debian's chromium, headless,
driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no
port, no extra library). A live loopback cluster (a real master, two real
nodes, a third node that never connects): the page lists every node and
process, and a change shows within 2 s. A screenshot is written to the
test's tmp folder (dashboard.png)."""

import base64
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
import simplejson as json

from helpers import Master, Node, free_port, running_cluster, wait_for

pytest.importorskip("prometheus_client")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (tests/setup-system.sh "
    "installs it as root: apt-get install chromium)")

# What the page shows, read from its own DOM.
SHOWN = """JSON.stringify(Array.from(document.querySelectorAll(
  "#fleet tr")).map(function (r) { return [r.dataset.node || "",
  r.dataset.process || "", r.dataset.state || "", r.textContent]; }))"""


class Browser:
    """One headless chromium on a page, spoken to over fds 3 and 4."""

    def __init__(self, url, folder):
        theirs_in, self._write_fd = os.pipe()  # it reads its fd 3
        self._read_fd, theirs_out = os.pipe()  # it writes its fd 4
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--remote-debugging-pipe",
                "--window-size=1100,640",
                "--user-data-dir=%s" % (folder / "chromium-profile"), url]
        with open(folder / "chromium.log", "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", 'exec "$@" 3<&%d 4>&%d' % (
                    theirs_in, theirs_out), "bash"] + argv,
                pass_fds=(theirs_in, theirs_out), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True)
        os.close(theirs_in)
        os.close(theirs_out)
        self._next_id = 0
        self._buffer = b""
        self.session = None
        target = wait_for(self._page_target, timeout=30,
                          what="chromium's page target")
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True, session=False)["sessionId"]

    def _page_target(self):
        targets = self.call("Target.getTargets", session=False)
        pages = [t["targetId"] for t in targets["targetInfos"]
                 if t["type"] == "page"]
        return pages[0] if pages else None

    def call(self, method, session=True, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError("%s: %s" % (method, reply["error"]))
                return reply["result"]

    def _receive(self):
        while b"\0" not in self._buffer:
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                raise AssertionError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression,
                           returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        os.close(self._write_fd)
        os.close(self._read_fd)


@pytest.fixture
def cluster(tmp_path, marker):
    node1 = Node(tmp_path / "node1", marker, "node1")
    node2 = Node(tmp_path / "node2", marker, "node2")
    master = Master(tmp_path, marker, heartbeat=0.5, silent_after=3.0,
                    http_listen="127.0.0.1:%d" % free_port(),
                    nodes={"node1": [node1.proc("web", "/bin/sleep", "8401",
                                                env={"TOKEN": "s3cret-8401"}),
                                     node1.proc("worker", "/bin/sleep",
                                                "8402")],
                           "node2": [node2.proc("db", "/bin/sleep", "8403"),
                                     node2.proc("job", "/bin/false",
                                                restart=False)],
                           "node3": []})
    with running_cluster(master, (node1, node2),
                         status_interval=0.3):
        yield master, node1, node2


def master_view(master):
    url = "http://%s/status.json" % master.doc["http_listen"]
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())["nodes"]


def shown(browser):
    return [tuple(row) for row in json.loads(browser.evaluate(SHOWN) or "[]")]


def test_the_dashboard_in_chromium(cluster, tmp_path):
    master, node1, node2 = cluster
    node1.wait_running("web")
    node1.wait_running("worker")
    node2.wait_running("db")
    node2.wait_state("job", "exited")
    browser = Browser("http://%s/" % master.doc["http_listen"], tmp_path)
    try:
        def every_process():
            rows = shown(browser)
            states = {(n, p): s for n, p, s, _ in rows if p}
            return states == {("node1", "web"): "running",
                              ("node1", "worker"): "running",
                              ("node2", "db"): "running",
                              ("node2", "job"): "exited"} and rows
        rows = wait_for(every_process, timeout=15,
                        what=lambda: "the page to show every process: %s"
                        % shown(browser))
        nodes = [n for n, p, _, _ in rows if not p]
        assert sorted(nodes) == ["node1", "node2", "node3"]
        # Not as desired first: node3 (never seen), node2 (job exited 1).
        assert nodes[-1] == "node1"
        text = " ".join(r[3] for r in rows)
        assert "never seen" in text and "exit status 1" in text
        assert "s3cret-8401" not in browser.evaluate(
            "document.documentElement.outerHTML")
        browser.screenshot(tmp_path / "dashboard.png")
        # A change: node1's worker is dropped from its list; the clock runs
        # from when the master knows (what dpdctl status would show).
        master.write(dict(master.nodes, node1=master.nodes["node1"][:1]))
        wait_for(lambda: "worker" not in master_view(master)["node1"][
            "procs"], timeout=10, what="the master to hear worker gone")
        changed = time.monotonic()
        wait_for(lambda: ("node1", "worker") not in {
            (n, p) for n, p, _, _ in shown(browser)}, timeout=5,
            what=lambda: "the page to drop worker: %s" % shown(browser))
        assert time.monotonic() - changed < 2.0
        browser.screenshot(tmp_path / "dashboard-after.png")
        assert (tmp_path / "dashboard.png").stat().st_size > 1000
    finally:
        browser.close()
