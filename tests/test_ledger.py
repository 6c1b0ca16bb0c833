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
