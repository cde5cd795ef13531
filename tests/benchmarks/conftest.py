"""Benchmarks and the long chaos run are scripts run on demand, never part of the default test run."""

collect_ignore_glob = ["*.py"]
