#!/usr/bin/env bash
# Set up (idempotent) and run the long chaos run: 5,000 receipts, >= 50 SIGKILLs, faults on both sides.
# Prints kills, faults by type, receipts expected/recorded/duplicated/lost; exit 0 only for 0 lost and
# 0 duplicated. Options (--receipts, --kills, --seed, --json FILE): --help.
set -euo pipefail
. "$(dirname "$0")/_setup.sh"
exec .venv/bin/python tests/benchmarks/chaos_run.py "$@"
