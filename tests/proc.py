"""Run the real `feesync` CLI in a child process with a user's config file and secrets in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import scenario


def write_config(tmp: Path, lms, erp, **kw) -> Path:
    cfg = tmp / "feesync.toml"
    cfg.write_text(scenario.config_toml(str(tmp / "state.db"), lms.base_url, erp.url, **kw))
    return cfg


def env(extra: dict[str, str] | None = None, secrets: bool = True) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FEESYNC_")}
    if secrets:
        e.update(scenario.secret_env())
    e["PYTHONUNBUFFERED"] = "1"
    if extra:
        e.update(extra)
    return e


def feesync(*args: str, extra_env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sync.cli", *args], env=env(extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def run(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 120,
        secrets: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sync.cli", *args], env=env(extra_env, secrets), capture_output=True,
                          timeout=timeout, text=True)
