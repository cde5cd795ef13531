"""A connector published by a separate package (tests/plugin_pkg) is discovered through the
`feesync.connectors` entry-point group, runs `feesync once` without any change to feesync, and
passes the conformance kit.

The package is not installed into the project's venv. Its module and a `*.dist-info` holding the
entry points of its pyproject.toml are written to a temporary directory, which is put on the
path of a child process (`PYTHONPATH`) or, for the kit, on this process's `sys.path` for one test
(monkeypatch undoes it): `importlib.metadata` finds distributions on the path exactly as it
finds installed ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sync.connector import available
from sync.sandbox.lms import LmsSandbox
from sync.testing import ConnectorConformance
from sync.testing.harnesses import BaseHarness
from sync.testing.helpers import CURRENCY, seed_key, standard_lms_seed, student_email, student_name

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(__file__).resolve().parent / "plugin_pkg"
EP_NAME = "demo_csvish"


def build_site(dest: Path) -> Path:
    """The package as an installer would leave it: the module and its dist-info (METADATA, entry_points.txt)."""
    project = tomllib.loads((PKG / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dist = dest / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
                                   encoding="utf-8")
    lines = []
    for group, items in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in items.items()]
        lines.append("")
    (dist / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    shutil.copy(PKG / "feesync_plugin_demo.py", dest / "feesync_plugin_demo.py")
    return dest


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("plugin-site"))


def test_the_plugin_is_found_through_the_entry_point_group_and_syncs_in_a_child_process(plugin_site, tmp_path):
    """`feesync once` in a child whose path holds the package: LMS payments equal the JSON file's receipts."""
    assert EP_NAME not in available(), "the plug-in must not be installed in this interpreter"
    seed = standard_lms_seed()
    t0 = datetime.now(UTC) - timedelta(hours=1)
    receipts = [{"id": f"DEMO-{i}", "changed_at": (t0 + timedelta(seconds=i)).isoformat(), "amount": str(1500 + i),
                 "currency": CURRENCY, "date": t0.date().isoformat(), "student": student_name(i),
                 "email": student_email(i), "method": "Cash"} for i in range(1, 8)]
    data = tmp_path / "receipts.json"
    data.write_text(json.dumps({"receipts": receipts}), encoding="utf-8")
    with LmsSandbox(seed) as lms:
        cfg = tmp_path / "feesync.toml"
        cfg.write_text(f"""
state_path = "{tmp_path / 'state.db'}"
log_format = "json"

[lms]
base_url = "{lms.base_url}"
rate_limit_per_minute = 100000
limiter_path = "{tmp_path / 'pacing.db'}"

[sources.demo]
connector = "{EP_NAME}"
interval = "1m"
lag = "0s"

[sources.demo.settings]
path = "{data}"
""", encoding="utf-8")
        env = {**os.environ, "FEESYNC_LMS__API_KEY": seed_key(seed),
               "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
        env.pop("FEESYNC_CONFIG", None)

        def once() -> dict[str, Any]:
            proc = subprocess.run([sys.executable, "-m", "sync.cli", "--config", str(cfg), "once", "--json"],
                                  env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return json.loads(proc.stdout)

        first = once()
        (run,) = first["results"]
        assert run["source"] == "demo" and run["status"] == "ok" and run["counts"]["pushed"] == 7
        pays = [p for p in lms.payments() if str(p["notes"]).startswith("erp:demo:")]
        assert sorted(p["notes"] for p in pays) == sorted(f"erp:demo:{r['id']}" for r in receipts)
        assert sum(Decimal(str(p["amount"])) for p in pays) == sum(Decimal(r["amount"]) for r in receipts)
        again = once()
        assert again["results"][0]["counts"].get("pushed", 0) == 0 and len(lms.payments()) == 7


def test_an_unknown_connector_name_stops_start_up_naming_it(tmp_path):
    """Without the package on the path the same configuration refuses to start, naming the connector."""
    from sync.app import build_app
    from sync.config import Settings
    from sync.errors import ConfigError

    settings = Settings(state_path=str(tmp_path / "state.db"), lms={"api_key": "zl_x_key_1234"},
                        sources={"demo": {"connector": EP_NAME, "settings": {"path": "r.json"}}})
    with pytest.raises(ConfigError, match=f"connector '{EP_NAME}' is not installed"):
        build_app(settings)


class PluginHarness(BaseHarness):
    """The plug-in's source: one JSON file."""

    connector = EP_NAME

    def start(self, workdir: Path) -> None:
        self.path = workdir / "receipts.json"
        self._rows: dict[str, dict[str, Any]] = {}
        self._flush()

    def stop(self) -> None:
        return None

    def _flush(self) -> None:
        self.path.write_text(json.dumps({"receipts": list(self._rows.values())}), encoding="utf-8")

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"path": str(self.path)}

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {"path": "receipts.txt"}, "path"

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        tie = self._stamp() if same_change_time else None
        ids = []
        for _ in range(n):
            seq, amount = self._next()
            doc = f"DEMO-{seq:05d}"
            self._rows[doc] = {"id": doc, "changed_at": (tie or self._stamp()).isoformat(), "amount": str(amount),
                               "currency": CURRENCY, "date": self._t0.date().isoformat(),
                               "student": student_name(seq), "email": student_email(seq), "method": "Cash"}
            self._amounts[doc] = amount
            ids.append(doc)
        self._flush()
        return ids

    def _touch(self, doc_id: str, **changes: Any) -> None:
        self._rows[doc_id].update(changes, changed_at=datetime.now(UTC).isoformat())
        self._flush()

    def change(self, doc_id: str) -> None:
        self._touch(doc_id, amount=str(self._changed(doc_id)))

    def cancel(self, doc_id: str) -> None:
        self._amounts.pop(doc_id, None)
        self._touch(doc_id, status="cancelled")

    def delete(self, doc_id: str) -> None:
        self._amounts.pop(doc_id, None)
        self._rows.pop(doc_id)
        self._flush()

    def between_pages(self, callback: Any, connector: Any) -> None:
        pytest.skip(f"{EP_NAME}: reads one JSON file whole; there are no pages")


class TestPluginConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, plugin_site, monkeypatch):
        monkeypatch.syspath_prepend(str(plugin_site))   # importlib.metadata now sees the dist-info
        assert EP_NAME in available()
        return PluginHarness()
