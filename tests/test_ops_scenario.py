"""The ops scenario: a small institute whose sync leaves conflicts of eight kinds, with amounts.

`ops_scenario()` builds it on `tests.scenario.build` (six students whose receipts all push), then
adds receipts that cannot be written as mapped. `synced(...)` starts the sandboxes, writes a user's
config file, runs one real pass and returns everything a test needs. The other ops tests
(`test_ops_cli`, `test_report`, `test_status_page`) use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sync.app import build_app
from sync.config import load_settings
from tests import scenario
from tests.scenario import KHI, frappe_ts

BASE = datetime(2026, 11, 1, 9, 0, tzinfo=KHI)
GHOST, PHANTOM = "Ghost Student", "Phantom Payer"
GHOST_LMS_ID, NOPLAN_ID, TWOPLANS_ID = 300, 301, 302
ADMIN_TOKEN = "adm_tok_7c1d9e2f4a6b8c0d"
NATIVE_INVOICE = "ACC-SINV-2026-00102"

# kind -> the receipts (document ids) planted to produce it, with their amounts
PLANTED: dict[str, list[tuple[str, str]]] = {
    "unknown_student": [("ACC-PAY-2026-00101", "1500"), ("ACC-PAY-2026-00102", "2500"),
                        ("ACC-PAY-2026-00103", "700")],
    "no_active_plan": [("ACC-PAY-2026-00104", "3000")],
    "ambiguous_plan": [("ACC-PAY-2026-00105", "1200")],
    "currency_mismatch": [("ACC-PAY-2026-00106", "150")],
    "fractional_amount": [("ACC-PAY-2026-00107", "1000.5")],
    "unknown_payment_method": [("ACC-PAY-2026-00108", "800")],
    "overpayment": [("ACC-PAY-2026-00109", "50000")],
    "plan_completed": [("ACC-PAY-2026-00110", "1000")],
}


def ops_scenario() -> dict[str, Any]:
    scn = scenario.build(n_students=6, receipts_per_student=2, amount=1000, base=BASE)
    seed = scn["lms_seed"]["institutes"][0]
    docs = scn["erp_data"]["documents"]
    # LMS: the student the ghost customer really is (another e-mail), one without a plan, one with two plans
    seed["students"] += [
        {"id": GHOST_LMS_ID, "name": "Ghost S. Khan", "email": "g.khan@lms.example.pk", "status": "active"},
        {"id": NOPLAN_ID, "name": "Noplan Ahmed", "email": "noplan@example.pk", "status": "active"},
        {"id": TWOPLANS_ID, "name": "Twoplans Ali", "email": "twoplans@example.pk", "status": "active"},
    ]
    seed["fee_plans"] += [
        {"id": 7000, "student_id": GHOST_LMS_ID, "batch_id": 1, "plan_type": "one_time", "total_amount": 20000,
         "currency": "PKR", "status": "active", "installments": [
             {"id": 97000, "sequence": 1, "amount_due": 20000, "amount_paid": 0, "due_date": "2026-12-01",
              "status": "pending"}]},
        {"id": 7003, "student_id": 105, "batch_id": 1, "plan_type": "one_time", "total_amount": 10000,
         "currency": "PKR", "status": "active", "installments": [
             {"id": 97003, "sequence": 1, "amount_due": 10000, "amount_paid": 0, "due_date": "2026-12-01",
              "status": "pending"}]},
        {"id": 7004, "student_id": 101, "batch_id": 1, "plan_type": "one_time", "total_amount": 4000,
         "currency": "PKR", "installments": [
             {"id": 97004, "sequence": 1, "amount_due": 4000, "amount_paid": 4000, "due_date": "2026-10-01",
              "status": "paid"}]},
        *[{"id": pid, "student_id": TWOPLANS_ID, "batch_id": 1, "plan_type": "one_time", "total_amount": 9000,
           "currency": "PKR", "status": "active", "installments": [
               {"id": 90000 + pid, "sequence": 1, "amount_due": 9000, "amount_paid": 0, "due_date": "2026-12-01",
                "status": "pending"}]} for pid in (7001, 7002)],
    ]
    for name, email in ((GHOST, "ghost@erp.example.pk"), (PHANTOM, "phantom@erp.example.pk"),
                        ("Noplan Ahmed", "noplan@example.pk"), ("Twoplans Ali", "twoplans@example.pk")):
        docs["Customer"].append({"name": name, "customer_name": name, "email_id": email,
                                 "customer_group": "Students", "modified": frappe_ts(BASE)})
    # LMS-created invoices of Student 5 (plan 7003, balance 10,000) and Student 1 (plan 7004, completed)
    for student, inv, plan_id, total in (("Student 5", "ACC-SINV-2026-00100", "7003", 10000.0),
                                         ("Student 1", "ACC-SINV-2026-00101", "7004", 4000.0)):
        docs["Sales Invoice"].append(dict(next(i for i in docs["Sales Invoice"] if i["customer"] == student),
                                          name=inv, custom_zensbot_fee_plan_id=plan_id, grand_total=total,
                                          outstanding_amount=0.0, payment_schedule=[]))
    plan = [  # (doc, customer, amount, invoice, currency, mode)
        ("ACC-PAY-2026-00101", GHOST, 1500, None, "PKR", "Cash"),
        ("ACC-PAY-2026-00102", GHOST, 2500, None, "PKR", "Cash"),
        ("ACC-PAY-2026-00103", PHANTOM, 700, None, "PKR", "Cash"),
        ("ACC-PAY-2026-00104", "Noplan Ahmed", 3000, None, "PKR", "Cash"),
        ("ACC-PAY-2026-00105", "Twoplans Ali", 1200, None, "PKR", "Cash"),
        ("ACC-PAY-2026-00106", "Twoplans Ali", 150, None, "USD", "Cash"),
        ("ACC-PAY-2026-00107", "Student 3", 1000.5, "ACC-SINV-2026-00004", "PKR", "Cash"),
        ("ACC-PAY-2026-00108", "Student 4", 800, "ACC-SINV-2026-00005", "PKR", "Barter"),
        ("ACC-PAY-2026-00109", "Student 5", 50000, "ACC-SINV-2026-00100", "PKR", "Cash"),
        ("ACC-PAY-2026-00110", "Student 1", 1000, "ACC-SINV-2026-00101", "PKR", "Cash"),
    ]
    for i, (name, customer, amount, invoice, currency, mode) in enumerate(plan):
        ts = BASE + timedelta(minutes=5, seconds=i)
        pe = scenario._pe(101 + i, customer, 0, invoice, ts, currency)
        pe.update(name=name, paid_amount=float(amount), received_amount=float(amount), base_paid_amount=float(amount),
                  base_received_amount=float(amount), mode_of_payment=mode,
                  total_allocated_amount=float(amount) if invoice else 0.0,
                  unallocated_amount=0.0 if invoice else float(amount))
        for ref in pe["references"]:
            ref.update(allocated_amount=float(amount), total_amount=float(amount))
        docs["Payment Entry"].append(pe)
    return scn


def native_invoice_and_receipt(scn_docs: dict[str, list], when: datetime) -> tuple[dict, dict]:
    """An ERP-native invoice of Twoplans Ali (no LMS plan id, no LMS batch) and a receipt against it."""
    native = {k: v for k, v in next(i for i in scn_docs["Sales Invoice"] if i["customer"] == "Student 5").items()
              if k not in ("custom_zensbot_fee_plan_id", "name", "modified", "creation")}
    native.update(name=NATIVE_INVOICE, customer="Twoplans Ali", customer_name="Twoplans Ali")
    pe = scenario._pe(111, "Twoplans Ali", 900, NATIVE_INVOICE, when)
    return native, pe


def config_text(tmp: Path, lms: Any, erp: Any, *, extra: str = "") -> str:
    text = scenario.config_toml(str(tmp / "state.db"), lms.base_url, erp.url, interval="1h")
    head = f'report_dir = "{tmp / "reports"}"\nheal_interval = "1h"\nheal_max_attempts = 3\n{extra}\n'
    return head + text


@dataclass
class Synced:
    scn: dict
    lms: Any
    erp: Any
    app: Any
    config: Path
    env: dict[str, str]
    tmp: Path


def synced(sandboxes: Any, tmp: Path, monkeypatch: Any, *, extra_config: str = "") -> Synced:
    """Sandboxes up, a user's config file (secrets in the environment), one real sync pass done."""
    scn = ops_scenario()
    lms, erp = sandboxes(scn)
    cfg = tmp / "feesync.toml"
    cfg.write_text(config_text(tmp, lms, erp, extra=extra_config))
    env = scenario.secret_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    app = build_app(load_settings(cfg), sleep=lambda s: None)
    app.engine.run_once("erp")
    return Synced(scn, lms, erp, app, cfg, env, tmp)


def test_the_scenario_leaves_eight_kinds_of_conflict_with_their_amounts(sandboxes, tmp_path, monkeypatch):
    """One pass over the scenario opens exactly the planted conflicts, each with its amount."""
    from sync import ops
    s = synced(sandboxes, tmp_path, monkeypatch)
    try:
        rows = ops.list_conflicts(s.app.store)
        got = sorted((r["kind"], r["doc_id"], Decimal(r["amount"])) for r in rows)
        want = sorted((k, d, Decimal(a)) for k, docs in PLANTED.items() for d, a in docs)
        assert got == want
        assert len({r["kind"] for r in rows}) >= 5
        assert len(s.lms.payments()) == 12     # the six students' own receipts all pushed
        t = ops.totals(rows)
        pkr = sum(Decimal(a) for k, docs in PLANTED.items() for d, a in docs if k != "currency_mismatch")
        assert {c: Decimal(v) for c, v in t["money_at_stake"].items()} == {"PKR": pkr, "USD": Decimal(150)}
        assert t["money_at_stake"]["PKR"] == "61700.5"   # exact Decimal text
    finally:
        s.app.close()
