"""The fleet as the master sees it: each node's liveness and what it runs,
as ``dpdctl status`` shows it. Pure logic over what the master heard (no
sockets), so the rules are unit-tested with a fake clock.

Liveness, from the reports a node's client sends every ``interval`` seconds
(it says its interval; 5 s when it does not):

- ``never seen``: in the master file, no report ever;
- ``unknown``: reports, but is not in the master file;
- ``down``: nothing heard for more than ``silent_after`` seconds;
- ``late``: nothing heard for more than LATE_INTERVALS intervals;
- ``up``: otherwise.
"""

DEFAULT_INTERVAL = 5.0
LATE_INTERVALS = 2.5
UP = "up"
LATE = "late"
DOWN = "down"
NEVER_SEEN = "never seen"
UNKNOWN = "unknown"


def liveness(seen, configured, now, silent_after):
    """The liveness of a node (``seen``: what the master last heard from it,
    a master.NodeSeen, or None)."""
    if seen is None:
        return NEVER_SEEN if configured else UNKNOWN
    if not configured:
        return UNKNOWN
    quiet = now - seen.monotonic
    if quiet > silent_after:
        return DOWN
    if quiet > LATE_INTERVALS * (seen.interval or DEFAULT_INTERVAL):
        return LATE
    return UP


def node_status(name, seen, configured, now, silent_after, epoch, seq):
    """One node's entry of ``dpdctl status --json``."""
    live = liveness(seen, configured, now, silent_after)
    in_sync = seen is not None and seen.epoch == epoch and seen.seq == seq
    reason = None
    if not configured:
        reason = "not in the master file"
    elif seen is None:
        reason = "no report from this node yet"
    elif seen.rejected:
        reason = "rejected its list: " + seen.rejected
    elif not in_sync:
        reason = "holds seq %s of epoch %s, the master has seq %s" % (
            seen.seq, seen.epoch, seq)
    procs, tree = {}, None
    if seen is not None and isinstance(seen.status, dict) and isinstance(
            seen.status.get("procs"), dict):
        procs = seen.status["procs"]
        tree = seen.status.get("tree")
    return {"liveness": live, "in_sync": in_sync, "reason": reason,
            "quiet": None if seen is None else round(now - seen.monotonic, 1),
            "procs": procs, "tree": tree if isinstance(tree, dict) else None}


def as_desired(node):
    """A node is as desired when it is up, in sync and every process is."""
    return node["liveness"] == UP and node["in_sync"] and all(
        isinstance(entry, dict) and entry.get("ok")
        for entry in node["procs"].values())
