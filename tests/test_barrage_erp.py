"""Bad-input barrage, ERPNext side: generated Payment Entries with missing or mistyped fields, zero,
negative, huge and fractional amounts, unknown currencies, impossible dates, very long and non-Latin
text, and ids repeated with other content.

Two properties, each over 500 generated batches:
* in process: the ERPNext connector and the engine behind `httpx.MockTransport`s (a minimal ERPNext
  answering the generated documents, and an LMS that checks every request with the LMS sandbox's
  own validator), so a batch costs no sockets;
* end to end: the real ERPNext fake, the engine and the real LMS sandbox over HTTP.

In both, the run never crashes; each valid receipt is in the LMS exactly once with its amount; each
bad one is a conflict whose message names what is wrong (or is skipped, for cancelled and
LMS-originated documents); and no request the LMS received was malformed (the sandbox answers those
with a 422 list detail: there are none).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from sync import contract as C
from sync.app import App, build_app, build_connectors
from sync.config import DEFAULT_PAYMENT_METHODS, Settings
from sync.engine import Engine
from sync.lms import LmsClient
from sync.sandbox import _lms_validate as V
from sync.sandbox._lms_state import PAYMENT_FIELDS
from sync.sandbox.erpnext import ERPNextFake
from sync.sandbox.lms import LmsSandbox
from sync.state import Store, conflicts, documents
from tests import barrage, scenario

PE = "Payment Entry"
INVOICE = "ACC-SINV-2026-00001"     # carries custom_zensbot_fee_plan_id 5000 (scenario.build)
PLAN = 5000
CUSTOMER = "Student 0"              # the customer whose e-mail matches LMS student 100
ORIGIN_FIELDS = ("custom_zensbot_payment_id", "zensbot_payment_id")
_names = itertools.count(1)

# --- generated documents ---------------------------------------------------------------------------------
LONG_URDU = "ادائیگی کی رسید " * 400          # ~6,400 characters of non-Latin text
valid_amounts = st.one_of(
    st.integers(1, 10**9), st.integers(1, 10**6).map(float), st.integers(1, 10**6).map(lambda n: f"{n:,}"),
    st.integers(1, 10**12), st.sampled_from(["1000.00", " 250 ", "1,00,000", 18000.0, 1e3]))
bad_amounts = st.one_of(
    st.sampled_from([None, "", "abc", "1.2.3", "12 000", True, False, [1000], {"v": 1}, 0, 0.0, -5, -1000.0,
                     1000.5, "999.99", 0.1, 1e16, 1e300, float("inf"), float("-inf"), float("nan"), "NaN",
                     "Infinity", "10e20", "-0", "1e3", "1,5", "1.234,00"]),
    st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False).map(str),
    st.floats(allow_nan=True, allow_infinity=True))
currencies = st.one_of(st.just("PKR"), st.just("PKR"), st.sampled_from(
    ["USD", "XQZ", "pkr", "", None, 123, "₨", "ПКР", "P" * 300, ["PKR"]]))
dates = st.one_of(st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)).map(date.isoformat),
                  st.sampled_from(["2026-02-30", "2026-13-01", "2026-00-10", "0000-00-00", "", None, "yesterday",
                                   "31/12/2026", "2026-11-02T10:00:00", 20261101, 2026.11, ["2026-11-02"]]))
parties = st.one_of(st.just(CUSTOMER), st.just(CUSTOMER), st.sampled_from(
    [None, "", 42, "Nobody Known", "طالب علم نمبر ایک", "学生" * 60, "Ω" * 140, ["Student 0"]]))
methods = st.one_of(st.sampled_from(sorted(DEFAULT_PAYMENT_METHODS)), st.sampled_from(
    ["Bitcoin", "", None, 5, ["Cash"], {"mode": "Cash"}, "cash", "نقد"]))
reference_nos = st.one_of(st.none(), st.text(max_size=140), st.just("چیک-" * 40), st.sampled_from(
    [123456, 12.5, ["CHQ-1"], {"no": 1}, True]))
name_prefixes = st.sampled_from(["ACC-PAY-2026-", "رسید-", "收据-", "Zahlung-Ä-", "PE " * 20, "ACC-PAY-2026-"])


def references_for(kind: str, amount: Any) -> Any:
    if kind == "invoice":
        return [{"reference_doctype": "Sales Invoice", "reference_name": INVOICE, "allocated_amount": amount}]
    if kind == "invoice_twice":
        return [{"reference_doctype": "Sales Invoice", "reference_name": INVOICE, "allocated_amount": 1.0},
                {"reference_doctype": "Sales Invoice", "reference_name": INVOICE, "allocated_amount": 2.0}]
    if kind == "bad_allocation":
        return [{"reference_doctype": "Sales Invoice", "reference_name": INVOICE, "allocated_amount": "lots"}]
    if kind == "not_a_list":
        return "ACC-SINV-2026-00001"
    if kind == "junk_rows":
        return [None, 5, "x", {"reference_doctype": "Sales Invoice", "reference_name": INVOICE,
                               "allocated_amount": amount}]
    return []


@st.composite
def payment_entries(draw: Any) -> dict[str, Any]:
    """One Payment Entry as an ERPNext single GET would return it, valid or broken in generated ways."""
    broken = draw(st.sets(st.sampled_from(["amount", "currency", "date", "party", "method", "refs", "unallocated",
                                           "reference_no", "amended_from", "missing_keys"]), max_size=3))
    amount = draw(bad_amounts if "amount" in broken else valid_amounts)
    doc: dict[str, Any] = {
        "name": f"{draw(name_prefixes)}{next(_names):06d}",
        "docstatus": draw(st.sampled_from([1] * 12 + [2, 0])),
        "payment_type": "Receive", "party_type": "Customer",
        "party": draw(parties) if "party" in broken else CUSTOMER,
        "paid_amount": amount,
        "paid_from_account_currency": draw(currencies) if "currency" in broken else "PKR",
        "posting_date": draw(dates) if "date" in broken else "2026-11-02",
        "mode_of_payment": draw(methods) if "method" in broken else "Cash",
        "reference_no": draw(reference_nos) if "reference_no" in broken else None,
        "references": references_for(draw(st.sampled_from(
            ["invoice", "invoice", "none", "invoice_twice", "bad_allocation", "not_a_list", "junk_rows"]
            if "refs" in broken else ["invoice", "invoice", "none"])), amount),
        "unallocated_amount": draw(st.sampled_from([None, "x", [], -1.5, 0.0])) if "unallocated" in broken else 0.0,
        "amended_from": draw(st.sampled_from(["ACC-PAY-2026-99999", 7, ["x"]])) if "amended_from" in broken else None,
        "remarks": draw(st.sampled_from(["", LONG_URDU, "Received with thanks", "\u202e\u0000 control chars"])),
    }
    if draw(st.integers(0, 15)) == 0:
        doc[draw(st.sampled_from(ORIGIN_FIELDS))] = str(draw(st.integers(1, 10**6)))
    if "missing_keys" in broken:
        for key in draw(st.sets(st.sampled_from(["paid_amount", "party", "paid_from_account_currency",
                                                 "posting_date", "mode_of_payment", "references"]), min_size=1)):
            doc.pop(key, None)
    return doc


# --- the oracle: what the daemon must do with a document, from the README's rules -----------------------------
def _amount(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int):
            d = Decimal(value)
        elif isinstance(value, float):
            d = Decimal(repr(value))
        elif isinstance(value, str):   # text: digit groups (thousands or lakh) and a '.' fraction only
            if not re.fullmatch(r"[+-]?(\d{1,3}(,\d{3})+|\d{1,2}(,\d{2})*,\d{3}|\d+)(\.\d+)?", value.strip()):
                return None
            d = Decimal(value.strip().replace(",", ""))
        else:
            return None
    except InvalidOperation:
        return None
    return d if d.is_finite() and abs(d) < Decimal("1e15") else None


@dataclass
class Expect:
    outcomes: set[str]                          # pushed | conflict | skipped | absent
    words: list[str] = field(default_factory=list)   # a conflict's message names one of these
    amount: int | None = None


def expect(doc: dict[str, Any]) -> Expect:
    if doc.get("docstatus") == 0:
        return Expect({"absent"})
    if doc.get("docstatus") == 2:
        return Expect({"skipped"})
    words: list[str] = []
    party = doc.get("party")
    if not (isinstance(party, str) and party):
        words.append("party")
    currency = doc.get("paid_from_account_currency") or doc.get("party_account_currency")
    if not (isinstance(currency, str) and currency):
        words.append("currency")
    amount = _amount(doc.get("paid_amount"))
    if amount is None:
        words.append("paid_amount")
    try:
        date.fromisoformat(str(doc.get("posting_date")))
    except ValueError:
        words.append("posting_date")
    refs = doc.get("references") or []
    if not isinstance(refs, list):
        words.append("references")
        refs = []
    if any(isinstance(r, dict) and _amount(r.get("allocated_amount")) is None for r in refs):
        words.append("allocated_amount")
    if _amount(doc.get("unallocated_amount", 0) or 0) is None:
        words.append("unallocated_amount")
    method = doc.get("mode_of_payment")
    if not (isinstance(method, str) and method in DEFAULT_PAYMENT_METHODS):
        words += ["mode of payment", "mode_of_payment"]
    lenient: set[str] = set()
    ref_no = doc.get("reference_no")
    if ref_no is not None and not isinstance(ref_no, str):
        words.append("reference_no")
        if isinstance(ref_no, int | float) and not isinstance(ref_no, bool):
            lenient.add("reference_no")      # a number could fairly be read as its text
    amended = doc.get("amended_from")
    if amended is not None and not isinstance(amended, str):
        words.append("amended_from")
        if isinstance(amended, int):
            lenient.add("amended_from")
    if amount is not None:
        if amount != amount.to_integral_value():
            words.append("fraction")
        elif amount < 1:
            words.append("below 1")
    if isinstance(currency, str) and currency and currency != "PKR":
        words.append(currency[:20])
    to_invoice = any(isinstance(r, dict) and r.get("reference_name") == INVOICE for r in refs)
    if not to_invoice and party != CUSTOMER:
        words.append("e-mail")            # no plan from an invoice, and no student to find one by
    origin = any(doc.get(f) for f in ORIGIN_FIELDS)
    if origin:
        return Expect({"skipped", "conflict"} if words else {"skipped"}, words)
    if words and set(words) <= lenient:
        return Expect({"pushed", "conflict"}, words, int(amount) if amount is not None else None)
    if words:
        return Expect({"conflict"}, words)
    return Expect({"pushed"}, [], int(amount))


# --- checking one batch ---------------------------------------------------------------------------------------
def outcome_of(store: Store, doc_id: str) -> tuple[str, str | None, list[str]]:
    with store.engine.connect() as c:
        row = c.execute(select(documents.c.status, documents.c.reason).where(
            documents.c.source == "erp", documents.c.doc_id == doc_id)).first()
        open_ = c.execute(select(conflicts.c.kind, conflicts.c.detail).where(
            conflicts.c.source == "erp", conflicts.c.doc_id == doc_id, conflicts.c.status == "open")).all()
    if row is None:
        return "absent", None, []
    details = [f"{k}: {d}" for k, d in open_]
    status = "conflict" if row.status == "conflict" or (row.status == "pushed" and details) else row.status
    return status, row.reason, details


def check(doc: dict[str, Any], exp: Expect, store: Store, payments: Counter[str],
          amounts: dict[str, list[int]]) -> None:
    name = doc["name"]
    status, reason, details = outcome_of(store, name)
    event(f"outcome: {status}" + (f" ({details[0].split(':', 1)[0]})" if details else ""))
    note = f"erp:erp:{name}"
    assert status in exp.outcomes, f"{name}: {status} ({reason}; {details}), expected {exp.outcomes} for {exp.words}"
    if status == "pushed":
        assert payments[note] == 1, f"{name}: {payments[note]} LMS payments"
        if exp.amount is not None:
            assert amounts[note] == [exp.amount], f"{name}: LMS amount {amounts[note]}, ERP {doc.get('paid_amount')!r}"
    else:
        assert payments[note] == 0, f"{name} ({status}) reached the LMS {payments[note]} time(s)"
    if status == "conflict":
        assert details, f"{name}: conflict status without an open conflict"
        text = " ".join(details).lower()
        assert any(w.lower() in text for w in exp.words), f"{name}: {details} names none of {exp.words}"
    if status == "skipped":
        assert reason in ("cancelled", "lms_originated"), reason


# --- property 1: in process ------------------------------------------------------------------------------------
class MiniERPNext:
    """Answers the ERPNext calls the connector makes for the current batch (no sockets)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        date_hdr = {"Date": format_datetime(datetime.now(UTC), usegmt=True)}
        if path.startswith("/api/method/"):
            return httpx.Response(200, json={"message": "Administrator"}, headers=date_hdr)
        if path == f"/api/resource/{PE}":
            rows = sorted(({"name": d["name"], "modified": d["modified"], "docstatus": d.get("docstatus")}
                           for d in self.docs.values() if d.get("docstatus") in (1, 2)),
                          key=lambda r: (r["modified"], r["name"]))
            return httpx.Response(200, json={"data": rows}, headers=date_hdr)
        if path == "/api/resource/Sales Invoice":
            return httpx.Response(200, json={"data": []}, headers=date_hdr)
        prefix, _, name = path.rpartition("/")
        if prefix == f"/api/resource/{PE}" and name in self.docs:
            return httpx.Response(200, content=json.dumps({"data": self.docs[name]}).encode(),
                                  headers={**date_hdr, "Content-Type": "application/json"})
        if prefix == "/api/resource/Customer" and name == CUSTOMER:
            return httpx.Response(200, json={"data": {"name": CUSTOMER, "email_id": "student0@example.pk"}})
        if prefix == "/api/resource/Sales Invoice" and name == INVOICE:
            return httpx.Response(200, json={"data": {"name": INVOICE, "custom_zensbot_fee_plan_id": str(PLAN),
                                                      "payment_schedule": []}})
        return httpx.Response(404, json={"exc_type": "DoesNotExistError"})


class StrictLms:
    """An LMS that checks each request with the sandbox's validator and keeps keys like the real one."""

    def __init__(self) -> None:
        self.malformed: list[Any] = []
        self.key_reuse: list[str] = []
        self.by_key: dict[str, tuple[str, dict[str, Any]]] = {}
        self.payments: Counter[str] = Counter()
        self.amounts: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.plan = {"id": PLAN, "student_id": 100, "currency": "PKR", "status": "active",
                     "installments": [{"id": 90001, "sequence": 1, "amount_due": 10**16, "amount_paid": 0,
                                       "status": "pending"}]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(C.API_PREFIX)
        if request.method == "GET":
            if path == C.PATH_STUDENTS:
                data = [{"id": 100, "email": "student0@example.pk", "status": "active"}] \
                    if request.url.params.get(C.Q_SEARCH) == "student0@example.pk" else []
            elif path == C.PATH_FEE_PLANS:
                data = [self.plan] if request.url.params.get(C.Q_STUDENT_ID) == "100" else []
            elif path == C.path(C.PATH_FEE_PLAN, plan_id=PLAN):
                return httpx.Response(200, json=self.plan)
            else:
                return httpx.Response(404, json={"detail": "Not found"})
            return httpx.Response(200, json={"data": data, "total": len(data), "page": 1, "per_page": 100,
                                             "total_pages": 1})
        key = request.headers.get(C.HDR_IDEMPOTENCY_KEY)
        try:
            body = json.loads(request.content)
        except ValueError:
            body = None
        errors = V.check_object(body, PAYMENT_FIELDS, ["body"])
        with self.lock:
            if errors or not key or path != C.path(C.PATH_PLAN_PAYMENTS, plan_id=PLAN):
                self.malformed.append({"path": path, "key": key, "errors": errors})
                return httpx.Response(422, json={"detail": errors or [{"msg": "bad path or key"}]})
            fp = json.dumps(body, sort_keys=True)
            if key in self.by_key:
                if self.by_key[key][0] != fp:
                    self.key_reuse.append(key)
                    return httpx.Response(409, json={"detail": C.DETAIL_KEY_REUSED})
                return httpx.Response(201, json=self.by_key[key][1], headers={C.HDR_REPLAYED: "true"})
            n = sum(self.payments.values()) + 1
            answer = {"id": n, "fee_plan_id": PLAN, "amount": body["amount"], "receipt_number": f"RCP-{n:06d}",
                      "status": "received", "notes": body.get("notes")}
            self.by_key[key] = (fp, answer)
            self.payments[body.get("notes") or ""] += 1
            self.amounts.setdefault(body.get("notes") or "", []).append(body["amount"])
        return httpx.Response(201, json=answer)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("barrage-erp-fast")
    settings_ = Settings(
        state_path=str(tmp / "state.db"), log_format="json",
        lms={"base_url": "http://lms.test" + C.API_PREFIX, "api_key": "zl_barrage_erp_0123", "max_attempts": 2,
             "max_retry_seconds": 2},
        sources={"erp": {"connector": "erpnext", "lookback": "10m", "lag": "0s",
                         "settings": {"url": "http://erp.test", "api_key": "k_barrage", "api_secret": "s_barrage",
                                      "max_attempts": 2, "max_retry_seconds": 2}}})
    erp, lms_fake = MiniERPNext(), StrictLms()
    stop = threading.Event()
    connectors = build_connectors(settings_, stop, transports={"erp": httpx.MockTransport(erp)})
    store = Store.open(settings_.state_path)
    lms = LmsClient(settings_.lms, transport=httpx.MockTransport(lms_fake), sleep=lambda s: None, stop_event=stop)
    app = App(settings_, store, lms, connectors, Engine(settings_, store, lms, connectors, stop_event=stop), stop)
    world = {"app": app, "erp": erp, "lms": lms_fake, "minute": 0, "pushed": []}
    yield world
    app.close()


def _stamp(minute: int) -> str:
    moment = datetime(2026, 9, 1, tzinfo=scenario.KHI) + timedelta(minutes=minute)
    return scenario.frappe_ts(moment)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payment_entries(), min_size=1, max_size=8), repeat=st.sampled_from(["none", "money", "text"]))
@barrage.counted
def test_generated_erpnext_documents_in_process_never_crash_lose_or_send_malformed_requests(in_process, batch, repeat):
    """Connector + engine behind mock transports: each valid receipt once, each bad one a named conflict."""
    w = in_process
    erp, lms, app = w["erp"], w["lms"], w["app"]
    w["minute"] += 30
    erp.docs = {}
    for i, doc in enumerate(batch):
        doc["modified"] = _stamp(w["minute"]) + f".{i:06d}"
        erp.docs[doc["name"]] = doc
    repeated = None
    if repeat != "none" and w["pushed"]:
        # an id seen before, with other content (money changed) or with only free text changed
        old = dict(w["pushed"].pop() if repeat == "money" else w["pushed"][-1])
        old["modified"] = _stamp(w["minute"]) + ".900000"
        if repeat == "money":
            old["paid_amount"] = float(_amount(old["paid_amount"]) + 7)
        else:
            old["remarks"] = "edited: " + LONG_URDU[:50]
        erp.docs[old["name"]] = repeated = old
    result = app.engine.run_once("erp", datetime.now(UTC))
    assert result.status in ("ok", "conflicts"), (result.status, result.error)
    for doc in batch:
        exp = expect(doc)
        check(doc, exp, app.store, lms.payments, lms.amounts)
        if expect(doc).outcomes == {"pushed"}:
            w["pushed"].append(doc)
    if repeated is not None:
        status, _, details = outcome_of(app.store, repeated["name"])
        assert lms.payments[f"erp:erp:{repeated['name']}"] == 1
        if repeat == "money":
            assert status == "conflict" and any("changed_after_sync" in d and "RCP-" in d for d in details), details
        else:
            assert status == "pushed" and not details, (status, details)
    assert lms.malformed == [], lms.malformed[:3]
    assert lms.key_reuse == []


# --- property 2: end to end over HTTP -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def over_http(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("barrage-erp-e2e")
    scn = barrage.bottomless_plans(scenario.build(n_students=2, receipts_per_student=1), 10**16)
    scn["erp_data"]["documents"][PE] = []
    lms = LmsSandbox(scn["lms_seed"]).start()
    # the fake's clock moves 30 minutes per example: documents are stamped by it, as a real site does,
    # so a batch is never behind the cursor that an earlier batch's invoice update moved to "now"
    clock = [datetime(2026, 12, 1, tzinfo=UTC)]
    erp = ERPNextFake(scn["erp_data"], clock=lambda: clock[0]).start()
    rejected = barrage.watch_malformed(lms)
    settings_ = Settings(
        state_path=str(tmp / "state.db"), log_format="json",
        lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": 100000,
             "max_attempts": 2, "max_retry_seconds": 2, "limiter_path": str(tmp / "pacing.db")},
        sources={"erp": {"connector": "erpnext", "lookback": "10m", "lag": "0s",
                         "settings": {"url": erp.url, "api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET,
                                      "max_attempts": 2, "max_retry_seconds": 2}}})
    app = build_app(settings_, sleep=lambda s: None, pacing=False)
    world = {"app": app, "lms": lms, "erp": erp, "rejected": rejected, "clock": clock, "pushed": [], "refused": 0,
             "checked": Counter()}
    yield world
    app.close()
    lms.stop()
    erp.stop()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payment_entries(), min_size=1, max_size=4), repeat=st.sampled_from(["none", "money", "text"]))
@barrage.counted
def test_generated_erpnext_documents_end_to_end_over_http(over_http, batch, repeat):
    """ERPNext fake -> engine -> LMS sandbox: valid receipts once with their amounts, bad ones named
    conflicts, repeated ids with other content a `changed_after_sync` conflict, no malformed request."""
    w = over_http
    app, lms, erp = w["app"], w["lms"], w["erp"]
    w["clock"][0] += timedelta(minutes=30)
    base = w["clock"][0] - timedelta(seconds=60)
    stored = []
    for i, doc in enumerate(batch):
        try:
            saved = erp.insert(PE, {k: v for k, v in doc.items() if k != "modified"},
                               modified=base + timedelta(seconds=i))
        except Exception:  # noqa: BLE001 - a document the fake itself cannot hold is not an ERP answer
            w["refused"] += 1
            continue
        stored.append(erp.get(PE, saved["name"]))   # as the ERP holds it (the fake may normalise fields)
    repeated = None
    if repeat != "none" and w["pushed"]:
        name = w["pushed"].pop() if repeat == "money" else w["pushed"][-1]
        change = {"paid_amount": float(_amount(erp.get(PE, name)["paid_amount"]) + 7)} if repeat == "money" \
            else {"remarks": "edited: " + LONG_URDU[:50]}
        repeated = erp.update(PE, name, change, modified=base + timedelta(seconds=30))
    result = app.engine.run_once("erp", datetime.now(UTC))
    assert result.status in ("ok", "conflicts"), (result.status, result.error)
    pays = lms.payments()
    payments = Counter(p["notes"] for p in pays)
    amounts: dict[str, list[int]] = {}
    for p in pays:
        amounts.setdefault(p["notes"], []).append(p["amount"])
    for doc in stored:
        exp = expect(doc)
        check(doc, exp, app.store, payments, amounts)
        w["checked"][next(iter(sorted(exp.outcomes)))] += 1
        if exp.outcomes == {"pushed"}:
            w["pushed"].append(doc["name"])
    if repeated is not None:
        status, _, details = outcome_of(app.store, repeated["name"])
        assert payments[f"erp:erp:{repeated['name']}"] == 1
        if repeat == "money":
            assert status == "conflict" and any("changed_after_sync" in d and "RCP-" in d for d in details), details
        else:
            assert status == "pushed" and not details, (status, details)
    assert w["rejected"] == [], w["rejected"][:3]


def test_a_receipt_id_in_urdu_is_pushed_once_with_an_ascii_safe_idempotency_key(in_process):
    """A Payment Entry named in a non-Latin script (Frappe allows it) is pushed, not a crash."""
    w = in_process
    w["minute"] += 30
    doc = {"name": "رسید-۰۰۱", "docstatus": 1, "payment_type": "Receive", "party_type": "Customer",
           "party": CUSTOMER, "paid_amount": 1500.0, "paid_from_account_currency": "PKR",
           "posting_date": "2026-11-02", "mode_of_payment": "Cash", "references": references_for("invoice", 1500.0),
           "modified": _stamp(w["minute"])}
    w["erp"].docs = {doc["name"]: doc}
    result = w["app"].engine.run_once("erp", datetime.now(UTC))
    assert result.status == "ok", result.error
    assert w["lms"].payments[f"erp:erp:{doc['name']}"] == 1


def test_a_mistyped_mode_of_payment_is_a_named_conflict_not_a_crash(in_process):
    """`mode_of_payment: ["Cash"]` (a list) becomes a conflict about the mode of payment."""
    w = in_process
    w["minute"] += 30
    doc = {"name": f"ACC-PAY-2026-{next(_names):06d}", "docstatus": 1, "payment_type": "Receive",
           "party_type": "Customer", "party": CUSTOMER, "paid_amount": 1500.0, "paid_from_account_currency": "PKR",
           "posting_date": "2026-11-02", "mode_of_payment": ["Cash"], "references": references_for("invoice", 1500.0),
           "modified": _stamp(w["minute"])}
    w["erp"].docs = {doc["name"]: doc}
    result = w["app"].engine.run_once("erp", datetime.now(UTC))
    assert result.status == "conflicts", (result.status, result.error)
    status, _, details = outcome_of(w["app"].store, doc["name"])
    assert status == "conflict" and "mode" in " ".join(details).lower(), details



def test_an_erpnext_500_lost_connection_is_retried_not_a_failed_run(over_http):
    """Production Frappe answers a database blip as 500 with the MariaDB error only in `exception`
    ("(2013, 'Lost connection to MySQL server during query')"): the list call is retried and the
    receipt goes through in the same run."""
    w = over_http
    w["clock"][0] += timedelta(minutes=30)
    doc = {"name": f"ACC-PAY-2026-{next(_names):06d}", "docstatus": 1, "payment_type": "Receive",
           "party_type": "Customer", "party": CUSTOMER, "paid_amount": 1500.0, "paid_from_account_currency": "PKR",
           "posting_date": "2026-11-02", "mode_of_payment": "Cash", "references": references_for("invoice", 1500.0)}
    w["erp"].insert(PE, doc, modified=w["clock"][0] - timedelta(seconds=60))
    w["erp"].faults.fail(500, count=1, path_regex=r"^/api/resource/Payment Entry$")
    result = w["app"].engine.run_once("erp", datetime.now(UTC))
    assert result.status == "ok", result.error
    assert [p["amount"] for p in w["lms"].payments() if p["notes"] == f"erp:erp:{doc['name']}"] == [1500]


def test_each_property_above_ran_at_least_500_examples():
    """`max_examples` is a ceiling: count what really ran."""
    barrage.assert_examples_ran(test_generated_erpnext_documents_in_process_never_crash_lose_or_send_malformed_requests, test_generated_erpnext_documents_end_to_end_over_http)
