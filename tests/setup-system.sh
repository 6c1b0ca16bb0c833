#!/bin/sh
# Install the Debian packages the tests use, when root and apt are there.
# Without them the tests that need them skip with the reason.
set -e
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v unshare >/dev/null 2>&1 || need="$need util-linux"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "tests/setup-system.sh: installing$need"
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null \
            || echo "tests/setup-system.sh: could not install$need; those tests will skip"
    else
        echo "tests/setup-system.sh: not root or no apt: tests needing$need will skip"
    fi
fi
