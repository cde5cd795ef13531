# Sourced by the scripts beside it: create .venv on first use and install feesync with its dev extra
# (idempotent; a no-op when everything is installed).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
