"""``dpdctl``: the operator's command line.

This version talks to one node's worker directly (``--worker CONFIG``),
through the control socket beside the worker's pid file (``control.py``).

    dpdctl --worker CONFIG status [--json]
    dpdctl --worker CONFIG restart NAME... [--timeout S]
    dpdctl --worker CONFIG stop NAME...
    dpdctl --worker CONFIG start NAME...
    dpdctl --worker CONFIG reload
    dpdctl --worker CONFIG tail NAME [-n N]

Exit codes: 0 done (status: every process as desired), 1 not as desired or
the command failed (unknown process, timeout), 2 usage, 3 the worker cannot
be reached (the message names the socket).
"""

import argparse
import sys
import time

import simplejson as json

from diprocd import __version__, kernel, status
from diprocd.config import load_pid_file
from diprocd.control import control_path, request
from diprocd.errors import ConfigError, ProtocolError

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_WORKER_CONFIG = "/var/lib/diprocd/diprocd-worker.json"
RESTART_POLL = 0.01


class Unreachable(Exception):
    pass


def make_parser():
    parser = argparse.ArgumentParser(
        prog="dpdctl", description="Control diprocd's processes.",
        epilog="exit status: 0 done (status: all as desired), 1 not as "
               "desired or failed, 2 usage, 3 worker not reachable")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __version__)
    parser.add_argument("--worker", metavar="CONFIG",
                        default=DEFAULT_WORKER_CONFIG,
                        help="the worker's CONFIG (default %(default)s)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    status = verbs.add_parser("status", help="the state of every process")
    status.add_argument("--json", action="store_true")
    restart = verbs.add_parser("restart", help="stop then start, now")
    restart.add_argument("names", nargs="+", metavar="NAME")
    restart.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for the new process")
    for verb, what in (("stop", "stop and keep stopped until start"),
                       ("start", "end an operator's stop")):
        verbs.add_parser(verb, help=what).add_argument(
            "names", nargs="+", metavar="NAME")
    verbs.add_parser("reload", help="re-read CONFIG now (as SIGHUP)")
    tail = verbs.add_parser("tail", help="the last lines of a process's logs")
    tail.add_argument("names", nargs=1, metavar="NAME")
    tail.add_argument("-n", "--lines", type=int, default=20)
    return parser


class WorkerLink:
    """Requests to the worker of one CONFIG."""

    def __init__(self, config_path):
        try:
            pid_file = load_pid_file(config_path)
        except ConfigError as err:
            raise Unreachable(err.problems[0])
        self.path = control_path(pid_file)

    def ask(self, cmd, **fields):
        try:
            return request(self.path, dict(fields, cmd=cmd))
        except (OSError, ProtocolError) as err:
            raise Unreachable("cannot reach the worker at %s: %s" % (
                self.path, getattr(err, "strerror", None) or err))


def cmd_status(link, args):
    reply = link.ask("status")
    procs = reply["procs"]
    ok = all(status.as_desired(entry) for entry in procs.values())
    if args.json:
        print(json.dumps({"worker_pid": reply["worker_pid"],
                          "config_error": reply["config_error"],
                          "procs": {name: dict(entry, ok=status.as_desired(
                              entry), state=status.live_state(entry))
                              for name, entry in procs.items()}},
                         indent=1, sort_keys=True))
    else:
        text, ok = status.render(procs, time.time())
        print(text)
        if reply.get("config_error"):
            print("warning: CONFIG is invalid now (the worker keeps the last "
                  "good one): %s" % reply["config_error"])
    return EXIT_OK if ok else EXIT_NOT_OK


def cmd_restart(link, args):
    reply = link.ask("restart", names=args.names)
    if not reply["ok"]:
        return fail(reply["error"])
    old = reply["old_pids"]
    deadline = time.monotonic() + args.timeout
    waiting = set(args.names)
    while True:
        procs = link.ask("status")["procs"]
        for name in sorted(waiting):
            entry = procs.get(name, {})
            if entry.get("state") == "running" and entry.get("pid") not in (
                    None, old.get(name)) and kernel.is_alive(entry["pid"]):
                print("%s: restarted, pid %d" % (name, entry["pid"]))
                waiting.discard(name)
        if not waiting:
            return EXIT_OK
        if time.monotonic() > deadline:
            for name in sorted(waiting):
                entry = procs.get(name, {})
                why = status.note(entry)
                print("dpdctl: %s: not running %.0f s after the restart "
                      "(%s%s)" % (name, args.timeout, entry.get("state", "?"),
                                  ": " + why if why else ""), file=sys.stderr)
            return EXIT_NOT_OK
        time.sleep(RESTART_POLL)


def cmd_simple(link, args):
    fields = {"names": args.names} if hasattr(args, "names") else {}
    reply = link.ask(args.verb, **fields)
    if not reply["ok"]:
        return fail(reply["error"])
    for name in getattr(args, "names", ()):
        print("%s: %s" % (name, {"stop": "stopped by operator",
                                 "start": "operator's stop ended"}[args.verb]))
    return EXIT_OK


def cmd_tail(link, args):
    reply = link.ask("tail", names=args.names, lines=args.lines)
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


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "lines", 1) < 1 or getattr(args, "timeout", 1) <= 0:
        parser.error("-n and --timeout must be positive")
    try:
        link = WorkerLink(args.worker)
        return VERBS[args.verb](link, args)
    except Unreachable as err:
        print("dpdctl: %s" % err, file=sys.stderr)
        return EXIT_UNREACHABLE
