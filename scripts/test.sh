#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run it.
#   bash scripts/test.sh [pytest args...]
# Needs python3 (>= 3.11) with venv. As root on Debian it also installs docker-compose
# (to validate docker-compose.yml without a Docker engine), PostgreSQL (multi-controller
# tests) and Chromium (the HTML report and web console tests) when they are missing;
# without them those tests are skipped with a reason (the console tests fail when CI is set).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,postgres]'
# The editable install leaves the project's modules uncompiled, and with
# PYTHONDONTWRITEBYTECODE set (some CI images set it) every gatewayctl, controller and test
# worker process would compile all of them from source again: 0.12-0.25 s of each CLI
# command's 1.2-1.4 s (docs/benchmarks.md). Compiled once here; Python still reads them.
.venv/bin/python -m compileall -q controlplane bench >/dev/null

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    # headless browser for the HTML analytics report and the web console tests
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (apt)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
            || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped"
    fi
fi

# Three workers by default (TEST_WORKERS=1 runs in one process); a file's tests stay in one
# worker, so module fixtures (one controller and Envoy per file) are started once. Most of
# a test's time is spent waiting on Envoy, the controller or a CLI process, so three keep
# two cores busier: 15:50 of pytest time against 17:28-18:08 with two (2026-12-05).
workers="${TEST_WORKERS:-3}"
if [ "$workers" -gt 1 ]; then
    # --max-worker-restart=0: a crashed worker ends the run, failed, with its traceback;
    # pytest-xdist 3.8's loadfile scheduler deadlocks when it replaces a crashed worker
    # (pytest-xdist issues 784 and 1313), which held a run until CI's limit.
    exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --max-worker-restart=0 "$@"
fi
exec .venv/bin/python -m pytest "$@"
