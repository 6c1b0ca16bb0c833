"""``dpdctl``: the operator's command line, for the whole cluster or one
node.

    dpdctl [--master CONFIG] status [NODE...] [--json]
    dpdctl [--master CONFIG] restart|stop|start NODE NAME...
    dpdctl [--master CONFIG] reload [NODE]
    dpdctl [--master CONFIG] tail NODE NAME [-n N]

    dpdctl --worker CONFIG status [--json]
    dpdctl --worker CONFIG restart|stop|start NAME...
    dpdctl --worker CONFIG reload
    dpdctl --worker CONFIG tail NAME [-n N]

    dpdctl --connect tcp://HOST:PORT --key FILE --master-key FILE VERB ...
    dpdctl keygen NAME [--dir DIR]

With the master (by default the CONFIG dpd-masterd takes without one,
``paths``: ``$DPD_MASTER_CONFIG``, else ``MASTER_CONFIG`` in
``/etc/default/diprocd``, else ``/var/lib/diprocd/diprocd-master.json``) it
talks to the master's ``master_control`` endpoint, which answers status
from what it heard and relays the rest to the node (its client asks its
worker); with ``--worker`` it talks to one worker's control socket.
A ``master_control`` endpoint over tcp takes CURVE only: ``--key`` is the
operator's secret key file (its public key in the master's
``curve_operators_dir``), ``--master-key`` the master's public key file
(default: derived from the master file's ``curve_secret_key`` when it is
readable, i.e. on the master). ``keygen`` writes a key pair.

Exit codes: 0 done (status: every node up, in sync, every process as
desired), 1 not as desired or the command failed (unknown node or process,
node down, timeout), 2 usage, 3 the master or worker cannot be reached (the
message names the endpoint).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import simplejson as json

from diprocd import (__version__, bus, fleet, jsonin, keys, kernel, paths,
                     status)
from diprocd.cli import pipe_safe
from diprocd.config import (load_master_control,
                            load_master_key_file, load_pid_file)
from diprocd.control import control_path, request
from diprocd.errors import ConfigError, ProtocolError

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
MASTER_TIMEOUT = 8.0  # the master waits 5 s for a node's answer
STATUS_TIMEOUT = 2.0  # the master's own answer
RESTART_POLL = 0.01
FLEET_HEADER = ("NODE", "LIVENESS") + status.PROCESS_HEADER
MASTER_PLACE = paths.DEFAULTS["dpd-masterd"]


class Unreachable(Exception):
    pass


class Usage(Exception):
    pass


class Failed(Exception):
    """The command reached its target and failed there (exit 1)."""


def make_parser():
    parser = argparse.ArgumentParser(
        prog="dpdctl", description="See and steer diprocd's processes.",
        epilog="exit status: 0 done (status: all as desired), 1 not as "
               "desired or failed, 2 usage, 3 master or worker not reachable")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __version__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--master", metavar="CONFIG",
                       help="the master's CONFIG (default: $%s, else %s "
                       "in %s, else %s)" % (
                           MASTER_PLACE.env, MASTER_PLACE.setting,
                           paths.DEFAULTS_FILE, MASTER_PLACE.default))
    where.add_argument("--worker", metavar="CONFIG",
                       help="one worker's CONFIG, without a master")
    where.add_argument("--connect", metavar="ENDPOINT",
                       help="the master's control endpoint (tcp: CURVE)")
    parser.add_argument("--key", metavar="FILE",
                        help="the operator's secret key file (CURVE)")
    parser.add_argument("--master-key", metavar="FILE",
                        help="the master's public key file (CURVE)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for verb, what in (("status", "the state of every node and process"),
                       ("restart", "stop then start, now"),
                       ("stop", "stop and keep stopped until start"),
                       ("start", "end an operator's stop"),
                       ("reload", "re-read CONFIG now (as SIGHUP)"),
                       ("tail", "the last lines of a process's logs")):
        sub = verbs.add_parser(verb, help=what)
        sub.add_argument("words", nargs="*", metavar="[NODE] NAME")
        if verb == "status":
            sub.add_argument("--json", action="store_true")
        if verb == "restart":
            sub.add_argument("--timeout", type=float, default=10.0,
                             help="seconds to wait for the new process")
        if verb == "tail":
            sub.add_argument("-n", "--lines", type=int, default=20)
    keygen = verbs.add_parser("keygen", help="write NAME.key (public) and "
                              "NAME.key_secret (secret), CURVE key files")
    keygen.add_argument("name", metavar="NAME")
    keygen.add_argument("--dir", default=".", help="where (default: here)")
    return parser


def split_words(args, with_node):
    """(node, names) from the positional words, or raise Usage."""
    words = list(args.words)
    node = words.pop(0) if with_node and words and args.verb not in (
        "status", "reload") else None
    if args.verb == "status":
        return None, words if with_node else _none(words, args)
    if args.verb == "reload":
        if len(words) > (1 if with_node else 0):
            raise Usage("reload takes %s" % ("at most a NODE" if with_node
                                            else "no argument"))
        return (words[0] if words else None), []
    if with_node and node is None:
        raise Usage("%s: name a NODE" % args.verb)
    if not words:
        raise Usage("%s: name a process" % args.verb)
    if args.verb == "tail" and len(words) != 1:
        raise Usage("tail: name one process")
    return node, words


def _none(words, args):
    if words:
        raise Usage("%s takes no NODE with --worker" % args.verb)
    return []


class WorkerLink:
    """Requests to the worker of one CONFIG."""

    def __init__(self, config_path):
        try:
            pid_file = load_pid_file(config_path)
        except ConfigError as err:
            raise Unreachable(err.problems[0])
        self.path = control_path(pid_file)

    def ask(self, cmd, node=None, **fields):
        try:
            return request(self.path, dict(fields, cmd=cmd))
        except (OSError, ProtocolError) as err:
            raise Unreachable("cannot reach the worker at %s: %s" % (
                self.path, getattr(err, "strerror", None) or err))


class MasterLink:
    """Requests to the master's control endpoint (a ZeroMQ REQ socket);
    over tcp a CURVE client with the operator's key."""

    def __init__(self, config_path=None, endpoint=None, key_file=None,
                 master_key_file=None):
        try:
            self.endpoint = endpoint or load_master_control(config_path)
            self.curve = None
            if not self.endpoint.startswith("ipc://"):
                self.curve = _operator_curve(config_path, key_file,
                                             master_key_file)
        except ConfigError as err:
            raise Unreachable(err.problems[0])
        import zmq  # only dpdctl's master path needs it
        self.zmq = zmq

    def ask(self, cmd, node=None, **fields):
        zmq = self.zmq
        if self.endpoint.startswith("ipc://") and not os.path.exists(
                self.endpoint[len("ipc://"):]):
            raise Unreachable("cannot reach the master at %s: no such socket "
                              "(is dpd-masterd running?)" % self.endpoint)
        body = dict(fields, v=1, cmd=cmd)
        if node is not None:
            body["node"] = node
        context = zmq.Context()
        sock = bus.socket(context, zmq.REQ)
        try:
            if self.curve is not None:
                keys.apply_to_socket(sock, zmq, self.curve[0],
                                     server_key=self.curve[1])
            sock.connect(self.endpoint)
            sock.send(json.dumps(body).encode("utf-8"))
            # The master answers status itself; the rest waits for a node.
            timeout = STATUS_TIMEOUT if cmd == "status" and node is None \
                else MASTER_TIMEOUT
            if not sock.poll(timeout * 1000):
                raise Unreachable("cannot reach the master at %s: no answer "
                                  "within %.0f s%s" % (
                                      self.endpoint, timeout,
                                      self.curve and " (is this operator's "
                                      "public key in the master's "
                                      "curve_operators_dir, and the master "
                                      "key the master's?)" or ""))
            data = sock.recv()
        except zmq.ZMQError as err:
            raise Unreachable("cannot reach the master at %s: %s"
                              % (self.endpoint, err))
        finally:
            sock.close()
            context.term()
        try:
            reply = jsonin.loads(data, "reply", ProtocolError, 64 << 20)
        except ProtocolError as err:
            raise Unreachable("%s: %s" % (self.endpoint, err))
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"),
                                                         bool):
            raise Unreachable("%s: not a diprocd master's reply"
                              % self.endpoint)
        return reply


def _operator_curve(config_path, key_file, master_key_file):
    """(operator's KeyPair, master's public key) for a tcp endpoint."""
    if not key_file:
        raise ConfigError("the master's control endpoint is not ipc: it "
                          "takes CURVE only; give --key (the operator's "
                          "secret key file)")
    pair = keys.read_key_file(key_file, "--key", secret=True)
    if master_key_file:
        return pair, keys.read_key_file(master_key_file, "--master-key").public
    secret_file = config_path and load_master_key_file(config_path)
    if not secret_file:
        raise ConfigError("give --master-key (the master's public key file)")
    return pair, keys.read_key_file(secret_file, "curve_secret_key",
                                    secret=True).public


def cmd_keygen(args):
    """NAME.key (0644) and NAME.key_secret (0600) in --dir, written by
    zmq.auth into a private folder there, then linked into place: link()
    refuses an existing name, so nothing is ever overwritten."""
    import zmq.auth  # only keygen and the master link need pyzmq
    name = args.name
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        return fail("keygen: NAME must be a plain file name (a node's name)")
    names = [name + keys.PUBLIC_SUFFIX, name + keys.SECRET_SUFFIX]
    targets = [os.path.join(args.dir, n) for n in names]
    taken = [t for t in targets if os.path.lexists(t)]
    if taken:
        return fail("keygen: %s already exists: not overwritten" % taken[0])
    try:
        scratch = tempfile.mkdtemp(prefix=".keygen-", dir=args.dir)
    except OSError as err:
        return fail("keygen: cannot write in %s: %s" % (args.dir, err.strerror))
    done = []
    try:
        written = zmq.auth.create_certificates(scratch, name)
        for path, target, mode in zip(written, targets, (0o644, 0o600)):
            os.chmod(path, mode)
            os.link(path, target)
            done.append(target)
    except OSError as err:
        for target in done:
            os.unlink(target)
        return fail("keygen: %s: %s" % (err.filename, err.strerror))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for target in targets:
        print(target)
    return EXIT_OK


def fleet_rows(nodes, now):
    rows = []
    for name, node in nodes.items():
        live = node["liveness"]
        ok_node = live == fleet.UP and node["in_sync"]
        prefix = (name, ("" if ok_node else "*") + live)
        procs = status.process_rows(node["procs"], now, prefix, local=False)
        if node["reason"] or not procs:
            rows.append((ok_node, name, prefix[1], "-", "-", "-", "-", "-",
                         node["reason"] or ""))
        rows.extend((ok and ok_node,) + tuple(cells)
                    for ok, *cells in procs)
    return rows


def cmd_status(link, args, node, names):
    reply = link.ask("status")
    if "nodes" not in reply:  # a worker: one node's processes
        procs = reply["procs"]
        ok = all(status.as_desired(entry) for entry in procs.values())
        if args.json:
            print(json.dumps({"worker_pid": reply["worker_pid"],
                              "config_error": reply["config_error"],
                              "tree": reply.get("tree"),
                              "procs": status.live_views(procs)}, indent=1,
                             sort_keys=True))
        else:
            text, ok = status.render(procs, time.time())
            print(text)
            line = status.tree_line(reply.get("tree"))
            if line:
                print(line)
            if reply.get("config_error"):
                print("warning: CONFIG is invalid now (the worker keeps the "
                      "last good one): %s" % reply["config_error"])
        # As dpd-workerd --status: an invalid CONFIG is not as desired.
        return EXIT_OK if ok and not reply.get("config_error") \
            else EXIT_NOT_OK
    nodes = reply["nodes"]
    unknown = [n for n in names if n not in nodes]
    if unknown:
        return fail("unknown node %s" % ", ".join('"%s"' % n for n in unknown))
    if names:
        nodes = {n: nodes[n] for n in names}
    # The pids are the nodes': their clients checked them (a gone one is
    # "dead" already); this machine's /proc says nothing about them.
    ok = all(fleet.as_desired(entry) for entry in nodes.values())
    if args.json:
        print(json.dumps({"nodes": nodes}, indent=1, sort_keys=True))
    else:
        print(status.table(FLEET_HEADER, fleet_rows(nodes, time.time())))
        for name, node in sorted(nodes.items()):
            line = status.tree_line(node.get("tree"))
            if line:
                print("%s: %s" % (name, line))
    for warning in reply.get("warnings") or ():
        print("warning: %s" % warning, file=sys.stderr)
    return EXIT_OK if ok else EXIT_NOT_OK


def _procs_of(link, node):
    """The worker's own view, live: through the master, a status relayed
    to that node (not the last report the master heard)."""
    reply = link.ask("status", node=node)
    if not reply["ok"]:
        raise Failed(reply["error"])
    return reply["procs"]


def cmd_restart(link, args, node, names):
    reply = link.ask("restart", node=node, names=names)
    if not reply["ok"]:
        return fail(reply["error"])
    old = reply["old_pids"]
    deadline = time.monotonic() + args.timeout
    waiting = set(names)
    while True:
        procs = _procs_of(link, node)
        for name in sorted(waiting):
            entry = procs.get(name, {})
            pid = entry.get("pid")
            if entry.get("state") == "running" and pid not in (
                    None, old.get(name)) and (node is not None
                                              or kernel.is_alive(pid)):
                print("%s: restarted, pid %d" % (name, pid))
                waiting.discard(name)
        if not waiting:
            return EXIT_OK
        if time.monotonic() > deadline:
            for name in sorted(waiting):
                entry = procs.get(name, {})
                why = status.note(entry, time.time())
                print("dpdctl: %s: not running %.0f s after the restart "
                      "(%s%s)" % (name, args.timeout, entry.get("state", "?"),
                                  ": " + why if why else ""), file=sys.stderr)
            return EXIT_NOT_OK
        time.sleep(RESTART_POLL)


def cmd_simple(link, args, node, names):
    fields = {"names": names} if names else {}
    reply = link.ask(args.verb, node=node, **fields)
    if not reply["ok"]:
        return fail(reply["error"])
    for name in names:
        print("%s: %s" % (name, {"stop": "stopped by operator",
                                 "start": "operator's stop ended"}[args.verb]))
    return EXIT_OK


def cmd_tail(link, args, node, names):
    reply = link.ask("tail", node=node, names=names, lines=args.lines)
    if not reply["ok"]:
        return fail(reply["error"])
    for line in reply["lines"]:
        print(line)
    return EXIT_OK


def fail(message):
    print("dpdctl: %s" % message, file=sys.stderr)
    return EXIT_NOT_OK


VERBS = {"status": cmd_status, "restart": cmd_restart, "stop": cmd_simple,
         "start": cmd_simple, "reload": cmd_simple, "tail": cmd_tail}


@pipe_safe
def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.verb == "keygen":
        return cmd_keygen(args)
    if getattr(args, "lines", 1) < 1 or getattr(args, "timeout", 1) <= 0:
        parser.error("-n and --timeout must be positive")
    if args.worker and (args.key or args.master_key):
        parser.error("--key and --master-key are for the master's tcp "
                     "endpoint, not --worker (its socket's rights decide)")
    try:
        node, names = split_words(args, with_node=args.worker is None)
    except Usage as err:
        parser.error(str(err))
    try:
        if args.worker:
            link = WorkerLink(args.worker)
        elif args.connect:
            link = MasterLink(endpoint=args.connect, key_file=args.key,
                              master_key_file=args.master_key)
        else:
            link = MasterLink(args.master
                              or paths.config_path("dpd-masterd")[0],
                              key_file=args.key,
                              master_key_file=args.master_key)
        return VERBS[args.verb](link, args, node, names)
    except Failed as err:
        return fail(str(err))
    except Unreachable as err:
        print("dpdctl: %s" % err, file=sys.stderr)
        return EXIT_UNREACHABLE
