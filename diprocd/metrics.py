"""What dpd-masterd shows on its HTTP listener (``http_listen``): the fleet
as ``dpdctl status`` sees it, as Prometheus metrics and as the dashboard's
``status.json``.

One source: both are built at request time from ``Steering.status()``
(``fleet.node_status`` of every node), so they show what ``dpdctl status``
shows. Both only read the master's state.

No secrets: a process's entry is cut down to the fields of
``PROCESS_FIELDS`` (what the worker's status view carries: no env, no
arguments), whatever a node's client sent.

The metrics (``diprocd_`` prefix; a label ``node``, and ``process`` for
the per-process ones):

- ``node_liveness{state}``: 1 for the node's liveness (``up``, ``late``,
  ``down``, ``never seen``, ``unknown``), 0 for the others;
- ``node_in_sync``: 1 when the node holds the master's current list;
- ``node_last_report_age_seconds``: seconds since its last report;
- ``process_state{state}``: 1 for the process's state, 0 for the others;
- ``process_as_desired``: 1 when the process is as desired;
- ``process_starts_total``: starts since its worker took it on;
- ``process_start_time_seconds`` and ``process_uptime_seconds``: of a
  running process (wall clock of its node);
- ``process_next_start_time_seconds``: when a process in ``backoff``
  starts again (wall clock of its node);
- ``process_last_exit_info{how}``: how it ended last ("exit status 1",
  "killed by SIGKILL");
- ``master_publishes_total``, ``master_reports_total``,
  ``master_dropped_reports_total`` (malformed or refused: the nodes file's
  ``dropped_reports``), ``master_info{epoch}``.
"""

import time

from diprocd import fleet
from diprocd.process import STATES

LIVENESS = (fleet.UP, fleet.LATE, fleet.DOWN, fleet.NEVER_SEEN, fleet.UNKNOWN)
# What leaves the master of each process's status entry (ledger.view_of).
PROCESS_FIELDS = ("state", "pid", "started_at", "since", "starts",
                  "last_exit", "error", "adopted", "ok", "held",
                  "next_start")
NODE_FIELDS = ("liveness", "in_sync", "reason", "quiet")


def fleet_view(master):
    """The fleet for the dashboard: ``dpdctl status --json``'s document,
    each process cut down to PROCESS_FIELDS, with ``as_desired`` per node."""
    status = master.steering.status()
    nodes = {}
    for name, node in status["nodes"].items():
        view = {key: node[key] for key in NODE_FIELDS}
        view["procs"] = {
            str(proc): {key: entry.get(key) for key in PROCESS_FIELDS}
            for proc, entry in sorted(node["procs"].items())
            if isinstance(entry, dict)}
        view["as_desired"] = fleet.as_desired(node)
        nodes[name] = view
    return {"epoch": status["epoch"], "time": time.time(), "nodes": nodes,
            "warnings": status["warnings"]}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


class FleetCollector:
    """A prometheus_client collector that reads ``master`` at scrape time."""

    def __init__(self, master):
        self.master = master

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily,
                                            GaugeMetricFamily)
        master = self.master
        nodes = master.steering.status()["nodes"]
        now = time.time()

        def gauge(name, doc, labels):
            return GaugeMetricFamily("diprocd_" + name, doc, labels=labels)

        liveness = gauge("node_liveness", "1 for the node's liveness as "
                         "dpdctl status shows it, 0 for the others",
                         ["node", "state"])
        in_sync = gauge("node_in_sync", "1 when the node holds the master's "
                        "current list", ["node"])
        age = gauge("node_last_report_age_seconds", "Seconds since the "
                    "node's last report", ["node"])
        state = gauge("process_state", "1 for the process's state, 0 for "
                      "the others", ["node", "process", "state"])
        desired = gauge("process_as_desired", "1 when the process is as "
                        "desired", ["node", "process"])
        starts = CounterMetricFamily(
            "diprocd_process_starts", "Starts of the process since its "
            "worker took it on", labels=["node", "process"])
        started = gauge("process_start_time_seconds", "When the running "
                        "process started (its node's wall clock)",
                        ["node", "process"])
        uptime = gauge("process_uptime_seconds", "Seconds the running "
                       "process has run", ["node", "process"])
        next_start = gauge("process_next_start_time_seconds", "When the "
                           "process in backoff starts again (its node's "
                           "wall clock)", ["node", "process"])
        last_exit = gauge("process_last_exit_info", "How the process ended "
                          "last", ["node", "process", "how"])
        for name, node in nodes.items():
            for word in LIVENESS:
                liveness.add_metric([name, word],
                                    int(node["liveness"] == word))
            in_sync.add_metric([name], int(bool(node["in_sync"])))
            if node["quiet"] is not None:
                age.add_metric([name], node["quiet"])
            for proc, entry in sorted(node["procs"].items()):
                if not isinstance(entry, dict):
                    continue
                labels = [name, str(proc)]
                current = str(entry.get("state"))
                for word in STATES + (
                        () if current in STATES else (current,)):
                    state.add_metric(labels + [word], int(current == word))
                desired.add_metric(labels, int(bool(entry.get("ok"))))
                if _number(entry.get("starts")) is not None:
                    starts.add_metric(labels, entry["starts"])
                begun = _number(entry.get("started_at"))
                if current == "running" and begun is not None:
                    started.add_metric(labels, begun)
                    uptime.add_metric(labels, max(0.0, now - begun))
                due = _number(entry.get("next_start"))
                if current == "backoff" and due is not None:
                    next_start.add_metric(labels, due)
                if isinstance(entry.get("last_exit"), str):
                    last_exit.add_metric(labels + [entry["last_exit"]], 1)
        yield from (liveness, in_sync, age, state, desired, starts, started,
                    uptime, next_start, last_exit)
        counts = master.counts
        for name, value, doc in (
                ("publishes", counts["publishes"], "Lists published"),
                ("reports", counts["reports"], "Reports heard from nodes"),
                ("dropped_reports", master.drops.count + master.refusals.count,
                 "Reports dropped: malformed, or refused (CURVE)")):
            yield CounterMetricFamily("diprocd_master_" + name, doc,
                                      value=value)
        info = gauge("master_info", "The master's epoch", ["epoch"])
        info.add_metric([master.lists.epoch], 1)
        yield info


def registry(master):
    """A CollectorRegistry holding only the fleet's collector."""
    from prometheus_client import CollectorRegistry
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(master))
    return reg


def exposition(reg):
    """(content type, body) of a scrape of ``reg``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    return CONTENT_TYPE_LATEST, generate_latest(reg)
