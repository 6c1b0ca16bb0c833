"""The liveness rules of dpdctl status, with a fake clock."""

from diprocd import fleet
from diprocd.master import NodeSeen

SILENT_AFTER = 15.0


def seen(at, interval=None, **fields):
    return NodeSeen(time=1e9 + at, monotonic=at, kind="status",
                    interval=interval, **fields)


def test_liveness_rules():
    configured = True
    assert fleet.liveness(None, configured, 100, SILENT_AFTER) == "never seen"
    assert fleet.liveness(None, False, 100, SILENT_AFTER) == "unknown"
    assert fleet.liveness(seen(100), False, 100, SILENT_AFTER) == "unknown"
    # Reports every 2 s: late past 2.5 intervals, down past silent_after.
    node = seen(100, interval=2.0)
    assert fleet.liveness(node, configured, 104.9, SILENT_AFTER) == "up"
    assert fleet.liveness(node, configured, 105.1, SILENT_AFTER) == "late"
    assert fleet.liveness(node, configured, 115.0, SILENT_AFTER) == "late"
    assert fleet.liveness(node, configured, 115.1, SILENT_AFTER) == "down"
    # No interval said: the client's default, 5 s.
    assert fleet.liveness(seen(100), configured, 112, SILENT_AFTER) == "up"
    assert fleet.liveness(seen(100), configured, 113, SILENT_AFTER) == "late"


def test_node_status_says_why_it_is_not_in_sync():
    entry = fleet.node_status("n", seen(100, epoch="e", seq=1), True, 101,
                              SILENT_AFTER, "e", 2)
    assert entry["in_sync"] is False and "seq 1" in entry["reason"]
    rejected = seen(100, epoch="e", seq=1, rejected='field "run": bad')
    entry = fleet.node_status("n", rejected, True, 101, SILENT_AFTER, "e", 2)
    assert entry["reason"] == 'rejected its list: field "run": bad'
    good = seen(100, epoch="e", seq=2,
                status={"procs": {"a": {"state": "running", "ok": True}}})
    entry = fleet.node_status("n", good, True, 101, SILENT_AFTER, "e", 2)
    assert entry["in_sync"] and entry["reason"] is None
    assert fleet.as_desired(entry)
    assert not fleet.as_desired(dict(entry, liveness="late"))
