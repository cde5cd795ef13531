#!/usr/bin/env bash
# Set up (idempotent) and run the benchmark (backfill at a 6,000/min LMS limit, local pipeline, idle poll).
# Prints a table and writes feesync-bench.json; takes about 10 minutes on 2 cores. Options: --help.
set -euo pipefail
. "$(dirname "$0")/_setup.sh"
exec .venv/bin/python tests/benchmarks/bench_feesync.py "$@"
