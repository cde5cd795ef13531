"""deploy/feesync.service: verified by systemd-analyze, hardened, and consistent with the example config.

`systemd-analyze verify` checks that ExecStart's binary exists, so the test verifies a copy in a temp
folder whose only change is `/opt/feesync/.venv/bin/feesync` -> this checkout's venv binary; the
committed unit keeps the installed path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from sync import sdnotify
from sync.daemon import GRACE_SECONDS

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "feesync.service"
EXAMPLE = ROOT / "deploy" / "feesync.example.toml"
INSTALLED_BIN = "/opt/feesync/.venv/bin/feesync"
CRED_DIR = "/run/credentials/feesync.service/"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have systemd-analyze (scripts/test.sh installs Debian's systemd)")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return exe


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; repeated keys (LoadCredential=, SystemCallFilter=) all kept."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


@pytest.fixture
def verifiable_unit(tmp_path) -> Path:
    """The committed unit with ExecStart/ExecStartPre pointing at this checkout's feesync (nothing else changed)."""
    real = Path(sys.executable).parent / "feesync"
    assert real.exists(), f"{real}: install the package into the venv (pip install -e .)"
    text = UNIT.read_text()
    assert text.count(INSTALLED_BIN) == 2
    copy = tmp_path / "feesync.service"
    copy.write_text(text.replace(INSTALLED_BIN, str(real)))
    return copy


def test_systemd_analyze_verify_passes_with_no_warning_for_our_unit(verifiable_unit):
    """`systemd-analyze verify` exits 0 and prints nothing about feesync.service (unknown keys, bad values ...)."""
    res = subprocess.run([_analyze(), "verify", str(verifiable_unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "feesync" in line]
    assert res.returncode == 0, res.stderr
    assert ours == []


def test_systemd_analyze_verify_does_report_a_broken_unit(tmp_path, verifiable_unit):
    """The check above has teeth: a misspelt key and a bad WatchdogSec are reported for our unit."""
    broken = tmp_path / "broken" / "feesync.service"
    broken.parent.mkdir()
    broken.write_text(verifiable_unit.read_text().replace("WatchdogSec=60s", "WatchdogSec=soon\nNotifyAcess=main"))
    res = subprocess.run([_analyze(), "verify", str(broken)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "feesync" in line]
    assert any("NotifyAcess" in line for line in ours) and any("soon" in line or "sec" in line for line in ours)


def test_security_exposure_is_rated_ok(verifiable_unit):
    """`systemd-analyze security --offline` rates the sandboxing below 2.0 ("OK")."""
    res = subprocess.run([_analyze(), "security", "--offline=yes", "--no-pager", str(verifiable_unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for feesync\.service: ([\d.]+) (\w+)", res.stdout + res.stderr)
    if m is None and "offline" in res.stderr:
        pytest.skip("this systemd-analyze has no --offline security analysis")
    assert m, res.stdout[-2000:] + res.stderr[-2000:]
    assert float(m.group(1)) < 2.0, res.stdout


def test_unit_is_a_hardened_notify_service_with_a_watchdog():
    """Type=notify + NotifyAccess=main + WatchdogSec, own user, StateDirectory, strict sandbox, restart on failure."""
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("DynamicUser") == "yes" and one("User") == "feesync"
    assert one("StateDirectory") == "feesync" and one("WorkingDirectory") == "/var/lib/feesync"
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("Restart") == "on-failure"
    assert one("KillSignal") == "SIGTERM"
    assert one("ExecStart") == f"{INSTALLED_BIN} run"
    assert one("ExecStartPre") == f"{INSTALLED_BIN} check --offline"   # an ERP that is down must not block start
    assert one("CapabilityBoundingSet") == ""
    assert "FEESYNC_CONFIG=/etc/feesync/feesync.toml" in values("Environment")
    assert "PYTHONFAULTHANDLER=1" in values("Environment")   # SIGABRT from the watchdog dumps the stacks


def test_watchdog_and_stop_timeouts_fit_the_daemon():
    """WatchdogSec leaves room for a ping period plus the heartbeat limit; TimeoutStopSec exceeds the stop grace."""
    watchdog = seconds(one("WatchdogSec"))
    wd = sdnotify.Watchdog(object(), env={"WATCHDOG_USEC": str(int(watchdog * 1_000_000))})
    assert wd.ping_every == watchdog / 2
    assert wd.max_age + wd.ping_every < watchdog, "a healthy daemon must never miss the deadline"
    assert seconds(one("TimeoutStopSec")) > GRACE_SECONDS + 5


def _file_settings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}" if path else k
            if k.endswith("_file") and isinstance(v, str):
                yield where, v
            else:
                yield from _file_settings(v, where)


def test_every_secret_file_in_the_example_config_is_a_loaded_credential():
    """The example's *_file paths are /run/credentials/feesync.service/<name>, one per LoadCredential= and back."""
    config = tomllib.loads(EXAMPLE.read_text())
    used = dict(_file_settings(config))
    assert set(used) == {"lms.api_key_file", "sources.erpnext_main.settings.api_key_file",
                         "sources.erpnext_main.settings.api_secret_file"}
    creds = dict(v.split(":", 1) for v in values("LoadCredential"))
    for where, path in used.items():
        assert path.startswith(CRED_DIR), where
        assert path.removeprefix(CRED_DIR) in creds, f"{where}: no LoadCredential={path.removeprefix(CRED_DIR)}"
    assert set(creds) == {p.removeprefix(CRED_DIR) for p in used.values()}, "no credential loaded for nothing"
    assert all(src.startswith("/etc/feesync/credentials/") for src in creds.values())
    assert config["state_path"].startswith("/var/lib/feesync/"), "the state store lives in StateDirectory"


def test_the_example_config_loads_with_secrets_read_from_credential_files(tmp_path, monkeypatch):
    """With the credential folder and state dir mapped to temp folders, the example config validates fully."""
    from sync.app import build_connectors
    from sync.config import load_settings
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in {"lms_api_key": "zl_live_example_1", "erp_api_key": "erp-k-1",
                        "erp_api_secret": "erp-s-1"}.items():
        (creds / name).write_text(value + "\n")
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(EXAMPLE.read_text().replace(CRED_DIR, f"{creds}/").replace("/var/lib/feesync", str(tmp_path)))
    for key in [k for k in os.environ if k.startswith("FEESYNC_")]:
        monkeypatch.delenv(key)
    settings = load_settings(cfg)
    assert settings.lms.api_key.get_secret_value() == "zl_live_example_1"
    conns = build_connectors(settings, threading.Event())
    try:
        assert set(conns) == {"erpnext_main"}
    finally:
        for c in conns.values():
            c.close()
