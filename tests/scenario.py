"""Small, exact scenarios for the sandboxes (the demo data is the big one)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import tomllib  # noqa: F401  (kept for readers: configs below are TOML)

LMS_KEY = "zl_test_key_9f8e7d6c5b4a"
ERP_KEY = "erp_test_key_1a2b3c"
ERP_SECRET = "erp_test_secret_4d5e6f7a8b"
KHI = ZoneInfo("Asia/Karachi")


def frappe_ts(moment: datetime) -> str:
    local = moment.astimezone(KHI).replace(tzinfo=None)
    text = local.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-7] if local.microsecond == 0 else text


def build(n_students: int = 10, receipts_per_student: int = 5, amount: int = 1000,
          base: datetime | None = None, same_modified: int = 0, currency: str = "PKR") -> dict[str, Any]:
    """n students, each with one LMS-created plan (invoice carries its plan id) and receipts against it.

    `same_modified` > 0 stamps that many receipts (the first ones) with one identical `modified`.
    Returns {"lms_seed", "erp_data", "receipts": [names], "amount_total"}.
    """
    base = base or datetime(2026, 11, 1, 9, 0, tzinfo=KHI)
    students, plans, customers, invoices, pes = [], [], [], [], []
    inst_id = 90000
    pe_no = 0
    tick = 0
    for i in range(n_students):
        sid, pid = 100 + i, 5000 + i
        email = f"student{i}@example.pk"
        students.append({"id": sid, "name": f"Student {i}", "email": email, "status": "active"})
        per_inst = amount * receipts_per_student   # the plan holds twice what the receipts pay
        installments = []
        for seq in (1, 2):
            inst_id += 1
            installments.append({"id": inst_id, "sequence": seq, "amount_due": per_inst, "amount_paid": 0,
                                 "due_date": f"2026-{10 + seq:02d}-01", "status": "pending", "label": f"Installment {seq}"})
        total = sum(x["amount_due"] for x in installments)
        plans.append({"id": pid, "student_id": sid, "batch_id": 1, "plan_type": "installment", "total_amount": total,
                      "currency": currency, "status": "active", "installments": installments})
        cust = f"Student {i}"
        customers.append({"name": cust, "customer_name": cust, "email_id": email, "customer_group": "Students",
                          "modified": frappe_ts(base)})
        inv = f"ACC-SINV-2026-{i + 1:05d}"
        invoices.append({"name": inv, "docstatus": 1, "status": "Unpaid", "customer": cust, "customer_name": cust,
                         "posting_date": "2026-10-01", "due_date": "2026-12-01", "currency": currency,
                         "grand_total": float(total), "outstanding_amount": float(total), "is_return": 0,
                         "custom_zensbot_fee_plan_id": str(pid), "creation": frappe_ts(base), "modified": frappe_ts(base),
                         "payment_schedule": [{"payment_term": f"Installment {x['sequence']}", "due_date": x["due_date"],
                                               "payment_amount": float(x["amount_due"]), "outstanding": float(x["amount_due"]),
                                               "paid_amount": 0.0, "invoice_portion": 50.0} for x in installments]})
        for _ in range(receipts_per_student):
            pe_no += 1
            tick += 1
            ts = base + timedelta(seconds=tick, microseconds=137 * tick)
            pes.append(_pe(pe_no, cust, amount, inv, ts, currency))
    if same_modified:
        tie = frappe_ts(base + timedelta(seconds=tick + 10))
        for pe in pes[:same_modified]:
            pe["modified"] = tie
    names = [p["name"] for p in pes]
    return {
        "lms_seed": {"rate_limit_per_minute": 100000, "institutes": [{
            "id": "inst-test", "name": "Test Institute",
            "api_keys": [{"key": LMS_KEY, "name": "feesync-test",
                          "scopes": ["fees:read", "fees:write", "students:read"]}],
            "batches": [{"id": 1, "name": "Python Bootcamp"}],
            "students": students, "fee_plans": plans, "payments": []}]},
        "erp_data": {"site_time_zone": "Asia/Karachi",
                     "users": [{"user": "Administrator", "api_key": ERP_KEY, "api_secret": ERP_SECRET,
                                "roles": ["System Manager"]}],
                     "custom_fields": {"Payment Entry": ["custom_zensbot_payment_id"],
                                       "Sales Invoice": ["custom_zensbot_fee_plan_id"]},
                     "amend_naming": "Amend Counter",
                     "documents": {"Payment Entry": pes, "Sales Invoice": invoices, "Customer": customers}},
        "receipts": names,
        "amount_total": amount * len(names),
    }


def _pe(no: int, customer: str, amount: int, invoice: str | None, ts: datetime, currency: str = "PKR",
        docstatus: int = 1) -> dict[str, Any]:
    name = f"ACC-PAY-2026-{no:05d}"
    refs = []
    if invoice:
        refs = [{"reference_doctype": "Sales Invoice", "reference_name": invoice, "allocated_amount": float(amount),
                 "total_amount": float(amount), "outstanding_amount": 0.0, "exchange_rate": 1.0}]
    return {"name": name, "doctype": "Payment Entry", "docstatus": docstatus,
            "status": {0: "Draft", 1: "Submitted", 2: "Cancelled"}[docstatus],
            "naming_series": "ACC-PAY-.YYYY.-", "company": "Zensbot Academy", "payment_type": "Receive",
            "party_type": "Customer", "party": customer, "party_name": customer, "posting_date": ts.date().isoformat(),
            "paid_from": "Debtors - ZA", "paid_to": "Cash - ZA", "paid_from_account_currency": currency,
            "paid_to_account_currency": currency, "paid_amount": float(amount), "received_amount": float(amount),
            "base_paid_amount": float(amount), "base_received_amount": float(amount), "source_exchange_rate": 1.0,
            "target_exchange_rate": 1.0, "total_allocated_amount": float(amount) if invoice else 0.0,
            "unallocated_amount": 0.0 if invoice else float(amount), "difference_amount": 0.0,
            "mode_of_payment": "Cash", "reference_no": None, "amended_from": None,
            "creation": frappe_ts(ts), "modified": frappe_ts(ts), "references": refs}


def new_receipt(no: int, customer: str, amount: int, invoice: str | None, ts: datetime) -> dict[str, Any]:
    return _pe(no, customer, amount, invoice, ts)


def config_toml(state: str, lms_url: str, erp_url: str, *, interval: str = "2s", page_size: int = 100,
                lookback: str = "10m", extra_lms: str = "") -> str:
    """A user's config file: secrets NOT in it (they come from the environment)."""
    return f"""
state_path = "{state}"
log_format = "json"

[lms]
base_url = "{lms_url}"
time_zone = "Asia/Karachi"
rate_limit_per_minute = 100000
max_attempts = 4
max_retry_seconds = 5
{extra_lms}

[sources.erp]
connector = "erpnext"
interval = "{interval}"
lookback = "{lookback}"
lag = "0s"

[sources.erp.settings]
url = "{erp_url}"
site_time_zone = "Asia/Karachi"
page_size = {page_size}
timeout_seconds = 5
max_attempts = 3
max_retry_seconds = 5
"""


def secret_env() -> dict[str, str]:
    return {"FEESYNC_LMS__API_KEY": LMS_KEY, "FEESYNC_SOURCES__ERP__SETTINGS__API_KEY": ERP_KEY,
            "FEESYNC_SOURCES__ERP__SETTINGS__API_SECRET": ERP_SECRET}


def invoice(name: str, customer: str, rows: list[tuple[str, int]], ts: datetime, *, item: str = "PY-BOOTCAMP",
            plan_id: str | None = None, currency: str = "PKR", docstatus: int = 1) -> dict[str, Any]:
    """A Sales Invoice with a payment schedule of (due_date, amount) rows named Installment 1..n."""
    total = sum(a for _, a in rows)
    doc = {"name": name, "doctype": "Sales Invoice", "docstatus": docstatus, "status": "Unpaid", "customer": customer,
           "customer_name": customer, "posting_date": ts.date().isoformat(), "due_date": rows[-1][0],
           "currency": currency, "grand_total": float(total), "rounded_total": float(total),
           "outstanding_amount": float(total), "is_return": 0, "creation": frappe_ts(ts), "modified": frappe_ts(ts),
           "items": [{"item_code": item, "item_name": item, "qty": 1.0, "rate": float(total), "amount": float(total)}],
           "payment_schedule": [{"payment_term": f"Installment {i + 1}", "description": f"Installment {i + 1}",
                                 "due_date": d, "invoice_portion": round(100 * a / total, 6),
                                 "payment_amount": float(a), "outstanding": float(a), "paid_amount": 0.0}
                                for i, (d, a) in enumerate(rows)]}
    if plan_id:
        doc["custom_zensbot_fee_plan_id"] = plan_id
    return doc


def credit_note(name: str, against: str, customer: str, amount: int, ts: datetime) -> dict[str, Any]:
    return {"name": name, "doctype": "Sales Invoice", "docstatus": 1, "status": "Return", "customer": customer,
            "customer_name": customer, "posting_date": ts.date().isoformat(), "due_date": ts.date().isoformat(),
            "currency": "PKR", "grand_total": float(-amount), "rounded_total": float(-amount),
            "outstanding_amount": float(-amount), "is_return": 1, "return_against": against,
            "update_outstanding_for_self": 1, "creation": frappe_ts(ts), "modified": frappe_ts(ts),
            "items": [{"item_code": "PY-BOOTCAMP", "qty": -1.0, "rate": float(amount), "amount": float(-amount)}]}


def receipt_for_terms(no: int, customer: str, invoice_name: str, terms: list[tuple[str, int]],
                      ts: datetime) -> dict[str, Any]:
    """A Payment Entry paying named installments (payment_term) of one invoice, as the desk builds it."""
    total = sum(a for _, a in terms)
    pe = _pe(no, customer, total, None, ts)
    pe["references"] = [{"reference_doctype": "Sales Invoice", "reference_name": invoice_name, "payment_term": t,
                         "allocated_amount": float(a), "total_amount": float(total), "outstanding_amount": 0.0,
                         "exchange_rate": 1.0} for t, a in terms]
    pe["total_allocated_amount"] = float(total)
    pe["unallocated_amount"] = 0.0
    return pe


def lifecycle(n_students: int = 1) -> dict[str, Any]:
    """Students that exist in the LMS without plans; their plans come from ERP invoices."""
    base = datetime(2026, 11, 1, 9, 0, tzinfo=KHI)
    students, customers = [], []
    for i in range(n_students):
        email = f"learner{i}@example.pk"
        students.append({"id": 300 + i, "name": f"Learner {i}", "email": email, "status": "active"})
        customers.append({"name": f"Learner {i}", "customer_name": f"Learner {i}", "email_id": email,
                          "customer_group": "Students", "modified": frappe_ts(base)})
    return {
        "lms_seed": {"rate_limit_per_minute": 100000, "institutes": [{
            "id": "inst-test", "name": "Test Institute",
            "api_keys": [{"key": LMS_KEY, "name": "feesync-test", "scopes": ["fees:read", "fees:write", "students:read"]}],
            "batches": [{"id": 1, "name": "Python Bootcamp"}, {"id": 2, "name": "Data Science"}],
            "students": students, "fee_plans": [], "payments": []}]},
        "erp_data": {"site_time_zone": "Asia/Karachi",
                     "users": [{"user": "Administrator", "api_key": ERP_KEY, "api_secret": ERP_SECRET,
                                "roles": ["System Manager"]}],
                     "custom_fields": {"Payment Entry": ["custom_zensbot_payment_id"],
                                       "Sales Invoice": ["custom_zensbot_fee_plan_id"]},
                     "amend_naming": "Amend Counter",
                     "documents": {"Payment Entry": [], "Sales Invoice": [], "Customer": customers}},
        "base": base,
    }


LIFECYCLE_MAPPING = {"batches": {"PY-BOOTCAMP": "1", "DS-201": "2"}}
