#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is the README's test command.
set -euo pipefail
. "$(dirname "$0")/_setup.sh"
# The status page and report tests drive Debian's headless Chromium (no browser download of its own);
# the unit test runs systemd-analyze verify on deploy/feesync.service.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "note: missing ${missing[*]}; install them (Debian, as root) or the tests that need them skip" >&2
  fi
fi
# The scale-out tests need a real PostgreSQL: start Debian's (installed when missing).
if [ -z "${FEESYNC_TEST_PG_URL:-}" ]; then
  FEESYNC_TEST_PG_URL=$(./scripts/postgres.sh || true)
  export FEESYNC_TEST_PG_URL
fi
exec .venv/bin/python -m pytest "$@"
