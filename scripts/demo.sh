#!/usr/bin/env bash
# Set up (idempotent) and run the demo: both sandboxes with bundled data, one real sync, a summary.
set -euo pipefail
. "$(dirname "$0")/_setup.sh"
exec .venv/bin/feesync demo "$@"
