"""Reconciliation finds exactly the drifts planted after a clean sync (missing, gone from the ERP, amount
changed silently), writes nothing to the LMS, and shows up in the report and on the status page."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from sync import ops
from sync import reconcile as recon
from sync.app import build_app
from sync.cli import cli
from sync.config import load_settings
from sync.report import write_report
from sync.times import utcnow
from sync.web import StatusServer
from tests import scenario
from tests.scenario import KHI

BASE = datetime(2026, 11, 1, 9, 0, tzinfo=KHI)
NEW = "ACC-PAY-2026-00050"


def _scenario():
    scn = scenario.build(n_students=4, receipts_per_student=2, amount=1000, base=BASE)
    inst = scn["lms_seed"]["institutes"][0]
    inst["payments"] = [
        # pushed to the ERP by the LMS itself (the ERP holds it as an LMS-originated Payment Entry)
        {"id": 900, "fee_plan_id": 5000, "amount": 500, "payment_date": "2026-10-20T00:00:00+05:00"},
        # taken at the front desk, entered in the LMS only
        {"id": 901, "fee_plan_id": 5001, "amount": 300, "notes": "front desk"},
    ]
    lms_origin = scenario.new_receipt(40, "Student 0", 500, None, BASE - timedelta(days=12))
    lms_origin["custom_zensbot_payment_id"] = "900"
    scn["erp_data"]["documents"]["Payment Entry"].append(lms_origin)
    return scn


@pytest.fixture
def env(sandboxes, tmp_path, monkeypatch):
    lms, erp = sandboxes(_scenario())
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'report_dir = "{tmp_path / "reports"}"\n'
                   + scenario.config_toml(str(tmp_path / "state.db"), lms.base_url, erp.url, interval="1h"))
    for k, v in scenario.secret_env().items():
        monkeypatch.setenv(k, v)
    app = build_app(load_settings(cfg), sleep=lambda s: None)
    first = app.engine.run_once("erp")
    assert first.counts["pushed"] == 8 and not first.conflicts
    yield lms, erp, app, cfg
    app.close()


def plant(erp):
    """After the sync: one new receipt (never synced), one cancelled, one cancelled and deleted, one whose
    amount changed without `modified` moving (the cursor cannot see it)."""
    erp.insert("Payment Entry", scenario.new_receipt(50, "Student 2", 1000, "ACC-SINV-2026-00003", BASE))
    erp.cancel("Payment Entry", "ACC-PAY-2026-00005")
    erp.cancel("Payment Entry", "ACC-PAY-2026-00003")
    erp.delete("Payment Entry", "ACC-PAY-2026-00003")
    erp.update("Payment Entry", "ACC-PAY-2026-00007", {"paid_amount": 1500.0, "received_amount": 1500.0},
               bump_modified=False)


def drifts(result):
    return sorted((d["kind"], d["doc_id"], d["erp_amount"], d["lms_amount"]) for d in result["drifts"])


def test_a_clean_sync_reconciles_without_drift(env):
    """Right after a clean pass the LMS holds exactly what the ERP received; LMS-only payments are not drift."""
    lms, erp, app, cfg = env
    result = recon.reconcile(app, "erp")
    assert result["drifts"] == [] and result["erp"]["received"] == 8 and result["erp"]["lms_originated"] == 1
    assert result["lms"] == {"payments_from_source": 8, "amount_from_source": "8000", "other_payments": 2}


def test_reconcile_finds_each_planted_drift_and_nothing_else_without_writing_to_the_lms(env):
    """missing_in_lms for the new receipt, not_in_erp for the cancelled and the deleted one, amount_mismatch
    for the silent edit; the LMS receives no write and the result is stored."""
    lms, erp, app, cfg = env
    plant(erp)
    writes_before = lms.stats()["writes_received"]
    result = recon.reconcile(app, "erp")
    assert lms.stats()["writes_received"] == writes_before
    assert drifts(result) == [
        ("amount_mismatch", "ACC-PAY-2026-00007", "1500", "1000"),
        ("missing_in_lms", NEW, "1000", "0"),
        ("not_in_erp", "ACC-PAY-2026-00003", "0", "1000"),
        ("not_in_erp", "ACC-PAY-2026-00005", "0", "1000"),
    ]
    detail = {d["doc_id"]: d for d in result["drifts"]}
    assert "deleted" in detail["ACC-PAY-2026-00003"]["detail"]
    assert "cancelled in the ERP" in detail["ACC-PAY-2026-00005"]["detail"]
    assert detail["ACC-PAY-2026-00007"]["student_id"] == "103" and detail["ACC-PAY-2026-00007"]["plan_id"] == "5003"
    assert result["counts"] == {"missing_in_lms": 1, "not_in_erp": 2, "amount_mismatch": 1}
    assert result["unexplained"] == 4            # no conflict explains them: the cursor never saw these changes
    plan = next(p for p in result["plans"] if p["plan_id"] == "5003")
    assert (plan["erp_received"], plan["lms_from_source"], plan["difference"]) == ("2500", "2000", "500")
    assert plan["lms_paid_total"] is not None and plan["drifts"] == 1

    assert recon.latest(app.store)[0]["counts"] == result["counts"]
    saved = json.loads((Path(app.settings.report_dir) / "reconciliation-erp.json").read_text())
    assert drifts(saved) == drifts(result)


def test_a_drift_the_sync_already_reported_names_its_conflict(env):
    """After the next pass, the cancelled receipt's reversed_in_erp conflict explains its not_in_erp drift."""
    lms, erp, app, cfg = env
    erp.cancel("Payment Entry", "ACC-PAY-2026-00005")
    app.engine.run_once("erp")
    result = recon.reconcile(app, "erp")
    (d,) = result["drifts"]
    assert d["kind"] == "not_in_erp" and [c["kind"] for c in d["explained_by"]] == ["reversed_in_erp"]
    assert result["unexplained"] == 0


def test_since_limits_reconciliation_to_documents_changed_since_that_day(env):
    """`--since` today sees the new and the cancelled receipt (changed today), not the silent edit of an old one."""
    lms, erp, app, cfg = env
    plant(erp)
    since = utcnow() - timedelta(minutes=5)
    result = recon.reconcile(app, "erp", since=since)
    assert drifts(result) == [("missing_in_lms", NEW, "1000", "0"),
                              ("not_in_erp", "ACC-PAY-2026-00005", "0", "1000")]


def test_since_compares_by_erp_change_time_on_both_sides_not_by_payment_date(sandboxes, tmp_path, monkeypatch):
    """A receipt dated after `since` but last changed in the ERP before it is outside the window on both
    sides: it is in the ERP and in the LMS, so it is no drift (it was reported as 'deleted?')."""
    scn = scenario.build(n_students=2, receipts_per_student=2, amount=1000, base=BASE)
    future = (utcnow() + timedelta(days=3)).date().isoformat()
    dated_ahead = scn["erp_data"]["documents"]["Payment Entry"][0]
    dated_ahead["posting_date"] = future          # entered on 1 November, dated three days from now
    lms, erp = sandboxes(scn)
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(scenario.config_toml(str(tmp_path / "state.db"), lms.base_url, erp.url, interval="1h"))
    for k, v in scenario.secret_env().items():
        monkeypatch.setenv(k, v)
    app = build_app(load_settings(cfg), sleep=lambda s: None)
    try:
        assert app.engine.run_once("erp").counts["pushed"] == 4
        assert any(str(p["payment_date"])[:10] == future for p in lms.payments())
        since = utcnow() - timedelta(days=1)
        assert recon.reconcile(app, "erp", since=since)["drifts"] == []
        # a document changed inside the window and then deleted is still reported
        erp.cancel("Payment Entry", dated_ahead["name"])
        app.engine.run_once("erp")
        erp.delete("Payment Entry", dated_ahead["name"])
        result = recon.reconcile(app, "erp", since=since)
    finally:
        app.close()
    assert [(d["kind"], d["doc_id"]) for d in result["drifts"]] == [("not_in_erp", dated_ahead["name"])]


def test_cli_reconcile_report_and_status_page_show_the_latest_reconciliation(env, tmp_path):
    """`feesync reconcile --json` exits 1 with drifts; the report and the status page list them."""
    lms, erp, app, cfg = env
    plant(erp)
    env_vars = scenario.secret_env()
    r = CliRunner().invoke(cli, ["--config", str(cfg), "reconcile", "--source", "erp", "--json"], env=env_vars)
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["counts"] == {"missing_in_lms": 1, "not_in_erp": 2, "amount_mismatch": 1}
    text = CliRunner().invoke(cli, ["--config", str(cfg), "reconcile", "--source", "erp"], env=env_vars).stdout
    assert "drifts: 4 (missing in LMS 1, not in ERP 2, amount mismatch 1" in " ".join(text.split())
    # an 80-column terminal (and a pipe): the table fits, and document ids and amounts are never cut
    table = text.split("\n", 1)[1]
    assert max(len(line) for line in table.splitlines()) <= 80, table
    for x in json.loads(r.stdout)["drifts"]:
        line = next(ln for ln in table.splitlines() if f" {x['doc_id']} " in ln)
        for amount in (x["erp_amount"], x["lms_amount"]):
            assert ops.money_display(amount) in line.split(), (amount, line)

    html = Path(write_report(app.store, app.settings, tmp_path / "rep")["html"]).read_text()
    for kind in ("missing_in_lms", "not_in_erp", "amount_mismatch"):
        assert f'data-drift="{kind}"' in html
    with StatusServer(app, listen="127.0.0.1:0") as web:
        with urllib.request.urlopen(web.url + "/reconciliation") as resp:  # noqa: S310 - loopback
            page = resp.read().decode()
        with urllib.request.urlopen(web.url + "/api/reconciliation") as resp:  # noqa: S310
            api = json.load(resp)
    assert NEW in page and 'data-drift="amount_mismatch"' in page
    assert api["reconciliations"][0]["drift_total"] == 4
    from prometheus_client.parser import text_string_to_metric_families

    from sync.metrics import app_collector, render
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(render(app_collector(app)).decode()) for s in f.samples}
    unexplained = json.loads(r.stdout)["unexplained"]
    assert samples[("feesync_reconcile_drifts_unexplained", (("institute", "default"), ("source", "erp")))] == unexplained


def test_the_drift_table_never_cuts_document_ids_or_amounts_on_80_columns(monkeypatch):
    """Long student names and explanations shrink or drop; ids and amounts stay whole."""
    from rich.console import Console

    from sync import cli as cli_mod
    monkeypatch.setenv("COLUMNS", "80")
    drifts = [{"kind": kind, "doc_id": f"ACC-PAY-2026-{n:05d}", "student_id": None,
               "customer": "Maryam Farooq Siddiqui-Khan", "plan_id": "7003", "erp_amount": erp, "lms_amount": lms,
               "explained_by": [{"id": 257, "kind": "plan_not_created"}, {"id": 12, "kind": "unknown_student"}]}
              for n, (kind, erp, lms) in enumerate([("missing_in_lms", "14000.0", None),
                                                    ("amount_mismatch", "1250000.5", "1250000"),
                                                    ("not_in_erp", None, "75000")])]
    out = Console(width=80, record=True, markup=False)
    out.print(cli_mod._drift_table(drifts))
    lines = out.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    for x, line in zip(drifts, lines[1:]):
        assert x["doc_id"] in line.split()
        for amount in (x["erp_amount"], x["lms_amount"]):
            assert ops.money_display(amount) in line.split(), (amount, line)


def test_on_80_columns_the_hidden_explanations_are_announced_and_mixed_currencies_are_named(monkeypatch):
    from rich.console import Console

    from sync import cli as cli_mod
    drifts = [{"kind": "missing_in_lms", "doc_id": f"ACC-PAY-2026-0000{n}", "student_id": "301", "customer": None,
               "plan_id": "7003", "erp_amount": "100", "lms_amount": "0", "currency": cur,
               "explained_by": [{"id": 4, "kind": "currency_mismatch"}] if n else []}
              for n, cur in enumerate(["PKR", "USD"])]
    monkeypatch.setenv("COLUMNS", "70")
    narrow = Console(width=70, record=True, markup=False)
    narrow.print(cli_mod._drift_table(drifts))
    text = narrow.export_text()
    assert "explained by" not in text.splitlines()[0]
    assert "1 of these are explained by open conflicts: a wider terminal or --json shows which" in " ".join(
        text.split())
    assert "100 PKR" in text and "100 USD" in text
    monkeypatch.setenv("COLUMNS", "140")
    wide = Console(width=140, record=True, markup=False)
    wide.print(cli_mod._drift_table(drifts))
    assert "#4 currency_mismatch" in wide.export_text() and "a wider terminal" not in wide.export_text()
