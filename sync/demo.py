"""`feesync demo`: both sandboxes in-process with the bundled data, one real sync, a summary and a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sync import ops
from sync.app import build_app
from sync.config import Settings
from sync.demo_data import build_demo
from sync.sandbox.erpnext import ERPNextFake
from sync.sandbox.lms import LmsSandbox

SOURCE = "erpnext-demo"


def demo_batches(data: Any) -> dict[str, str]:
    """ERP batch references (custom_batch names, item codes) -> LMS batch ids, as an integrator maps them."""
    batches = {b["name"]: str(b["id"]) for b in data.lms_seed["institutes"][0]["batches"]}
    for inv in data.erp_data["documents"]["Sales Invoice"]:
        items = inv.get("items") or []
        if inv.get("custom_batch") in batches and len(items) == 1:
            batches.setdefault(items[0]["item_code"], batches[inv["custom_batch"]])
    return batches


def demo_settings(work_dir: Path, lms: LmsSandbox, erp: ERPNextFake, data: Any) -> Settings:
    """The configuration a user would write for these two servers (secrets are the sandboxes' own)."""
    user = data.erp_data["users"][0]
    key = data.lms_seed["institutes"][0]["api_keys"][0]["key"]
    batches = demo_batches(data)
    return Settings(
        state_path=str(work_dir / "state.db"),
        log_format="console", log_level="warning",
        lms={"base_url": lms.base_url, "api_key": key, "time_zone": "Asia/Karachi",
             "rate_limit_per_minute": data.lms_seed.get("rate_limit_per_minute", 60000),
             "limiter_path": str(work_dir / "pacing.db")},
        sources={SOURCE: {"connector": "erpnext", "interval": "1m", "lookback": "10m",
                          "mapping": {"batches": batches},
                          "settings": {"url": erp.url, "api_key": user["api_key"], "api_secret": user["api_secret"],
                                       "site_time_zone": data.erp_data.get("site_time_zone", "Asia/Karachi")}}},
    )


def write_conflict_report(store: Any, path: Path) -> int:
    """The open conflicts as `feesync conflicts export --format csv` writes them (the same columns)."""
    rows = ops.list_conflicts(store, status="open")
    path.write_text(ops.export(rows, "csv"), encoding="utf-8")
    return len(rows)


def write_ops_config(work_dir: Path) -> Path:
    """A config file that points the ops commands (status, conflicts, report) at the demo's state store."""
    path = work_dir / "feesync.toml"
    state, reports = (work_dir / "state.db").resolve(), (work_dir / "reports").resolve()
    path.write_text("# Written by `feesync demo`: the ops commands read the demo's state store with it, e.g.\n"
                    f"#   feesync --config {path} conflicts list\n"
                    "# (the demo's sandboxes are gone once it ends, so commands that reach the LMS or an ERP\n"
                    "# have nothing to talk to: use `feesync demo` again for a sync.)\n"
                    f"state_path = {str(state)!r}\nreport_dir = {str(reports)!r}\n", encoding="utf-8")
    return path


def run_demo(work_dir: Path) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = build_demo()
    with LmsSandbox(data.lms_seed) as lms, ERPNextFake(data.erp_data) as erp:
        settings = demo_settings(work_dir, lms, erp, data)
        app = build_app(settings)
        try:
            result = app.engine.run_once(SOURCE)
            report = work_dir / "conflicts.csv"
            open_conflicts = write_conflict_report(app.store, report)
            requests = sum(app.lms.requests.values())
        finally:
            app.close()
    return {
        "pushed": result.counts.get("pushed", 0),
        "plans_created": result.counts.get("create_plan_done", 0),
        "plans_cancelled": result.counts.get("cancel_plan_done", 0),
        "installments_waived": result.counts.get("waive_installment_done", 0),
        "lms_writes": result.counts.get("writes_done", 0),
        "unchanged": result.counts.get("unchanged", 0),
        "skipped": dict(result.skipped),
        "conflicts": dict(result.conflicts),
        "open_conflicts": open_conflicts,
        "lms_requests": requests,
        "erp_documents": len(data.erp_data["documents"]["Payment Entry"]),
        "status": result.status,
        "report": str(report),
        "state": settings.state_path,
        "config": str(write_ops_config(work_dir)),
        "seconds": round(time.monotonic() - started, 2),
    }
