"""The bundled demo data: deterministic, consistent across LMS and ERPNext, its key recounts."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sync.demo_data import DemoData, answer_key, build_demo, write_demo_files

FRAPPE_TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def demo() -> DemoData:
    return build_demo()


def _docs(demo: DemoData, doctype: str) -> list[dict[str, Any]]:
    return demo.erp_data["documents"][doctype]


def _inst(demo: DemoData) -> dict[str, Any]:
    return demo.lms_seed["institutes"][0]


def _dump(demo: DemoData) -> str:
    return json.dumps([demo.lms_seed, demo.erp_data, demo.expected], sort_keys=True)


def _when(ts: str) -> datetime:
    return datetime.fromisoformat(ts)  # noqa: DTZ007 - Frappe's naive site-local value, compared as is


def _plan_by_id(demo: DemoData) -> dict[int, dict[str, Any]]:
    return {p["id"]: p for p in _inst(demo)["fee_plans"]}


# --- determinism and size -------------------------------------------------------------------------
def test_same_seed_gives_identical_json() -> None:
    """Two builds with one seed are byte-identical; another seed differs."""
    assert _dump(build_demo(7)) == _dump(build_demo(7))
    assert _dump(build_demo(8)) != _dump(build_demo(7))


def test_sizes_meet_the_brief(demo: DemoData) -> None:
    """At least 200 students and 1,000 Payment Entries; the counts block agrees."""
    assert len(_inst(demo)["students"]) == 220
    assert len(_docs(demo, "Payment Entry")) >= 1000
    assert demo.expected["counts"]["payment_entries"] == len(_docs(demo, "Payment Entry"))
    assert demo.expected["counts"]["sales_invoices"] == len(_docs(demo, "Sales Invoice"))


def test_group_shares(demo: DemoData) -> None:
    """About 60 % LMS plans, 25 % ERP-native invoices, 5 % advances."""
    groups = demo.expected["groups"]
    assert groups == {
        "lms_plan": 132,
        "native": 55,
        "advance": 11,
        "ambiguous": 3,
        "no_plan": 3,
        "cancelled_plan": 1,
        "lms_only": 15,
    }
    assert sum(groups.values()) == 220


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_sizes_build_and_keep_their_minimum(seed: int) -> None:
    """Smaller and larger data sets build (the generator checks itself) and reach n_payments_min."""
    small = build_demo(seed, n_students=120, n_payments_min=500)
    assert len(_docs(small, "Payment Entry")) >= 500
    big = build_demo(seed, n_students=300, n_payments_min=1500)
    assert len(_docs(big, "Payment Entry")) >= 1500


def test_too_few_students_is_refused() -> None:
    with pytest.raises(ValueError, match="n_students"):
        build_demo(n_students=50)


# --- formats --------------------------------------------------------------------------------------
def _walk(value: Any, path: str = "$") -> list[str]:
    if isinstance(value, float):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _walk(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _walk(v, f"{path}[{i}]")]
    return []


def test_lms_seed_has_no_floats(demo: DemoData) -> None:
    """Every number in the LMS seed is an int (money in whole rupees)."""
    assert _walk(demo.lms_seed) == []
    assert json.loads(json.dumps(demo.lms_seed)) == demo.lms_seed


def test_erp_money_is_float(demo: DemoData) -> None:
    """ERPNext money fields are JSON floats like 18000.0."""
    for pe in _docs(demo, "Payment Entry"):
        for key in ("paid_amount", "received_amount", "base_paid_amount", "unallocated_amount"):
            assert type(pe[key]) is float, (pe["name"], key)
        for ref in pe["references"]:
            assert type(ref["allocated_amount"]) is float
    for si in _docs(demo, "Sales Invoice"):
        assert type(si["grand_total"]) is float and type(si["outstanding_amount"]) is float


def test_timestamps_have_frappe_format_and_order(demo: DemoData) -> None:
    """Naive `YYYY-MM-DD HH:MM:SS[.ffffff]`, creation <= modified, about 5 % on whole seconds."""
    docs = [d for dt in ("Payment Entry", "Sales Invoice", "Customer") for d in _docs(demo, dt)]
    for doc in docs:
        assert FRAPPE_TS.match(doc["creation"]) and FRAPPE_TS.match(doc["modified"]), doc["name"]
        assert _when(doc["creation"]) <= _when(doc["modified"]), doc["name"]
    pe_mods = [pe["modified"] for pe in _docs(demo, "Payment Entry")]
    whole = [m for m in pe_mods if "." not in m]
    assert 0.02 * len(pe_mods) <= len(whole) <= 0.09 * len(pe_mods)
    for pe in _docs(demo, "Payment Entry"):
        assert ISO_DATE.match(pe["posting_date"])


def test_modified_spans_about_thirty_days_before_base(demo: DemoData) -> None:
    pe_mods = sorted(_when(pe["modified"]) for pe in _docs(demo, "Payment Entry"))
    assert pe_mods[0] >= datetime(2026, 10, 3, 9, 0)  # noqa: DTZ001 - naive site-local
    assert pe_mods[-1] < datetime(2026, 11, 2, 9, 0)  # noqa: DTZ001
    assert (pe_mods[-1] - pe_mods[0]).days >= 28


def test_null_fields_are_left_out(demo: DemoData) -> None:
    """Like a v15 single-document GET: no key holds null."""
    for dt in ("Payment Entry", "Sales Invoice", "Customer"):
        for doc in _docs(demo, dt):
            assert None not in doc.values(), doc["name"]


def test_required_fields_are_present(demo: DemoData) -> None:
    pe_keys = {
        "name",
        "doctype",
        "docstatus",
        "status",
        "creation",
        "modified",
        "owner",
        "company",
        "naming_series",
        "posting_date",
        "payment_type",
        "paid_from",
        "paid_to",
        "paid_from_account_currency",
        "paid_to_account_currency",
        "paid_amount",
        "received_amount",
        "base_paid_amount",
        "base_received_amount",
        "source_exchange_rate",
        "target_exchange_rate",
        "total_allocated_amount",
        "unallocated_amount",
        "difference_amount",
        "mode_of_payment",
        "remarks",
        "references",
        "title",
    }
    for pe in _docs(demo, "Payment Entry"):
        assert pe_keys <= pe.keys(), pe_keys - pe.keys()
        if pe["payment_type"] == "Receive":
            assert {"party_type", "party", "party_name"} <= pe.keys()
        if pe["mode_of_payment"] != "Cash":
            assert pe["reference_no"] and pe["reference_date"] == pe["posting_date"]
        assert pe["status"] == {0: "Draft", 1: "Submitted", 2: "Cancelled"}[pe["docstatus"]]
        assert pe["paid_amount"] == pe["total_allocated_amount"] + pe["unallocated_amount"] or (
            pe["payment_type"] == "Internal Transfer"
        )
    si_keys = {
        "name",
        "docstatus",
        "status",
        "customer",
        "customer_name",
        "posting_date",
        "due_date",
        "currency",
        "grand_total",
        "rounded_total",
        "outstanding_amount",
        "is_return",
        "items",
        "payment_schedule",
    }
    for si in _docs(demo, "Sales Invoice"):
        assert si_keys <= si.keys(), si_keys - si.keys()
    for cust in _docs(demo, "Customer"):
        assert {"name", "customer_name", "customer_group", "modified"} <= cust.keys()


def test_names_follow_the_series(demo: DemoData) -> None:
    pes = _docs(demo, "Payment Entry")
    names = [pe["name"] for pe in pes]
    assert len(set(names)) == len(names)
    assert all(re.match(r"^ACC-PAY-2026-\d{5}(-\d+)?$", n) for n in names)
    roots = sorted(int(n[13:18]) for n in names if n.count("-") == 3)
    assert roots == list(range(1, len(roots) + 1))
    sis = [si["name"] for si in _docs(demo, "Sales Invoice")]
    assert sorted(int(n[-5:]) for n in sis) == list(range(1, len(sis) + 1))


def test_duplicate_customer_names_are_disambiguated_like_erpnext(demo: DemoData) -> None:
    """Customers are named by student name; a repeat becomes "<name> - 1", "<name> - 2"."""
    customers = _docs(demo, "Customer")
    names = [c["name"] for c in customers]
    assert len(set(names)) == len(names)
    suffixed = [c for c in customers if c["name"] != c["customer_name"]]
    assert len(suffixed) >= 5
    for cust in suffixed:
        base, _, number = cust["name"].rpartition(" - ")
        assert base == cust["customer_name"] and number.isdigit()
        assert base in names


# --- ERP <-> LMS consistency ----------------------------------------------------------------------
def test_schedules_sum_to_grand_total(demo: DemoData) -> None:
    for si in _docs(demo, "Sales Invoice"):
        if si["is_return"]:
            assert si["payment_schedule"] == []
            continue
        cents = sum(round(r["payment_amount"] * 100) for r in si["payment_schedule"])
        assert cents == round(si["grand_total"] * 100), si["name"]
        assert si["due_date"] == max(r["due_date"] for r in si["payment_schedule"])


def test_plan_installments_sum_to_final_amount(demo: DemoData) -> None:
    for plan in _inst(demo)["fee_plans"]:
        assert sum(i["amount_due"] for i in plan["installments"]) == plan["final_amount"], plan[
            "id"
        ]
        discount = {
            None: 0,
            "flat": plan["discount_value"] or 0,
            "percent": plan["total_amount"] * (plan["discount_value"] or 0) // 100,
        }
        assert plan["final_amount"] == plan["total_amount"] - discount[plan["discount_type"]]
        assert [i["sequence"] for i in plan["installments"]] == list(
            range(1, len(plan["installments"]) + 1)
        )
        assert 1 <= len(plan["installments"]) <= 4


def test_lms_plans_match_their_invoices(demo: DemoData) -> None:
    """Each LMS plan has one invoice carrying its id, with the same rows in the same order."""
    batches = {b["id"]: b["name"] for b in _inst(demo)["batches"]}
    students = {s["id"]: s for s in _inst(demo)["students"]}
    customers = {c["name"]: c for c in _docs(demo, "Customer")}
    by_plan = defaultdict(list)
    for si in _docs(demo, "Sales Invoice"):
        if "custom_zensbot_fee_plan_id" in si:
            by_plan[si["custom_zensbot_fee_plan_id"]].append(si)
    plans = _inst(demo)["fee_plans"]
    assert sorted(by_plan) == sorted(str(p["id"]) for p in plans)
    for plan in plans:
        (si,) = by_plan[str(plan["id"])]
        assert si["custom_batch"] == batches[plan["batch_id"]]
        assert si["grand_total"] == float(plan["final_amount"])
        assert (
            customers[si["customer"]]["email_id"].strip().lower()
            == students[plan["student_id"]]["email"]
        )
        rows = si["payment_schedule"]
        assert [r["payment_term"] for r in rows] == [
            f"Installment {i['sequence']}" for i in plan["installments"]
        ]
        assert [r["due_date"] for r in rows] == [i["due_date"] for i in plan["installments"]]
        assert [r["payment_amount"] for r in rows] == [
            float(i["amount_due"]) for i in plan["installments"]
        ]
        assert (si["docstatus"] == 2) == (plan["status"] == "cancelled")


def test_batches_and_items_agree(demo: DemoData) -> None:
    codes = {"Python Bootcamp": "PY-BOOTCAMP", "Data Science Track": "DS-201"}
    seen = 0
    for si in _docs(demo, "Sales Invoice"):
        if si.get("custom_batch") in codes and not si["is_return"]:
            assert si["items"][0]["item_code"] == codes[si["custom_batch"]]
            seen += 1
    assert seen >= 10


def test_customers_match_students_by_normalised_email(demo: DemoData) -> None:
    students = {s["email"] for s in _inst(demo)["students"]}
    raw = [c.get("email_id") for c in _docs(demo, "Customer")]
    matched = [e for e in raw if e and e.strip().lower() in students]
    assert len(matched) == 205
    assert sum(1 for e in matched if e not in students) >= 5  # case / whitespace variants
    assert len({e.strip().lower() for e in matched}) == len(matched)


def test_every_reference_points_to_an_existing_invoice_of_the_party(demo: DemoData) -> None:
    invoices = {si["name"]: si for si in _docs(demo, "Sales Invoice")}
    for pe in _docs(demo, "Payment Entry"):
        for ref in pe["references"]:
            assert ref["reference_doctype"] == "Sales Invoice"
            si = invoices[ref["reference_name"]]
            assert si["customer"] == pe["party"] and si["docstatus"] == 1 and not si["is_return"]
            terms = [r.get("payment_term") for r in si["payment_schedule"]]
            assert ref.get("payment_term") in terms
            assert ref["total_amount"] == si["grand_total"]
        if pe["references"]:
            keys = [(r["reference_name"], r.get("payment_term")) for r in pe["references"]]
            assert len(set(keys)) == len(keys)


def test_reference_rows_carry_erpnext_computed_values(demo: DemoData) -> None:
    """payment_term_outstanding is the row's balance before the payment; outstanding >= 0."""
    for pe in _docs(demo, "Payment Entry"):
        for ref in pe["references"]:
            if "payment_term" in ref:
                assert ref["payment_term_outstanding"] >= ref["allocated_amount"], pe["name"]
            else:
                assert "payment_term_outstanding" not in ref
            assert 0 <= ref["outstanding_amount"] <= ref["total_amount"]
            assert ref["parent"] == pe["name"] and ref["docstatus"] == pe["docstatus"]


def test_invoice_outstanding_follows_submitted_payments(demo: DemoData) -> None:
    """Outstanding = grand total - submitted allocations; a row is paid only through its term."""
    paid: Counter[str] = Counter()
    row_paid: Counter[tuple[str, str]] = Counter()
    for pe in _docs(demo, "Payment Entry"):
        if pe["docstatus"] != 1:
            continue
        for ref in pe["references"]:
            paid[ref["reference_name"]] += round(ref["allocated_amount"] * 100)
            if ref.get("payment_term"):
                row_paid[(ref["reference_name"], ref["payment_term"])] += round(
                    ref["allocated_amount"] * 100
                )
    for si in _docs(demo, "Sales Invoice"):
        if si["docstatus"] != 1 or si["is_return"]:
            continue
        assert (
            round(si["outstanding_amount"] * 100)
            == round(si["grand_total"] * 100) - paid[si["name"]]
        )
        for row in si["payment_schedule"]:
            expect = row_paid[(si["name"], row["payment_term"])] if row.get("payment_term") else 0
            assert round(row["paid_amount"] * 100) == expect
            assert row["paid_amount"] + row["outstanding"] == row["payment_amount"]
            assert expect <= round(row["payment_amount"] * 100)


def test_lms_seed_records_the_lms_originated_payments(demo: DemoData) -> None:
    """Each LMS payment id in ERPNext is an LMS seed payment, counted in its installment."""
    seed_payments = {p["id"]: p for p in _inst(demo)["payments"]}
    live = {}
    for pe in _docs(demo, "Payment Entry"):
        zb = pe.get("custom_zensbot_payment_id")
        if zb and pe["docstatus"] != 2:
            live[int(zb.removeprefix("ZB-PAY-"))] = pe
    assert sorted(live) == sorted(seed_payments)
    paid_by_inst: Counter[int] = Counter()
    for pid, pay in seed_payments.items():
        assert pay["amount"] == int(live[pid]["paid_amount"])
        assert pay["receipt_number"] == f"RCP-{pid:06d}"
        paid_by_inst[pay["fee_installment_id"]] += pay["amount"]
    for plan in _inst(demo)["fee_plans"]:
        for inst in plan["installments"]:
            assert inst["amount_paid"] == paid_by_inst[inst["id"]]


# --- edge cases -----------------------------------------------------------------------------------
def test_edge_cases_are_present(demo: DemoData) -> None:
    pes = _docs(demo, "Payment Entry")
    by_name = {pe["name"]: pe for pe in pes}
    multi = [pe for pe in pes if len(pe["references"]) == 2]
    same_invoice = [
        pe
        for pe in multi
        if pe["references"][0]["reference_name"] == pe["references"][1]["reference_name"]
    ]
    assert len(same_invoice) >= 3 and len(multi) - len(same_invoice) >= 3
    amended = [pe for pe in pes if "amended_from" in pe]
    assert len(amended) >= 4
    for pe in amended:
        original = by_name[pe["amended_from"]]
        assert original["docstatus"] == 2
        root, _, k = pe["name"].rpartition("-")
        assert k.isdigit() and (
            root == pe["amended_from"] or pe["amended_from"] == f"{root}-{int(k) - 1}"
        )
    assert any(pe["name"].endswith("-2") for pe in amended)
    assert sum(pe["docstatus"] == 2 for pe in pes) >= 5
    assert sum(pe["docstatus"] == 0 for pe in pes) >= 3
    zb = [pe for pe in pes if pe.get("custom_zensbot_payment_id")]
    assert len(zb) >= 5 and all(
        re.match(r"^ZB-PAY-\d{6}$", pe["custom_zensbot_payment_id"]) for pe in zb
    )
    pair = [pe for pe in zb if "amended_from" in pe]
    assert (
        pair
        and by_name[pair[0]["amended_from"]]["custom_zensbot_payment_id"]
        == pair[0]["custom_zensbot_payment_id"]
    )
    assert sum(pe["payment_type"] == "Pay" and pe["party_type"] == "Supplier" for pe in pes) >= 3
    assert sum(pe["payment_type"] == "Internal Transfer" for pe in pes) == 1
    usd = [pe for pe in pes if pe["paid_from_account_currency"] == "USD"]
    assert len(usd) >= 3 and all(pe["source_exchange_rate"] > 200 for pe in usd)
    assert sum(not float(pe["paid_amount"]).is_integer() for pe in pes) >= 3
    advances = [pe for pe in pes if pe["payment_type"] == "Receive" and not pe["references"]]
    assert all(pe["unallocated_amount"] == pe["paid_amount"] for pe in advances)
    sis = _docs(demo, "Sales Invoice")
    notes = [si for si in sis if si["is_return"]]
    assert notes and all(
        si["grand_total"] < 0 and si["return_against"] and si["status"] == "Return" for si in notes
    )
    assert sum(si["docstatus"] == 2 and si["status"] == "Cancelled" for si in sis) >= 1
    assert demo.expected["credit_notes"] == [si["name"] for si in notes]


def test_native_invoices_vary(demo: DemoData) -> None:
    """Native invoices have one-row, monthly and irregular schedules, and no plan id."""
    sis = {si["name"]: si for si in _docs(demo, "Sales Invoice")}
    native = [sis[n] for n in demo.expected["native_invoices"]]
    assert len(native) == 55
    assert all("custom_zensbot_fee_plan_id" not in si for si in native)
    one_row = [si for si in native if len(si["payment_schedule"]) == 1]
    monthly = [
        si
        for si in native
        if all(
            " of " in r.get("description", "") and r["description"].startswith("Month")
            for r in si["payment_schedule"]
        )
    ]
    no_terms = [si for si in native if all("payment_term" not in r for r in si["payment_schedule"])]
    assert (
        len(one_row) >= 3 and len(monthly) >= 3 and len(no_terms) - len(one_row) - len(monthly) >= 3
    )


def test_tie_group_shares_one_modified(demo: DemoData) -> None:
    """A bulk import: at least 45 submitted receipts with one identical `modified`, all pushable."""
    tie = demo.expected["tie_modified"]
    group = [pe for pe in _docs(demo, "Payment Entry") if pe["modified"] == tie]
    assert len(group) >= 45
    assert sorted(pe["name"] for pe in group) == demo.expected["tie_names"]
    assert all(pe["docstatus"] == 1 and pe["payment_type"] == "Receive" for pe in group)
    assert set(demo.expected["tie_names"]) <= set(demo.expected["pushed"])


# --- the answer key, recounted independently ------------------------------------------------------
def _recount(demo: DemoData) -> dict[str, Any]:
    """A second, plain implementation of the sync's decisions over the generated documents."""
    inst = _inst(demo)
    email_to_student = {s["email"].lower(): s["id"] for s in inst["students"]}
    plan_of_student: dict[int, list[int]] = defaultdict(list)
    left: dict[int, int] = {}  # installment id -> amount still due
    plan_insts: dict[int, list[int]] = {}
    plan_status: dict[int, str] = {}
    plan_currency: dict[int, str] = {}
    for plan in inst["fee_plans"]:
        plan_of_student[plan["student_id"]].append(plan["id"])
        plan_status[plan["id"]] = plan["status"]
        plan_currency[plan["id"]] = plan["currency"]
        ordered = sorted(plan["installments"], key=lambda i: i["sequence"])
        plan_insts[plan["id"]] = [i["id"] for i in ordered]
        for i in ordered:
            left[i["id"]] = (
                0 if i["status"] in ("paid", "waived") else i["amount_due"] - i["amount_paid"]
            )
    emails = {c["name"]: (c.get("email_id") or "").strip().lower() for c in _docs(demo, "Customer")}
    invoices = {si["name"]: si for si in _docs(demo, "Sales Invoice")}

    out: dict[str, Any] = {
        "pushed": 0,
        "payments": 0,
        "amount": 0,
        "skipped": Counter(),
        "conflicts": defaultdict(list),
        "needs_plan": [],
        "np_payments": 0,
        "np_amount": 0,
    }
    pes = sorted(
        (pe for pe in _docs(demo, "Payment Entry") if pe["docstatus"] in (1, 2)),
        key=lambda pe: (_when(pe["modified"]), pe["name"]),
    )
    out["drafts"] = sorted(
        pe["name"] for pe in _docs(demo, "Payment Entry") if pe["docstatus"] == 0
    )
    for pe in pes:
        name = pe["name"]
        if (pe["payment_type"], pe.get("party_type")) != ("Receive", "Customer"):
            out["skipped"]["not_customer_receipt"] += 1
            continue
        if pe["docstatus"] == 2:
            out["skipped"]["cancelled"] += 1
            continue
        if pe.get("custom_zensbot_payment_id"):
            out["skipped"]["lms_originated"] += 1
            continue
        student = email_to_student.get(emails.get(pe["party"], ""))
        if student is None:
            out["conflicts"]["unknown_student"].append(name)
            continue
        wanted: list[tuple[int, int | None, Decimal]] = []  # (plan, installment or None, amount)
        if pe["references"]:
            native = [
                r
                for r in pe["references"]
                if "custom_zensbot_fee_plan_id" not in invoices[r["reference_name"]]
            ]
            if native:
                out["needs_plan"].append(name)
                out["np_payments"] += len(pe["references"])
                out["np_amount"] += sum(int(r["allocated_amount"]) for r in pe["references"])
                continue
            for ref in pe["references"]:
                si = invoices[ref["reference_name"]]
                plan = int(si["custom_zensbot_fee_plan_id"])
                seq = next(
                    k
                    for k, r in enumerate(si["payment_schedule"])
                    if r.get("payment_term") == ref["payment_term"]
                )
                wanted.append((plan, plan_insts[plan][seq], Decimal(str(ref["allocated_amount"]))))
        else:
            active = [p for p in plan_of_student[student] if plan_status[p] == "active"]
            if not active:
                out["conflicts"]["no_active_plan"].append(name)
                continue
            if len(active) > 1:
                out["conflicts"]["ambiguous_plan"].append(name)
                continue
            wanted.append((active[0], None, Decimal(str(pe["paid_amount"]))))
        if any(plan_currency[p] != pe["paid_from_account_currency"] for p, _, _ in wanted):
            out["conflicts"]["currency_mismatch"].append(name)
            continue
        if any(a != a.to_integral_value() for _, _, a in wanted):
            out["conflicts"]["fractional_amount"].append(name)
            continue

        def room(plan: int, inst: int | None) -> int:
            return left[inst] if inst is not None else sum(left[i] for i in plan_insts[plan])

        if any(plan_status[p] != "active" or int(a) > room(p, i) for p, i, a in wanted):
            out["conflicts"]["overpayment"].append(name)
            continue
        for plan, inst, amount in wanted:
            rest = int(amount)
            for target in [inst] if inst is not None else plan_insts[plan]:
                take = min(left[target], rest)
                left[target] -= take
                rest -= take
            if all(left[i] == 0 for i in plan_insts[plan]):
                plan_status[plan] = "completed"
            out["payments"] += 1
            out["amount"] += int(amount)
        out["pushed"] += 1
    return out


def test_expected_counts_match_an_independent_recount(demo: DemoData) -> None:
    mine = _recount(demo)
    exp = demo.expected
    assert exp["receipts_pushable"] == mine["pushed"]
    assert exp["lms_payments_expected"] == mine["payments"]
    assert exp["lms_amount_expected"] == mine["amount"]
    assert exp["skipped"] == dict(mine["skipped"])
    assert exp["drafts"] == mine["drafts"]
    assert exp["conflicts"] == dict(mine["conflicts"])
    assert exp["needs_plan"] == mine["needs_plan"]
    assert exp["needs_plan_payments"] == mine["np_payments"]
    assert exp["needs_plan_payments"] > len(exp["needs_plan"])  # multi-reference native receipts
    assert exp["needs_plan_amount"] == mine["np_amount"]
    assert sum(len(t) for t in exp["pushed"].values()) == exp["lms_payments_expected"]


def test_expected_values_for_the_default_seed(demo: DemoData) -> None:
    """The default demo's key figures (a change here is a change of the bundled demo)."""
    exp = demo.expected
    assert (exp["receipts_pushable"], exp["lms_payments_expected"], exp["lms_amount_expected"]) == (
        697,
        704,
        6795431,
    )
    assert exp["skipped"] == {"not_customer_receipt": 4, "cancelled": 8, "lms_originated": 7}
    assert {k: len(v) for k, v in exp["conflicts"].items()} == {
        "unknown_student": 12,
        "ambiguous_plan": 3,
        "currency_mismatch": 3,
        "fractional_amount": 3,
        "overpayment": 3,
        "no_active_plan": 4,
    }
    assert len(exp["drafts"]) == 4
    assert (len(exp["needs_plan"]), exp["needs_plan_payments"], exp["needs_plan_amount"]) == (
        252,
        254,
        2253081,
    )


def test_every_document_is_accounted_for_once(demo: DemoData) -> None:
    exp = demo.expected
    buckets = [
        list(exp["pushed"]),
        exp["drafts"],
        exp["needs_plan"],
        *exp["skipped_docs"].values(),
        *exp["conflicts"].values(),
    ]
    names = [n for bucket in buckets for n in bucket]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(pe["name"] for pe in _docs(demo, "Payment Entry"))
    assert {k: len(v) for k, v in exp["skipped_docs"].items()} == exp["skipped"]


def test_pushed_payments_fit_the_lms_plans(demo: DemoData) -> None:
    """Receipts against LMS invoices never allocate more than an installment's amount due."""
    plans = _plan_by_id(demo)
    due = {
        i["id"]: i["amount_due"] - i["amount_paid"]
        for p in plans.values()
        for i in p["installments"]
    }
    sent: Counter[int] = Counter()
    for targets in demo.expected["pushed"].values():
        for t in targets:
            assert type(t["amount"]) is int and t["amount"] >= 1
            if t["fee_installment_id"] is not None:
                sent[t["fee_installment_id"]] += t["amount"]
    assert all(sent[i] <= due[i] for i in sent)
    partial = [i for i in sent if 0 < sent[i] < due[i]]
    assert len(partial) >= 10


def test_answer_key_is_a_pure_function_of_the_two_dicts(demo: DemoData) -> None:
    key = answer_key(demo.lms_seed, demo.erp_data)
    assert all(demo.expected[k] == v for k, v in key.items())


def test_write_demo_files(tmp_path: Path) -> None:
    lms_path, erp_path = write_demo_files(tmp_path / "out", seed=7)
    assert (lms_path.name, erp_path.name) == ("lms-seed.json", "erpnext-data.json")
    demo = build_demo(7)
    assert json.loads(lms_path.read_text(encoding="utf-8")) == demo.lms_seed
    erp = json.loads(erp_path.read_text(encoding="utf-8"))
    assert erp == demo.erp_data
    assert erp["site_time_zone"] == "Asia/Karachi" and erp["amend_naming"] == "Amend Counter"
    assert erp["users"][0]["api_key"] == "demo_erp_key"
    assert erp["custom_fields"]["Payment Entry"] == ["custom_zensbot_payment_id"]


def test_keys_are_configurable() -> None:
    demo = build_demo(7, lms_api_key="k1", erp_api_key="k2", erp_api_secret="s3")
    assert _inst(demo)["api_keys"][0]["key"] == "k1"
    assert (
        demo.erp_data["users"][0]["api_key"] == "k2"
        and demo.erp_data["users"][0]["api_secret"] == "s3"
    )
