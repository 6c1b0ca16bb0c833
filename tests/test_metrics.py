"""dpd-masterd's HTTP listener: Prometheus metrics (read with the real
prometheus_client parser), status.json and the dashboard page, on a real
master with two real nodes (client + worker) on loopback and a third node
in the master file that never connects; and junk or slow HTTP clients that
must not disturb the master."""

import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import simplejson as json

from diprocd import httpd
from helpers import Master, Node, free_port, running_cluster, wait_for

parser = pytest.importorskip("prometheus_client.parser")

SILENT_AFTER = 3.0
INTERVAL = 0.3
SECRET = "hunter2-secret-8301"


@pytest.fixture
def cluster(tmp_path, marker):
    node1 = Node(tmp_path / "node1", marker, "node1")
    node2 = Node(tmp_path / "node2", marker, "node2")
    master = Master(tmp_path, marker, heartbeat=0.5, silent_after=SILENT_AFTER,
                    http_listen="127.0.0.1:%d" % free_port(),
                    nodes={"node1": [node1.proc("a", "/bin/sleep", "8301",
                                                env={"TOKEN": SECRET})],
                           "node2": [node2.proc("b", "/bin/sleep", "8302"),
                                     node2.proc("once", "/bin/true",
                                                restart=False),
                                     node2.proc("flop", "/bin/false",
                                                restart_delay=200)],
                           "node3": []})
    with running_cluster(master, (node1, node2),
                         status_interval=INTERVAL):
        yield master, node1, node2


def get(master, path, timeout=5):
    url = "http://%s%s" % (master.doc["http_listen"], path)
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.headers.get("Content-Type"), reply.read()


def scrape(master):
    """{(metric name, frozen labels): value} of one scrape."""
    _, content_type, body = get(master, "/metrics")
    assert content_type.startswith("text/plain")
    samples = {}
    for family in parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = \
                sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def liveness(samples, node):
    states = [labels for (name, labels), v in samples.items()
              if name == "diprocd_node_liveness" and v == 1
              and dict(labels)["node"] == node]
    assert len(states) <= 1
    return dict(states[0])["state"] if states else None


def try_scrape(master):
    try:
        return scrape(master)
    except OSError:  # all connections busy (a test's slow clients)
        return None


def wait_scrape(master, check, what, timeout=15):
    def ready():
        samples = try_scrape(master)
        return samples is not None and check(samples) and samples
    return wait_for(ready, timeout=timeout, what=lambda: "%s: %s" % (
        what, try_scrape(master)))


def running(samples, node, proc):
    return value(samples, "diprocd_process_state", node=node, process=proc,
                 state="running") == 1


def test_metrics_show_nodes_and_processes(cluster):
    master, node1, node2 = cluster
    samples = wait_scrape(master, lambda s: running(s, "node1", "a") and
                          running(s, "node2", "b") and value(
                              s, "diprocd_process_state", node="node2",
                              process="once", state="exited") == 1
                          and value(s, "diprocd_process_state", node="node2",
                                    process="flop", state="backoff") == 1,
                          "every process as expected")
    assert liveness(samples, "node1") == liveness(samples, "node2") == "up"
    assert liveness(samples, "node3") == "never seen"
    assert value(samples, "diprocd_node_in_sync", node="node1") == 1
    assert value(samples, "diprocd_node_in_sync", node="node3") == 0
    assert value(samples, "diprocd_process_starts_total", node="node1",
                 process="a") == 1
    assert value(samples, "diprocd_process_as_desired", node="node2",
                 process="once") == 1
    assert value(samples, "diprocd_process_last_exit_info", node="node2",
                 process="once", how="exit status 0") == 1
    assert value(samples, "diprocd_process_state", node="node1",
                 process="a", state="stopped") == 0
    assert value(samples, "diprocd_process_uptime_seconds", node="node1",
                 process="a") >= 0
    # Its first failure: 200 s ± 10 % from then (its node's clock).
    due = value(samples, "diprocd_process_next_start_time_seconds",
                node="node2", process="flop")
    assert time.time() + 150 < due < time.time() + 221, due
    assert value(samples, "diprocd_process_next_start_time_seconds",
                 node="node1", process="a") is None
    assert value(samples, "diprocd_master_publishes_total") >= 3
    assert value(samples, "diprocd_master_reports_total") >= 2
    assert value(samples, "diprocd_master_dropped_reports_total") == 0
    # What dpdctl status shows, in status.json too; no env value anywhere.
    _, content_type, body = get(master, "/status.json")
    assert content_type == "application/json"
    doc = json.loads(body)
    assert doc["nodes"]["node1"]["procs"]["a"]["state"] == "running"
    assert doc["nodes"]["node2"]["procs"]["flop"]["next_start"] == due
    assert doc["nodes"]["node3"]["liveness"] == "never seen"
    assert not doc["nodes"]["node3"]["as_desired"]
    _, content_type, page = get(master, "/")
    assert content_type.startswith("text/html")
    assert b"status.json" in page and b"<script" in page
    assert b"http://" not in page and b"https://" not in page  # offline
    _, _, text = get(master, "/metrics")
    for what in (text, body, page):
        assert SECRET.encode() not in what and b"TOKEN" not in what


def test_a_node_going_down_shows_down(cluster):
    master, node1, node2 = cluster
    wait_scrape(master, lambda s: liveness(s, "node2") == "up", "node2 up")
    node2.client.send_signal(signal.SIGKILL)
    node2.client.wait()
    samples = wait_scrape(master, lambda s: liveness(s, "node2") == "down",
                          "node2 down", timeout=SILENT_AFTER + 10)
    assert liveness(samples, "node1") == "up"
    doc = json.loads(get(master, "/status.json")[2])
    assert doc["nodes"]["node2"]["liveness"] == "down"


def test_bad_requests_are_answered_and_refused():
    routes = {"/": lambda: ("text/plain", b"hi")}
    assert httpd.answer(b"GET / HTTP/1.1\r\nHost: x", routes).startswith(
        b"HTTP/1.0 200 OK\r\n")
    assert httpd.answer(b"HEAD / HTTP/1.0", routes).endswith(b"\r\n\r\n")
    for junk, code in ((b"\xff\xfe", 400), (b"GET /", 400),
                       (b"GET / SPDY", 400), (b"POST / HTTP/1.0", 405),
                       (b"GET /etc/passwd HTTP/1.0", 404),
                       (b"GET /../ HTTP/1.0", 404)):
        assert httpd.answer(junk, routes).startswith(
            b"HTTP/1.0 %d " % code), junk


def connect(master):
    host, port = master.doc["http_listen"].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def test_junk_and_slow_clients_do_not_disturb_the_master(cluster):
    master, node1, node2 = cluster
    node1.wait_running("a")
    # More idle connections than the master keeps, one that never ends
    # its request, one that sends junk, one a request head too large.
    idle = [connect(master) for _ in range(httpd.MAX_CONNECTIONS + 8)]
    slow = connect(master)
    slow.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
    junk = connect(master)
    junk.sendall(b"\x00\xff junk\r\n\r\n")
    huge = connect(master)
    try:
        huge.sendall(b"GET / HTTP/1.0\r\nX: " + b"a" * 100000)
    except OSError:
        pass  # the master answered and closed it before taking it all
    started = time.monotonic()
    # The master still publishes: node1 gets its changed list at once.
    master.write(dict(master.nodes, node1=master.nodes["node1"] + [
        node1.proc("c", "/bin/sleep", "8303")]))
    node1.wait_running("c")
    assert time.monotonic() - started < httpd.CONNECTION_TIMEOUT
    # The slow ones are closed at the deadline; then scrapes work again.
    samples = wait_scrape(master, lambda s: running(s, "node1", "c"),
                          "c running", timeout=httpd.CONNECTION_TIMEOUT + 10)
    assert liveness(samples, "node2") == "up"
    slow.settimeout(httpd.CONNECTION_TIMEOUT + 5)
    assert slow.recv(100) == b""  # closed by the master, unanswered
    for sock in idle + [slow, junk, huge]:
        sock.close()
    with pytest.raises(urllib.error.HTTPError) as err:
        get(master, "/nope")
    assert err.value.code == 404
    assert master.daemon.poll() is None
    assert "internal error" not in master.log()


def test_the_server_on_a_bare_loop_ipv6_and_a_large_answer():
    """Single-threaded: the test is the client and turns the loop itself;
    an answer larger than the socket buffer goes out over several turns."""
    import logging
    from diprocd.loop import Loop
    body = b"x" * (8 << 20)
    loop = Loop()
    try:
        sock = httpd.listen("::1", 0)
    except OSError as err:
        loop.close()
        pytest.skip("no IPv6 loopback: %s" % err)
    server = httpd.Server(sock, loop, {"/big": lambda: ("text/plain", body)},
                          logging.getLogger("test"))
    client = socket.create_connection(sock.getsockname()[:2], timeout=5)
    client.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    client.setblocking(False)
    received = bytearray()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loop.call_later("tick", 0.001, lambda: None)  # turn never blocks
        loop.turn()
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        received += chunk
    client.close()
    server.close()
    loop.close()
    head, _, got = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and got == body
