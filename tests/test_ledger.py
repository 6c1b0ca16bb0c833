"""The status file's layout: the view on its first line, read alone by
``ledger.read_view``; the whole document as before for adoption."""

import simplejson as json

from diprocd import ledger
from diprocd import process as P
from diprocd.spec import ProcessSpec
from fakes import FakeClock, FakeOps


def _written(tmp_path, names):
    book = ledger.Ledger(str(tmp_path / "w.pid"), "boot")
    procs = {}
    for name in names:
        proc = P.Process(ProcessSpec(name=name, run="/bin/sleep",
                                     args=("60",), pid_file="/run/%s.pid"
                                     % name), FakeOps(), FakeClock())
        proc.want()
        proc.start()
        procs[name] = proc
    book.write(7, "/etc/w.json", 12.5, procs, config_crc32=99)
    return book, procs


def test_the_view_is_the_first_line_and_read_alone(tmp_path):
    book, procs = _written(tmp_path, ["b", "a\nz"])  # a newline in a name
    data = open(book.status_path, "rb").read()
    first, rest = data.split(b"\n")  # the text holds no other newline
    assert first.endswith(b",") and rest.startswith(b'"records":')
    whole = json.loads(data)
    assert set(whole["procs"]) == {"b", "a\nz"} and whole["records"]
    view = ledger.read_view(book.status_path)
    assert view == {key: whole.get(key) for key in ledger.VIEW_KEYS}
    assert view["procs"]["b"]["pid"] == procs["b"].pid
    assert view["config_crc32"] == 99 and "records" not in view
    # Only the first line is parsed: records spoilt after it do not matter
    # to the view (they do to adoption, which reads the whole).
    with open(book.status_path, "wb") as handle:
        handle.write(first + b'\n"records": {spoilt')
    assert ledger.read_view(book.status_path) == view
    assert ledger.read_document(book.status_path) is None


def test_a_status_file_without_the_view_line_is_read_whole(tmp_path):
    """An older worker's file (one line), or one written by hand."""
    book, _ = _written(tmp_path, ["a"])
    whole = json.loads(open(book.status_path, "rb").read())
    for text in (json.dumps(whole), json.dumps(whole, indent=1)):
        with open(book.status_path, "w") as handle:
            handle.write(text)
        assert ledger.read_view(book.status_path)["procs"] == whole["procs"]
    for bad in (b"", b"{,\n", b'{"procs": 1,\n"x": 2}', b"[1,\n2]"):
        with open(book.status_path, "wb") as handle:
            handle.write(bad)
        assert ledger.read_view(book.status_path) is None


def test_a_status_file_past_the_limit_is_not_read_even_its_view(tmp_path,
                                                                monkeypatch):
    book, _ = _written(tmp_path, ["a"])
    size = len(open(book.status_path, "rb").read())
    monkeypatch.setattr(ledger, "MAX_STATUS_BYTES", size - 1)
    assert ledger.read_view(book.status_path) is None


def test_each_write_shows_what_a_fresh_encoding_shows(tmp_path):
    """A process is encoded again only when its revision moved: after any
    step of processes (starts, deaths, stops, holds, health results, the
    clock), the status file is the one a ledger with nothing kept
    writes."""
    import logging
    import random

    from diprocd.health import HealthChecks
    from diprocd.loop import Loop
    from diprocd.spec import CheckSpec

    clock, ops = FakeClock(), FakeOps()
    checks = HealthChecks(Loop(clock=clock.monotonic), None, clock,
                          logging.getLogger("test"), lambda: None)
    ops.changed = checks.follow
    check = CheckSpec("tcp", "127.0.0.1:9", interval=1, failures=2, grace=1,
                      timeout=1)
    procs = {name: P.Process(ProcessSpec(
        name=name, run="/bin/sleep", pid_file="/run/%s.pid" % name,
        check=check if name in "ac" else None), ops, clock)
        for name in "abcd"}
    for proc in procs.values():
        proc.want()
    book = ledger.Ledger(str(tmp_path / "w.pid"), "boot")

    def result(proc, ok):
        record = checks.records.get(proc)
        if record is not None and record.active:
            record.started = clock.now
            checks.result(record, ok, "out %s" % clock.now)

    steps = [lambda p: p.start(), lambda p: p.on_exit("killed by SIGKILL"),
             lambda p: p.stop(), lambda p: p.hold(), lambda p: p.release(),
             lambda p: p.retry(), lambda p: result(p, True),
             lambda p: result(p, False), lambda p: p.tick(clock.monotonic())]
    rng = random.Random(7)
    for step in range(400):
        proc = procs[rng.choice("abcd")]
        try:
            rng.choice(steps)(proc)
        except P.InvalidTransition:
            pass
        clock.now += rng.choice((0, 0.5, 3))
        book.write(7, "/etc/w.json", clock.now, procs)
        fresh = ledger.Ledger(str(tmp_path / "fresh.pid"), "boot")
        fresh.write(7, "/etc/w.json", clock.now, procs)
        assert open(book.status_path, "rb").read() == \
            open(fresh.status_path, "rb").read(), step
    states = {proc.state for proc in procs.values()}
    assert len(states) > 1, states
