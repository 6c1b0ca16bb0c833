# shellcheck shell=sh
# /usr/lib/diprocd/init.sh: the body of /etc/init.d/dpd-workerd,
# dpd-clientd and dpd-masterd. Each of them sets NAME, DESC, CONFIG_VAR and
# OPTS_VAR (the names of its two variables below), then sources this file,
# which reads /etc/default/diprocd and runs the action in $1: the LSB ones,
# and "respawn" for the cron lines.
#
# The daemon answers the two questions about its pid file itself (see its
# man page): `$DAEMON --pid-file CONFIG` prints the "pid_file" of CONFIG,
# read alone so that a daemon whose CONFIG broke after it started can still
# be stopped; `$DAEMON --pid CONFIG` prints its pid while it runs, i.e.
# while it holds the flock of its pid file, which a stale pid file whose pid
# the kernel has since reused cannot fake. The daemon daemonizes itself and
# exits 0 at once when already running, so start-stop-daemon runs it
# without --background.
#
# dpd-clientd runs as the package's system user diprocd (debian/postinst
# makes it) when that user owns the folder of WORKER_CONFIG, the file the
# client rewrites; then dpd-workerd trusts that user to own its CONFIG
# (--config-owner). Otherwise (no such user, or an install from before it,
# whose worker file is in root's /var/lib/diprocd) both run as root.

PATH=/sbin:/usr/sbin:/bin:/usr/bin

# The defaults, written here only: /etc/default/diprocd overrides them.
DAEMON_DIR=/usr/bin
WORKER_CONFIG=/var/lib/diprocd/worker/diprocd-worker.json
CLIENT_CONFIG=/var/lib/diprocd/diprocd-client.json
MASTER_CONFIG=/var/lib/diprocd/diprocd-master.json
WORKER_OPTS=
CLIENT_OPTS=
MASTER_OPTS=
START_TIMEOUT=10
STOP_TIMEOUT=30

packaged_worker_config=$WORKER_CONFIG

[ -r /etc/default/diprocd ] && . /etc/default/diprocd

# Before the system user, the worker's file was in /var/lib/diprocd itself:
# an install from then keeps it there while it has none at the new default.
if [ "$WORKER_CONFIG" = "$packaged_worker_config" ] &&
        [ ! -e "$WORKER_CONFIG" ] && [ -e /var/lib/diprocd/diprocd-worker.json ]; then
    WORKER_CONFIG=/var/lib/diprocd/diprocd-worker.json
fi

DAEMON=$DAEMON_DIR/$NAME
eval "CONFIG=\${$CONFIG_VAR} OPTS=\${$OPTS_VAR}"

# Package removed but not purged.
[ -x "$DAEMON" ] || exit 0

# The client's user (see the top), or empty: root. run_as and chuid run the
# client as that user, from the cron line's respawn and from start.
client_user=diprocd
if ! id -u "$client_user" >/dev/null 2>&1 ||
        [ "$(stat -c %U -- "${WORKER_CONFIG%/*}" 2>/dev/null)" != "$client_user" ]; then
    client_user=
fi
run_as=
chuid=
if [ -n "$client_user" ]; then
    case "$NAME" in
        dpd-workerd)
            OPTS="--config-owner $client_user $OPTS"
            ;;
        dpd-clientd)
            run_as="setpriv --reuid=$client_user --regid=$client_user --init-groups --"
            chuid="--chuid $client_user:$client_user"
            ;;
    esac
fi

# What the client needs from root before it runs as its user: /run/diprocd
# for its pid file and the lock beside its CONFIG, both its own. The helper
# beside this body (INIT_BODY, set by the wrapper) does it, for
# dpd-clientd.service too.
prepare_client_user() {
    "${INIT_BODY%/*}/prepare-client" "$client_user" "$CONFIG"
}

case "$1" in
    # What cron/$NAME.cron runs every minute: start the daemon unless it
    # runs. The daemon itself refuses to run twice (its pid file's flock),
    # says "already running" on stdout (to /dev/null) and its errors on
    # stderr (mailed by cron). Under systemd (booted with it: the test of
    # sd_booted(3)) it does nothing: there /etc/init.d/$NAME start runs
    # $NAME.service, whose Restart=on-failure restarts a daemon that died,
    # and a daemon stopped with systemctl must stay stopped, not come back
    # outside systemd within the minute. Ahead of init-functions, which
    # would redirect it to systemctl.
    respawn)
        [ ! -d /run/systemd/system ] || exit 0
        [ -z "$run_as" ] || prepare_client_user
        # shellcheck disable=SC2086
        exec $run_as "$DAEMON" $OPTS "$CONFIG" >/dev/null
        ;;
    start|stop|status|restart|force-reload|reload) ;;
    *)
        echo "Usage: /etc/init.d/$NAME {start|stop|status|restart|force-reload|reload|respawn}" >&2
        exit 3
        ;;
esac

. /lib/lsb/init-functions

# The pid of the running daemon, printed; false when it is not running.
running_pid() {
    "$DAEMON" --pid "$CONFIG"
}

# Wait up to START_TIMEOUT seconds for the detached daemon to lock and fill
# its pid file (each query starts a Python: count seconds, not tries).
wait_started() {
    deadline=$(($(date +%s) + START_TIMEOUT))
    until running_pid >/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

do_start() {
    if pid=$(running_pid); then
        log_progress_msg "already running (pid $pid)"
        return 0
    fi
    # Nobody holds the lock: a pid file left by a killed daemon. Remove it so
    # start-stop-daemon does not take a reused pid for our daemon.
    rm -f "$PIDFILE"
    [ -z "$run_as" ] || prepare_client_user
    # shellcheck disable=SC2086
    start-stop-daemon --start --quiet --pidfile "$PIDFILE" $chuid \
        --startas "$DAEMON" -- $OPTS "$CONFIG" || return 1
    wait_started
}

do_stop() {
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        return 0
    fi
    # --pid, not --pidfile: the pid the lock vouches for.
    start-stop-daemon --stop --quiet --retry="TERM/$STOP_TIMEOUT/KILL/5" \
        --pid "$pid"
    rc=$?
    # A clean exit removes the pid file; after a SIGKILL we do.
    running_pid >/dev/null || rm -f "$PIDFILE"
    [ "$rc" -le 1 ]
}

do_reload() {
    start-stop-daemon --stop --quiet --signal HUP --pid "$1"
}

if ! PIDFILE=$("$DAEMON" --pid-file "$CONFIG" 2>/dev/null); then
    if [ ! -r "$CONFIG" ]; then
        problem="$NAME is not configured: no $CONFIG"
    else
        # The daemon's own line: which key is wrong, or why CONFIG is unreadable.
        problem=$("$DAEMON" --pid-file "$CONFIG" 2>&1 >/dev/null)
    fi
    case "$1" in
        # LSB: status 3 = not running, 4 = unknown; stopping a service that
        # cannot be running succeeds; other actions 6 = not configured.
        status) log_failure_msg "$problem"
                if [ -r "$CONFIG" ]; then exit 4; else exit 3; fi ;;
        stop)   [ -r "$CONFIG" ] || exit 0
                log_failure_msg "$problem"; exit 1 ;;
        *)      log_failure_msg "$problem"; exit 6 ;;
    esac
fi

case "$1" in
    start)
        log_daemon_msg "Starting $DESC" "$NAME"
        do_start
        log_end_msg $?
        ;;
    stop)
        log_daemon_msg "Stopping $DESC" "$NAME"
        do_stop
        log_end_msg $?
        ;;
    status)
        if pid=$(running_pid); then
            log_success_msg "$NAME is running (pid $pid)"
            exit 0
        elif [ -e "$PIDFILE" ]; then
            log_failure_msg "$NAME is not running but $PIDFILE exists"
            exit 1
        else
            log_failure_msg "$NAME is not running"
            exit 3
        fi
        ;;
    reload)
        log_daemon_msg "Reloading $DESC configuration" "$NAME"
        if ! pid=$(running_pid); then
            log_progress_msg "not running"
            log_end_msg 7
            exit 7
        fi
        do_reload "$pid"
        log_end_msg $?
        ;;
    force-reload)
        if pid=$(running_pid); then
            log_daemon_msg "Reloading $DESC configuration" "$NAME"
            do_reload "$pid"
            log_end_msg $?
        else
            log_daemon_msg "Starting $DESC" "$NAME"
            do_start
            log_end_msg $?
        fi
        ;;
    restart)
        log_daemon_msg "Restarting $DESC" "$NAME"
        if do_stop; then
            do_start
            log_end_msg $?
        else
            log_end_msg 1
        fi
        ;;
esac
exit $?
