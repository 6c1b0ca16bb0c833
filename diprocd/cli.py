"""Command-line front ends of the three daemons.

All three share one shape (``run_daemon``): validate CONFIG (exit 1 on
error), take the pid file lock (a second instance prints "already running
(pid N)" and exits 0, touching nothing), daemonize unless ``-f``, log, run.

``--pid-file`` and ``--pid`` answer the init scripts' two questions (where is
the pid file, which pid runs) with LSB status codes, from CONFIG's
"pid_file" alone: a daemon whose CONFIG was broken after it started can
still be found, stopped and reported (``trust``'s checks of CONFIG do not
apply to them either: a daemon whose CONFIG became unsafe can be stopped).

``dpd-workerd --config-owner USER`` trusts USER too to own CONFIG and its
folders (``trust``): in the Debian package, dpd-clientd runs as the system
user ``diprocd`` and writes the worker's CONFIG. Without the option, that
user is trusted when it owns CONFIG's folder (``paths.package_config_owner``,
what the init script decides too).

Without CONFIG a command takes its file from ``paths``: the environment
(``DPD_WORKER_CONFIG``...), ``/etc/default/diprocd``, the package's default
under ``/var/lib/diprocd/``.
"""

import argparse
import functools
import os
import sys

from diprocd import __version__
from diprocd import config as config_mod
from diprocd import paths, preflight
from diprocd.config import load_pid_file
from diprocd.daemon import PidFile, daemonize, read_locked_pid, setup_logging
from diprocd.errors import AlreadyRunning, ConfigError

# LSB init script codes, which --pid and --pid-file follow: status 3 "not
# running", other actions 6 "not configured".
EXIT_NOT_RUNNING = 3
EXIT_NOT_CONFIGURED = 6

CONFIG_DEFAULT = """\
without CONFIG: $%s if set, else %s in
%s, else %s."""

EXIT_STATUS = """\
exit status: 0 done (also when the daemon already runs: it prints "already
running (pid N)"), 1 invalid CONFIG or the daemon could not start, 2 usage
error; --pid: 0 running (pid printed), 3 not running (nothing printed);
--pid and --pid-file: 6 no absolute "pid_file" can be read from CONFIG (one
line on stderr)."""


def config_owner(value):
    """--config-owner USER (a name or a uid) -> its uid; an unknown user is
    a usage error."""
    try:
        return config_mod.lookup_user(value).pw_uid
    except (KeyError, OverflowError, ValueError):
        raise argparse.ArgumentTypeError('unknown user "%s"' % value)


def make_parser(prog, description, worker=False):
    place = paths.DEFAULTS[prog]
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=CONFIG_DEFAULT % (
            place.env, place.setting, paths.DEFAULTS_FILE,
            place.default) + "\n" + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground and log to stderr")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages")
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--check", action="store_true",
                       help="validate CONFIG, print every error and warning "
                            "(also what would fail at start here), exit 0/1")
    if worker:
        query.add_argument("--status", action="store_true",
                           help="print the live state of every process; exit "
                                "0 when all are as desired, 1 otherwise")
    query.add_argument("--pid-file", action="store_true",
                       help='print the "pid_file" of CONFIG (read alone: the '
                            "rest of CONFIG may be invalid); exit 0, or 6")
    query.add_argument("--pid", action="store_true",
                       help="print the pid of the daemon running with CONFIG "
                            "(it holds its pid file's lock); exit 0, 3 when "
                            "it is not running, or 6")
    query.add_argument("--config-path", action="store_true",
                       help="print the CONFIG this command uses (given, or "
                            "the default: see below) and exit 0")
    parser.set_defaults(config_owner=None)
    if worker:
        parser.add_argument("--config-owner", metavar="USER",
                            type=config_owner,
                            help="trust USER too to own CONFIG and its "
                                 "folders (the user dpd-clientd runs as)")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __version__)
    parser.add_argument("config", metavar="CONFIG", nargs="?",
                        help="the JSON file (default: see below)")
    return parser


def default_config(prog, say_where=True):
    """CONFIG when the command line names none (``paths``); with
    ``say_where``, a line on stderr says where it came from when that file
    is missing, which is then the likely mistake."""
    path, origin = paths.config_path(prog)
    if say_where and not os.path.exists(path):
        print("%s: no CONFIG given: %s (%s) does not exist" % (
            prog, path, origin), file=sys.stderr)
    return path


def check_config(loader, path):
    """--check: print every problem and warning (stderr), what CONFIG
    resolves to and OK (stdout); return the exit code."""
    report = preflight.check(loader, path)
    for problem in report.errors:
        print("error: " + problem, file=sys.stderr)
    for warning in report.warnings:
        print("warning: " + warning, file=sys.stderr)
    if not report.ok:
        print("%s: invalid: %s, %s" % (
            path, _count(report.errors, "error"),
            _count(report.warnings, "warning")), file=sys.stderr)
        return 1
    for fact in report.facts:
        print("%s: %s" % (path, fact))
    print("%s: OK" % path)
    return 0


def _count(items, noun):
    return "%d %s%s" % (len(items), noun, "" if len(items) == 1 else "s")


def answer_pid_query(prog, args):
    """--pid-file or --pid: print the answer, return the LSB code."""
    try:
        pid_file = load_pid_file(args.config)
    except ConfigError as err:
        print("%s: %s" % (prog, err.problems[0]), file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    if args.pid_file:
        print(pid_file)
        return 0
    pid = read_locked_pid(pid_file)
    if pid is None:
        return EXIT_NOT_RUNNING
    print(pid)
    return 0


def run_daemon(prog, args, loader, app_factory):
    """Load, lock, detach, log and run ``app_factory(config, log).run()``."""
    args.config = os.path.abspath(args.config)  # daemonizing chdirs to /
    try:
        config = loader(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print("%s: error: %s" % (prog, problem), file=sys.stderr)
        return 1
    # One daemon a CONFIG, whatever pid_file says: its pid file may be
    # moving (a reload), or be stuck where the CONFIG no longer points.
    config_lock = PidFile(config_lock_path(args.config))
    try:
        config_lock.acquire()
    except AlreadyRunning as err:
        print("%s: %s" % (prog, err))
        return 0
    except OSError as err:
        print("%s: warning: cannot lock %s (%s): running without the "
              "one-daemon-a-CONFIG guard" % (prog, config_lock.path,
                                             err.strerror or err),
              file=sys.stderr)
        config_lock = None
    pid_file = PidFile(config.pid_file)
    try:
        pid_file.acquire()
    except AlreadyRunning as err:
        print("%s: %s" % (prog, err))
        return 0
    except OSError as err:
        print("%s: cannot open pid file %s: %s" % (prog, config.pid_file,
                                                    err.strerror or err),
              file=sys.stderr)
        return 1
    finally:
        if config_lock is not None and pid_file.fd is None:
            config_lock.release()
    try:
        locks = [pid_file.fd] + ([config_lock.fd] if config_lock else [])
        if not args.foreground:
            daemonize(preserve_fds=locks)
        pid_file.write_pid()
        if config_lock is not None:
            config_lock.write_pid()
        log = setup_logging(prog, args.foreground, args.verbose,
                            config.log_file, buffered=getattr(
                                app_factory, "BUFFERED_LOG", False))
        for warning in config.warnings:
            log.warning(warning)
        try:
            return app_factory(config, log, pid_lock=pid_file).run()
        except Exception:
            log.exception("%s: fatal error", prog)
            return 1
    finally:
        pid_file.release()
        if config_lock is not None:
            config_lock.release()


def config_lock_path(config_path):
    """``/var/lib/diprocd/worker.json`` -> ``/var/lib/diprocd/.worker.json.lock``
    (of the file a symlink points to: one lock for every path to it)."""
    folder, name = os.path.split(os.path.realpath(config_path))
    return os.path.join(folder, "." + name + ".lock")


def _app(module, name):
    """The daemon's class, imported only when it runs (the master's and the
    client's modules bring pyzmq)."""
    def factory(*args, **kwargs):
        import importlib
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return factory


# Each command: its description, its CONFIG loader, its daemon class, and
# whether it is the worker (--status, --config-owner).
COMMANDS = {
    "dpd-workerd": ("Supervise the processes defined in one JSON file.",
                    config_mod.load_worker_config,
                    _app("diprocd.worker", "Worker"), True),
    "dpd-masterd": ("Publish each node's process list.",
                    config_mod.load_master_config,
                    _app("diprocd.master", "Master"), False),
    "dpd-clientd": ("Receive this node's process list and rewrite the "
                    "worker's JSON file.", config_mod.load_client_config,
                    _app("diprocd.client", "Client"), False),
}


def main(prog, argv=None):
    """The command line of ``prog`` (one of COMMANDS)."""
    description, loader, app, is_worker = COMMANDS[prog]
    parser = make_parser(prog, description, worker=is_worker)
    args = parser.parse_args(argv)
    if args.config_path:
        print(args.config or paths.config_path(prog)[0])
        return 0
    if args.config is None:
        # --pid and --pid-file say what is wrong in one line (LSB codes).
        args.config = default_config(prog, say_where=not (args.pid_file
                                                          or args.pid))
    if args.pid_file or args.pid:
        return answer_pid_query(prog, args)
    owner = args.config_owner
    if is_worker and owner is None:
        owner = paths.package_config_owner(args.config)
    owners = () if owner is None else (owner,)
    loader = functools.partial(loader, owners=owners)
    if args.check:
        return check_config(loader, args.config)
    if is_worker and args.status:
        from diprocd import status
        return status.status_main(args.config, owners)
    return run_daemon(prog, args, loader, app)


def pipe_safe(entry):
    """``entry`` as a command's main: a reader gone before the end of the
    output (``--status | head``) ends the command quietly, status 1,
    instead of with a traceback."""
    @functools.wraps(entry)
    def run(argv=None):
        try:
            status = entry(argv)
            sys.stdout.flush()
            return status
        except BrokenPipeError:
            # Else Python complains again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return run


@pipe_safe
def workerd_main(argv=None):
    return main("dpd-workerd", argv)


@pipe_safe
def masterd_main(argv=None):
    return main("dpd-masterd", argv)


@pipe_safe
def clientd_main(argv=None):
    return main("dpd-clientd", argv)
