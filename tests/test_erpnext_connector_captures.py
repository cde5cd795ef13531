"""The ERPNext connector on real ERPNext 15 answers, served byte-for-byte as captured."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest
from pydantic import SecretStr

from connectors.erpnext import ERPNextConnector, ERPNextSettings
from sync.errors import SourceError, StopSource
from sync.events import Malformed, PaymentCancelled, PaymentReceived, Unchanged
from tests.conftest import FIXTURES, fixture_path


class _NoLedger:
    def __init__(self, seen=()):
        self._seen = set(seen)

    def seen(self, doc_id, version):
        return (doc_id, version) in self._seen

    def recall(self, key):
        return None

    def remember(self, key, value):
        pass


def _captured_singles() -> dict[str, tuple[int, bytes]]:
    """path -> (status, raw body) for every captured single-document GET."""
    out = {}
    admin = {e["name"] for e in json.loads(fixture_path("_index.json").read_text()) if e.get("auth") == "admin"}
    for meta_file in FIXTURES.glob("*.meta.json"):
        meta = json.loads(meta_file.read_text())
        req = meta["request"]
        if meta_file.name.removesuffix(".meta.json") not in admin:
            continue
        if req["method"] != "GET" or req.get("query_params_decoded") or "/api/v2/" in req["path"]:
            continue
        body_file = FIXTURES / meta["response"]["body_file"]
        out[req["path"]] = (meta["response"]["status"], body_file.read_bytes())
    return out


def _transport(list_capture: str, overrides: dict[str, tuple[int, bytes]] | None = None,
               only_captured: bool = True) -> httpx.MockTransport:
    singles = _captured_singles()
    not_found = fixture_path("err_unknown_doc_404.json").read_bytes()
    list_body = fixture_path(list_capture).read_bytes()
    if only_captured:   # the captured rows whose single GET was captured too (the others would 404 here)
        rows = json.loads(list_body)["data"]
        rows = [r for r in rows if f"/api/resource/Payment Entry/{r['name']}" in singles]
        list_body = json.dumps({"data": rows}).encode()
    date_header = {"Date": "Thu, 03 Dec 2026 18:30:01 GMT", "Content-Type": "application/json"}

    # ACC-SINV-2026-00003 (paid by the amendment 00003-1) has no captured single GET; its payment schedule
    # rows are in the captured child-table list, so serve a document made of exactly those rows.
    schedule = [r for r in json.loads(fixture_path("si_list_child_payment_schedule.json").read_text())["data"]
                if r["name"] == "ACC-SINV-2026-00003"]
    schedule.sort(key=lambda r: r["due_date"])
    singles.setdefault("/api/resource/Sales Invoice/ACC-SINV-2026-00003", (200, json.dumps({"data": {
        "name": "ACC-SINV-2026-00003", "docstatus": 1, "payment_schedule": [
            {k: v for k, v in r.items() if k != "name"} for r in schedule]}}).encode()))

    def handler(request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if overrides and path in overrides:
            status, body = overrides[path]
            return httpx.Response(status, content=body, headers=date_header)
        if path == "/api/resource/Payment Entry":
            return httpx.Response(200, content=list_body, headers=date_header)
        if path in singles:
            status, body = singles[path]
            return httpx.Response(status, content=body, headers=date_header)
        return httpx.Response(404, content=not_found, headers=date_header)

    return httpx.MockTransport(handler)


def _connector(transport: httpx.MockTransport, page_size: int = 100, invoices: bool = False) -> ERPNextConnector:
    settings = ERPNextSettings(url="http://erp.test", api_key=SecretStr("k" * 15), api_secret=SecretStr("s" * 15),
                               page_size=page_size, max_attempts=1, sync_invoices=invoices)
    return ERPNextConnector(settings, transport=transport)


@pytest.fixture
def events():
    conn = _connector(_transport("pe_list_all_limit0.json"))
    try:
        return {e.doc_id: e for e in conn.fetch(None, _NoLedger())}
    finally:
        conn.close()


def test_two_installment_receipt_normalises_with_terms_in_schedule_order(events):
    """ACC-PAY-2026-00002 pays installments 1 and 2 of ACC-SINV-2026-00002: two references, Decimal money."""
    ev = events["ACC-PAY-2026-00002"]
    assert isinstance(ev, PaymentReceived)
    assert ev.amount == Decimal("60000") and ev.currency == "PKR"
    assert [(r.invoice_id, r.installment_term, r.installment_index, r.amount) for r in ev.references] == [
        ("ACC-SINV-2026-00002", "Installment 1", 1, Decimal("30000")),
        ("ACC-SINV-2026-00002", "Installment 2", 2, Decimal("30000"))]
    assert ev.position.changed_at.tzinfo is UTC or ev.position.changed_at.utcoffset().total_seconds() == 0
    assert ev.position.changed_at.hour == 18   # 23:28 Karachi is 18:28 UTC
    assert ev.origin_marker is None


def test_lms_originated_receipt_is_marked_from_unprefixed_custom_field(events):
    """ACC-PAY-2026-00001 carries `zensbot_payment_id` (no custom_ prefix): it came from the LMS."""
    assert events["ACC-PAY-2026-00001"].origin_marker == "ZB-PAY-000101"
    assert events["ACC-PAY-2026-00022"].origin_marker == "ZB-PAY-000150"


def test_cancelled_and_amended_documents(events):
    """00003 is cancelled (docstatus 2); 00003-1 is its amendment, a new document."""
    assert isinstance(events["ACC-PAY-2026-00003"], PaymentCancelled)
    amended = events["ACC-PAY-2026-00003-1"]
    assert isinstance(amended, PaymentReceived) and amended.amended_from == "ACC-PAY-2026-00003"
    assert amended.amount == Decimal("38000")


def test_drafts_are_not_yielded_even_if_the_server_lists_them(events):
    """Drafts 00021 and 00024 appear in the unfiltered capture but never become events."""
    assert "ACC-PAY-2026-00021" not in events and "ACC-PAY-2026-00024" not in events


def test_reference_without_payment_term_has_no_installment(events):
    """00004 pays invoice 00005 whose explicit schedule has no terms: no installment is named."""
    ev = events["ACC-PAY-2026-00004"]
    assert [r.installment_index for r in ev.references] == [None]


def test_a_listed_receipt_whose_get_answers_404_defers_the_run():
    """A submitted receipt cannot be deleted in Frappe: a 404 after listing is passing, so the run defers
    (the cursor stays before it) instead of dropping the receipt."""
    from sync.errors import DeferredError
    conn = _connector(_transport("pe_list_all_limit0.json", only_captured=False))
    with pytest.raises(DeferredError, match="ACC-PAY-2026-00005 was listed but its GET answered 404"):
        list(conn.fetch(None, _NoLedger()))


def test_known_version_is_unchanged_without_a_get():
    """A row the ledger already decided at the same modified|docstatus yields Unchanged and no GET."""
    calls = []
    inner = _transport("pe_list_all_limit0.json")

    def counting(request):
        calls.append(unquote(request.url.path))
        return inner.handle_request(request)
    conn = _connector(httpx.MockTransport(counting))
    ledger = _NoLedger({("ACC-PAY-2026-00002", "2026-12-03 23:28:40.721078|1")})
    evs = {e.doc_id: e for e in conn.fetch(None, ledger)}
    assert isinstance(evs["ACC-PAY-2026-00002"], Unchanged)
    assert "/api/resource/Payment Entry/ACC-PAY-2026-00002" not in calls


def test_short_page_ends_paging():
    """The capture holds 24 rows; with page size 100 that is a short page: exactly one list call."""
    calls = []
    inner = _transport("pe_list_all_limit0.json")

    def counting(request):
        calls.append(unquote(request.url.path))
        return inner.handle_request(request)
    list(_connector(httpx.MockTransport(counting)).fetch(None, _NoLedger()))
    assert calls.count("/api/resource/Payment Entry") == 1


@pytest.mark.parametrize(("capture", "status", "error", "text"), [
    ("err_bad_token_unknown_key.json", 401, StopSource, "AuthenticationError"),
    ("notb_err_bad_token.json", 401, StopSource, "AuthenticationError"),
    ("err_permission_list_limited_user.json", 403, StopSource, "PermissionError"),
    ("err_filter_unknown_column.json", 417, SourceError, "Field not permitted in query: no_such_field"),
    ("err_filter_invalid_json.json", 500, SourceError, "JSONDecodeError"),
    ("err_order_by_unknown_column.json", 500, SourceError, "OperationalError"),
])
def test_frappe_errors_map_into_our_hierarchy(capture, status, error, text):
    """Captured Frappe error bodies become StopSource / SourceError with the server's own message."""
    body = fixture_path(capture).read_bytes()
    conn = _connector(_transport("pe_list_all_limit0.json", {"/api/resource/Payment Entry": (status, body)}))
    with pytest.raises(error) as err:
        list(conn.fetch(None, _NoLedger()))
    assert text in str(err.value)


def test_malformed_single_document_becomes_malformed_event():
    """A document whose paid_amount is garbage is yielded as Malformed with the reason, not dropped."""
    doc = json.loads(fixture_path("pe_get_submitted_two_installments.json").read_text())
    doc["data"]["paid_amount"] = "lots"
    conn = _connector(_transport("pe_list_all_limit0.json", {
        "/api/resource/Payment Entry/ACC-PAY-2026-00002": (200, json.dumps(doc).encode())}))
    evs = {e.doc_id: e for e in conn.fetch(None, _NoLedger())}
    assert isinstance(evs["ACC-PAY-2026-00002"], Malformed)
    assert "paid_amount" in evs["ACC-PAY-2026-00002"].problem


def _invoice_list_body() -> bytes:
    """A Sales Invoice list page as Frappe shapes it, listing the captured invoices by (modified, name)."""
    rows = []
    for f in sorted(FIXTURES.glob("si_get_*.json")):
        if f.name.endswith(".meta.json"):
            continue
        d = json.loads(f.read_text())["data"]
        rows.append({"name": d["name"], "modified": d["modified"], "docstatus": d["docstatus"]})
    rows.sort(key=lambda r: (r["modified"], r["name"]))
    return json.dumps({"data": rows}).encode()


def test_invoices_become_plans_cancellations_and_credit_notes():
    """Captured invoices: a submitted one is a plan with its schedule, 00004 cancels, 00013 is a credit note."""
    fixture_path("si_get_credit_note.json")
    conn = _connector(_transport("pe_list_all_limit0.json", {
        "/api/resource/Sales Invoice": (200, _invoice_list_body())}), invoices=True)
    evs = {e.doc_id: e for e in conn.fetch(None, _NoLedger())}
    from sync.events import CreditNoteIssued, PlanCancelled, PlanIssued
    plan = evs["ACC-SINV-2026-00001"]
    assert isinstance(plan, PlanIssued)
    assert [r.term for r in plan.schedule] == ["Installment 1", "Installment 2", "Installment 3"]
    assert sum(r.amount for r in plan.schedule) == plan.total - plan.discount == Decimal("45000")
    assert plan.customer == "Ayesha Khan" and plan.currency == "PKR"
    explicit = evs["ACC-SINV-2026-00005"]
    assert [r.term for r in explicit.schedule] == [None, None, None]
    assert [r.amount for r in explicit.schedule] == [Decimal("15000")] * 3
    assert isinstance(evs["ACC-SINV-2026-00004"], PlanCancelled)
    note = evs["ACC-SINV-2026-00013"]
    assert isinstance(note, CreditNoteIssued)
    assert note.against_invoice == "ACC-SINV-2026-00006" and note.amount == Decimal("5000")
    positions = [e.position for e in evs.values()]
    assert positions == sorted(positions), "payments and invoices come as one ascending stream"
