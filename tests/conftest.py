"""Shared fixtures: real loopback sandboxes, a real SQLite state file, settings built like a user's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# The bad-input barrage (Hypothesis, 500 examples per property): in CI the examples are derived from the
# test itself (derandomize), so a landing is judged on the same inputs each time and a red run replays; on a
# developer's machine every run explores new ones and keeps failures in .hypothesis/ to replay them.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
# The 112 real ERPNext 15 answers, kept byte-for-byte in the repository (copied from the project's shared
# reference material, whose README explains each capture); FEESYNC_FIXTURES points at another copy.
FIXTURES = Path(os.environ.get("FEESYNC_FIXTURES", ROOT / "tests" / "fixtures" / "erpnext-real"))


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"ERPNext captures not found at {FIXTURES} (set FEESYNC_FIXTURES)")
    return path


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def sandboxes():
    """Start an LMS sandbox and an ERPNext fake for a scenario dict; stopped at teardown."""
    from sync.sandbox.erpnext import ERPNextFake
    from sync.sandbox.lms import LmsSandbox
    started = []

    def start(scn, *, rate_limit=None, erp_clock=None):
        lms = LmsSandbox(scn["lms_seed"], rate_limit_per_minute=rate_limit).start()
        erp = ERPNextFake(scn["erp_data"], clock=erp_clock).start() if erp_clock else ERPNextFake(scn["erp_data"]).start()
        started.extend([lms, erp])
        return lms, erp
    yield start
    for s in started:
        s.stop()


@pytest.fixture
def make_app(tmp_path):
    """Build a real App (SQLite file in tmp_path) against running sandboxes, as a user's config would."""
    from sync.app import build_app
    from sync.config import Settings
    from tests import scenario
    apps = []

    def make(lms, erp, *, page_size=100, lookback="10m", lag="0s", state=None, lms_overrides=None,
             mapping=None, erp_user=None, lms_key=scenario.LMS_KEY):
        user = erp_user or {"api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET}
        settings = Settings(
            state_path=str(state or tmp_path / "state.db"), log_format="json",
            lms={"base_url": lms.base_url, "api_key": lms_key, "rate_limit_per_minute": 100000,
                 "max_attempts": 4, "max_retry_seconds": 5, "limiter_path": str(tmp_path / "pacing.db"),
                 **(lms_overrides or {})},
            sources={"erp": {"connector": "erpnext", "interval": "1m", "lookback": lookback, "lag": lag,
                             "mapping": mapping or {},
                             "settings": {"url": erp.url, "page_size": page_size, "max_attempts": 2,
                                          "max_retry_seconds": 2, **user}}})
        app = build_app(settings, sleep=lambda s: None)
        apps.append(app)
        return app
    yield make
    for a in apps:
        a.close()
