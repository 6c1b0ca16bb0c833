"""The master file under churn: random valid changes of the nodes' lists,
drawn from a seeded ``random.Random``, and what each process definition
should come to once the churn stops.

Every definition carries a token unique to it in the argv of its program
(``/bin/sleep 1000000.000042``, ``/bin/sh -c 'exit 1' 0.000043``...), so
that its live instances are found by the token alone; a changed
definition gets a new token. The kinds, and what each comes to:

- ``sleeper``: runs for good (``running``), with or without ``restart``;
- ``stubborn``: the same, ignoring SIGTERM: a stop escalates to SIGKILL
  after its short ``stop_timeout``;
- ``daemon``: a forking daemon (``daemon: true``) whose launcher writes
  the pid of a background sleep in its own pid file (``running``);
- ``brief``: sleeps a fraction of a second: with ``restart`` restarted
  until its ``give_up_after: 5`` gives it up (``given-up``), else
  ``exited``;
- ``crasher``: ``exit 1`` at once: the same, ``given-up`` with
  ``restart``, else ``exited``;
- ``once``: ``exit 0``, no ``restart``: ``exited``.
"""

import dataclasses
import os

from helpers import process_doc

RUNNING, GIVEN_UP, EXITED = "running", "given-up", "exited"
# Kinds and their weights in an added or changed definition.
KINDS = (("sleeper", 6), ("stubborn", 2), ("daemon", 1), ("brief", 2),
         ("crasher", 1), ("once", 1))
MAX_PROCS = 8  # per node


@dataclasses.dataclass
class Definition:
    """One process definition of the master file."""
    token: str
    kind: str
    expect: str  # RUNNING, GIVEN_UP or EXITED once the churn stops
    doc: dict


class Lists:
    """The nodes' lists (a node may be absent from the master file) and the
    random changes of them. ``document()`` is the master file's ``nodes``."""

    def __init__(self, rng, marker, node_names, daemon_dirs, user):
        self.rng = rng
        self.marker = marker
        self.user = user
        self.daemon_dirs = daemon_dirs  # node -> folder of daemons' pid files
        self.nodes = {name: {} for name in node_names}  # None: absent
        self._removed = {name: set() for name in node_names}  # names once used
        self._serial = 0

    # -- what the master file holds ------------------------------------------

    def document(self):
        return {node: [d.doc for d in procs.values()]
                for node, procs in self.nodes.items() if procs is not None}

    @property
    def made(self):
        """How many definitions the churn made."""
        return self._serial

    def wanted(self, node):
        """{name: Definition} the node must run (none once removed)."""
        return dict(self.nodes[node] or {})

    def definitions(self):
        return [d for procs in self.nodes.values() if procs
                for d in procs.values()]

    # -- the changes ----------------------------------------------------------

    def churn(self):
        """One save of the master file: one to three random edits; returns
        them as (edit, node)."""
        return [self._edit() for _ in range(self.rng.choice((1, 1, 1, 2, 3)))]

    def _edit(self):
        rng = self.rng
        node = rng.choice(sorted(self.nodes))
        procs = self.nodes[node]
        edit = rng.choices(("add", "add several", "remove", "change", "move",
                            "reuse a name", "drop node", "unchanged"),
                           (5, 1, 3, 4, 1, 1, 0.4, 0.4))[0]
        if procs is None:
            self.nodes[node] = {}
            for _ in range(rng.randint(1, 4)):
                self.add(node)
            return "node back", node
        if edit in ("add", "add several", "reuse a name") \
                and len(procs) >= MAX_PROCS:
            edit = "remove"
        if edit in ("remove", "change", "move") and not procs:
            edit = "add"
        if edit == "reuse a name" and not self._removed[node] - set(procs):
            edit = "add"
        if edit == "add":
            self.add(node)
        elif edit == "add several":  # a burst of starts
            for _ in range(min(rng.randint(2, 4), MAX_PROCS - len(procs))):
                self.add(node)
        elif edit == "reuse a name":
            # Added again, another definition, maybe while the old one
            # still stops.
            self.add(node, rng.choice(sorted(self._removed[node]
                                             - set(procs))))
        elif edit == "remove":
            self._remove(node, rng.choice(sorted(procs)))
        elif edit == "change":
            self.add(node, rng.choice(sorted(procs)))
        elif edit == "move":
            name = rng.choice(sorted(procs))
            other = rng.choice(sorted(set(self.nodes) - {node}))
            self._remove(node, name)
            if self.nodes[other] is None or name in self.nodes[other] or len(
                    self.nodes[other]) >= MAX_PROCS:
                edit = "remove"
            else:
                self.add(other, name)
        elif edit == "drop node":
            self._removed[node].update(procs)
            self.nodes[node] = None
        return edit, node

    def add(self, node, name=None, kind=None):
        """A new definition on ``node``, named ``name`` (a change) or a new
        name, of ``kind`` (else one drawn), depending now and then on
        processes of the node that run for good. A change to a kind that
        does not run for good changes those that depend on it too."""
        self._serial += 1
        if name is None:
            name = "p%d" % self._serial
        procs = self.nodes[node]
        if kind is None:
            kind = self.rng.choices([k for k, _ in KINDS],
                                    [w for _, w in KINDS])[0]
        definition = getattr(self, "_" + kind)(node, name, self._serial)
        # Never on itself nor on what depends on it: no cycle.
        candidates = sorted(other for other, d in procs.items()
                            if d.expect == RUNNING and other not in
                            self._dependents(node, name) | {name})
        if candidates and self.rng.random() < 0.25:
            definition.doc["depends"] = self.rng.sample(
                candidates, min(len(candidates), self.rng.choice((1, 2))))
        procs[name] = definition
        if definition.expect != RUNNING:
            self._drop_dependencies_on(node, name)

    def _remove(self, node, name):
        del self.nodes[node][name]
        self._removed[node].add(name)
        self._drop_dependencies_on(node, name)

    def _drop_dependencies_on(self, node, name):
        """Those that depend on ``name`` get a new definition (of the same
        kind) without it."""
        procs = self.nodes[node]
        for other in sorted(procs):
            if name in procs[other].doc.get("depends", ()):
                self.add(node, other, procs[other].kind)
                procs[other].doc["depends"] = [
                    dep for dep in procs[other].doc.get("depends", ())
                    if dep != name]

    def _dependents(self, node, name):
        """The names that depend on ``name``, directly or not."""
        procs, found, todo = self.nodes[node], set(), [name]
        while todo:
            current = todo.pop()
            for other, definition in procs.items():
                if current in definition.doc.get("depends", ()) \
                        and other not in found:
                    found.add(other)
                    todo.append(other)
        return found

    def _fields(self, **fields):
        """Fields every definition gets, some drawn at random."""
        rng = self.rng
        fields.setdefault("restart", rng.random() < 0.8)
        fields.update(user=self.user, cwd=rng.choice(("/", "/tmp")),
                      umask=rng.choice(("022", "077")),
                      env={"CHAOS_SERIAL": str(self._serial)})
        return fields

    def _proc(self, kind, expect, token, name, run, *args, **fields):
        doc = process_doc(self.marker, name, run, *args,
                          **self._fields(**fields))
        if callable(expect):
            expect = expect(doc["restart"])
        return Definition(token, kind, expect, doc)

    # The kinds: (node, name, serial) -> Definition.
    def _sleeper(self, node, name, serial):
        token = "1000000.%06d" % serial
        return self._proc("sleeper", RUNNING, token, name, "/bin/sleep", token)

    def _stubborn(self, node, name, serial):
        token = "1000000.%06d" % serial
        return self._proc("stubborn", RUNNING, token, name, "/bin/sh", "-c",
                          'trap "" TERM; exec /bin/sleep "$0"', token,
                          stop_timeout=self.rng.choice((0.2, 0.5, 1)))

    def _daemon(self, node, name, serial):
        token = "1000000.%06d" % serial
        pid_file = os.path.join(self.daemon_dirs[node], "%s.pid" % token)
        proc = self._proc(
            "daemon", RUNNING, token, name, "/bin/sh", "-c",
            '/bin/sleep "$CHAOS_TOKEN" & echo $! > "$CHAOS_PID_FILE"',
            daemon=True, write_pid=False, pid_file=pid_file)
        # In the environment: the launcher's argv must not hold the token.
        proc.doc["env"].update(CHAOS_TOKEN=token, CHAOS_PID_FILE=pid_file)
        return proc

    def _brief(self, node, name, serial):
        # Sleeps 0.2 to 0.8 s: the digits after are the serial.
        token = "0.%d%06d" % (self.rng.randint(2, 8), serial)
        return self._proc("brief", lambda restart: GIVEN_UP if restart
                          else EXITED, token, name, "/bin/sleep", token,
                          **self._giving_up())

    def _crasher(self, node, name, serial):
        token = "0.%06d" % serial
        return self._proc("crasher", lambda restart: GIVEN_UP if restart
                          else EXITED, token, name, "/bin/sh", "-c", "exit 1",
                          token, **self._giving_up())

    @staticmethod
    def _giving_up():
        """A short-lived kind's restart policy: given up after 5 quick
        failures, as the seed's start limit did (without it the worker
        would back off and retry them for good). Nothing drawn: a seed
        replays the schedule it drew before the restart policy."""
        return {"give_up_after": 5}

    def _once(self, node, name, serial):
        token = "0.%06d" % serial
        return self._proc("once", EXITED, token, name, "/bin/sh", "-c",
                          "exit 0", token, restart=False)
