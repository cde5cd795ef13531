#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is the README's test command.
set -euo pipefail
. "$(dirname "$0")/_setup.sh"
# The status page and report tests drive Debian's headless Chromium (no browser download of its own).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "note: /usr/bin/chromium is missing; install Debian's chromium (root) or the browser tests skip" >&2
  fi
fi
# The scale-out tests need a real PostgreSQL: start Debian's (installed when missing).
if [ -z "${FEESYNC_TEST_PG_URL:-}" ]; then
  FEESYNC_TEST_PG_URL=$(./scripts/postgres.sh || true)
  export FEESYNC_TEST_PG_URL
fi
exec .venv/bin/python -m pytest "$@"
