#!/bin/sh
# Install the Debian packages the tests use, when root and apt are there.
# Without them the tests that need them skip with the reason.
# Services are not started by the install (policy-rc.d): the tests start
# their own instances on free loopback ports.
set -e
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v unshare >/dev/null 2>&1 || need="$need util-linux"
# tests/test_faults.py jumps a worker's wall clock (libfaketime, the worker's
# process only; its monotonic clock stays real).
command -v faketime >/dev/null 2>&1 || need="$need faketime"
# tests/test_curve_capture.py captures loopback traffic.
command -v tcpdump >/dev/null 2>&1 || need="$need tcpdump"
# tests/test_dashboard_browser.py looks at the master's dashboard in a real
# browser, headless.
command -v chromium >/dev/null 2>&1 || need="$need chromium"
# The init script tests run the daemons under Debian's python3 (as the .deb
# does); the package test builds and lints the .deb; tests/test_deb_install.py
# installs it in a debootstrapped Debian 12 root (ip: its loopback);
# tests/test_manpages.py renders the man pages. gcc and libc6-dev build
# dpd-exec (lib/dpd-exec.c: make dpd-exec, tests/conftest.py, debian/rules).
for pkg in gcc libc6-dev python3-zmq python3-simplejson python3-daemon python3-nacl \
           python3-prometheus-client \
           debhelper dh-python python3-all python3-setuptools fakeroot lintian \
           insserv logrotate debootstrap iproute2 groff-base man-db; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || need="$need $pkg"
done
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "tests/setup-system.sh: installing$need"
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            policy=yes
        fi
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null \
            || echo "tests/setup-system.sh: could not install$need; those tests will skip"
        [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
    else
        echo "tests/setup-system.sh: not root or no apt: tests needing$need will skip"
    fi
fi
