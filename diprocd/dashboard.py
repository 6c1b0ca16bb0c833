"""dpd-masterd's read-only dashboard (GET / on ``http_listen``): one page,
inline CSS and script only (it works offline), that fetches
``/status.json`` (``metrics.fleet_view``) every REFRESH_MS and draws the
fleet: what is not as desired first, then the rest; every node with its
liveness and every process with its state. It shows only what
``status.json`` carries (no env: see ``metrics.PROCESS_FIELDS``)."""

REFRESH_MS = 1000

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>diprocd fleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
#summary { margin: 0 0 1em; color: #555; }
table { border-collapse: collapse; width: 100%%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; }
tr.bad td { background: #fde8e8; }
tr.node td { border-top: 2px solid #bbb; font-weight: 600; }
.up { color: #17702a; } .late { color: #a86a00; }
.down, .never, .unknown { color: #b3261e; }
#error { color: #b3261e; }
.warning { color: #a86a00; }
</style></head>
<body>
<h1>diprocd fleet</h1>
<p id="summary">loading&hellip;</p>
<p id="error"></p>
<div id="warnings"></div>
<table><thead><tr><th>node</th><th>liveness</th><th>in sync</th>
<th>process</th><th>state</th><th>pid</th><th>starts</th><th>last exit</th>
<th>why</th></tr></thead><tbody id="fleet"></tbody></table>
<script>
"use strict";
function cell(row, text, cls) {
  var td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) { td.className = cls; }
  row.appendChild(td);
}
function draw(doc) {
  var body = document.getElementById("fleet");
  var names = Object.keys(doc.nodes).sort();
  var bad = names.filter(function (n) { return !doc.nodes[n].as_desired; });
  var good = names.filter(function (n) { return doc.nodes[n].as_desired; });
  var rows = [];
  bad.concat(good).forEach(function (name) {
    var node = doc.nodes[name];
    var procs = Object.keys(node.procs).sort(function (a, b) {
      return (node.procs[a].ok ? 1 : 0) - (node.procs[b].ok ? 1 : 0) ||
        (a < b ? -1 : a > b ? 1 : 0);
    });
    var row = document.createElement("tr");
    row.className = "node" + (node.as_desired ? "" : " bad");
    row.dataset.node = name;
    cell(row, name);
    cell(row, node.liveness, node.liveness.split(" ")[0]);
    cell(row, node.in_sync ? "yes" : "no");
    cell(row, procs.length ? procs.length + " processes" : "no process");
    for (var i = 0; i < 4; i++) { cell(row, ""); }
    cell(row, node.reason);
    rows.push(row);
    procs.forEach(function (proc) {
      var entry = node.procs[proc];
      var r = document.createElement("tr");
      r.className = "proc" + (entry.ok ? "" : " bad");
      r.dataset.node = name;
      r.dataset.process = proc;
      r.dataset.state = entry.state;
      cell(r, ""); cell(r, ""); cell(r, "");
      cell(r, proc);
      cell(r, entry.state + (entry.held ? " (stopped by operator)" :
        entry.state === "backoff" && typeof entry.next_start === "number" ?
        " (next start " + new Date(entry.next_start * 1000)
          .toLocaleTimeString() + ")" : ""));
      cell(r, entry.pid);
      cell(r, entry.starts);
      cell(r, entry.last_exit);
      cell(r, entry.error);
      rows.push(r);
    });
  });
  body.replaceChildren.apply(body, rows);
  document.getElementById("summary").textContent =
    names.length + " nodes, " + bad.length + " not as desired; epoch " +
    doc.epoch + "; updated " + new Date(doc.time * 1000).toLocaleTimeString();
  var warnings = document.getElementById("warnings");
  warnings.replaceChildren.apply(warnings, doc.warnings.map(function (w) {
    var p = document.createElement("p");
    p.className = "warning";
    p.textContent = w;
    return p;
  }));
  document.getElementById("error").textContent = "";
}
function refresh() {
  fetch("status.json", {cache: "no-store"}).then(function (r) {
    if (!r.ok) { throw new Error("HTTP " + r.status); }
    return r.json();
  }).then(draw).catch(function (err) {
    document.getElementById("error").textContent =
      "cannot reach the master: " + err.message;
  }).finally(function () { setTimeout(refresh, %(refresh)d); });
}
refresh();
</script>
</body></html>
""" % {"refresh": REFRESH_MS}


def page():
    """(content type, body) of the dashboard."""
    return "text/html; charset=utf-8", PAGE.encode("utf-8")
