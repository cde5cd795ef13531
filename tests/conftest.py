"""Shared fixtures: real loopback sandboxes, a real SQLite state file, settings built like a user's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FEESYNC_FIXTURES", ROOT.parent / "shared" / "fixtures" / "erpnext-real"))


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"ERPNext captures not found at {FIXTURES} (set FEESYNC_FIXTURES)")
    return path


@pytest.fixture
def python_exe() -> str:
    return sys.executable
