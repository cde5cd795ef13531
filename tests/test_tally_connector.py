"""TallyPrime connector over real loopback HTTP against the Tally fake, and end to end into the LMS sandbox."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from connectors.tally import TallyConnector, TallySettings, _xml
from connectors.tally.connector import EPOCH, alter_position, alter_time
from sync.errors import DeferredError, SourceError, StopSource
from sync.events import Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged
from sync.sandbox.tally import TallyFake
from sync.state import conflicts

COMPANY = "Zensbot Academy"
BOOKS = {"company": COMPANY, "other_companies": ["Old Books 2024"],
         "voucher_types": {"Fee Receipt": "Receipt", "Online Fee": "Fee Receipt", "Fee Invoice": "Sales"}}


class Ctx:
    """The engine's SourceContext, in memory."""

    def __init__(self, seen=()):
        self._seen = set(seen)
        self.memo = {}

    def seen(self, doc_id, version):
        return (doc_id, version) in self._seen

    def recall(self, key):
        return self.memo.get(key)

    def remember(self, key, value):
        self.memo[key] = value


@pytest.fixture
def tally():
    fake = TallyFake(dict(BOOKS)).start()
    yield fake
    fake.stop()


def connector(fake, **overrides):
    conf = {"url": fake.url, "company": COMPANY, "page_size": 50, "timeout_seconds": 5, "max_attempts": 3,
            "max_retry_seconds": 5, **overrides}
    c = TallyConnector(TallySettings(**conf), sleep=lambda s: None)
    return c


def receipts(events):
    return [e for e in events if isinstance(e, PaymentReceived)]


# --- transport and encoding ------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
def test_requests_and_answers_round_trip_in_utf16_and_utf8(tally, encoding):
    """Non-ASCII names, `&`, control characters and UDF prefixes survive either encoding."""
    guid = tally.add_receipt("عائشہ خان & Sons", 18000, voucher_type="Fee Receipt", date="2026-11-03",
                             narration="Nov fee\x04", reference="CHQ-77", udf={"StudentEmail": "ayesha@example.pk"})
    c = connector(tally, encoding=encoding, customer_email_field="StudentEmail")
    (ev,) = list(c.fetch(None, Ctx()))
    assert (ev.doc_id, ev.customer, ev.customer_email) == (guid, "عائشہ خان & Sons", "ayesha@example.pk")
    assert (ev.amount, ev.currency, ev.posting_date) == (Decimal("18000.00"), "PKR", date(2026, 11, 3))
    assert (ev.method, ev.reference_number, ev.version) == ("Cash", "CHQ-77", "1")
    stats = tally.stats()
    assert stats[encoding] == stats["requests"] and stats.get("errors", 0) == 0


def test_answers_are_decoded_by_bom_declaration_or_header():
    """UTF-16 with or without BOM, and UTF-8 with a declaration, all decode to the same text."""
    text = "<ENVELOPE><A>Zoë</A></ENVELOPE>"
    assert _xml.decode_answer(b"\xff\xfe" + text.encode("utf-16-le")) == text
    assert _xml.decode_answer(text.encode("utf-16-le")) == text
    assert _xml.decode_answer(b"\xfe\xff" + text.encode("utf-16-be")) == text
    assert _xml.decode_answer(('<?xml version="1.0" encoding="UTF-8"?>' + text).encode()).endswith(text)
    assert _xml.decode_answer(text.encode("latin-1"), "text/xml; charset=latin-1") == text


# --- what counts as a receipt ------------------------------------------------------------------------
def test_custom_receipt_types_count_and_other_vouchers_do_not(tally):
    """Receipt, "Fee Receipt" and a type under it are read; Sales, Payment and Journal vouchers are not."""
    wanted = [tally.add_receipt("A", 100), tally.add_receipt("B", 200, voucher_type="Fee Receipt"),
              tally.add_receipt("C", 300, voucher_type="Online Fee")]
    for vtype in ("Sales", "Fee Invoice", "Payment", "Journal"):
        tally.add_voucher({"type": vtype, "party": "A", "entries": [{"ledger": "A", "amount": "-100"},
                                                                    {"ledger": "Fees", "amount": "100"}]})
    events = list(connector(tally).fetch(None, Ctx()))
    assert [e.doc_id for e in events] == wanted
    assert [e.amount for e in events] == [100, 200, 300]
    assert "$$IsReceipt:$VoucherTypeName" in _xml.voucher_request(COMPANY, 0, 10)


# --- amounts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style,deemed", [("raw", True), ("raw", False), ("report", True), ("report", False),
                                          ("drcr", True), ("drcr", False)])
def test_party_amount_follows_tally_sign_rules_in_every_format(tally, style, deemed):
    """The credited party line is the receipt amount however Tally printed it; the debited ledger is the method."""
    tally.books.emit_deemed_positive = deemed
    tally.amount_style = style
    tally.add_receipt("Bilal", "1234.50", ledger="HBL Bank", bills=[("INV-9", "1234.50")])
    tally.add_voucher({"type": "Receipt", "party": "Sana", "entries": [
        {"ledger": "Sana", "amount": "25000"}, {"ledger": "Cash", "amount": "-24000"},
        {"ledger": "Discount Allowed", "amount": "-1000"}]})
    a, b = list(connector(tally).fetch(None, Ctx()))
    assert (a.amount, a.method, a.references[0].amount, a.unallocated) == (Decimal("1234.50"), "HBL Bank",
                                                                           Decimal("1234.50"), 0)
    assert (b.amount, b.method) == (Decimal("25000.00"), "Cash")


@pytest.mark.parametrize("text,deemed,report,credit", [
    ("1234.50", None, False, "1234.50"), ("-1234.50", None, False, "-1234.50"),
    ("-1234.50", True, False, "-1234.50"), ("1234.50", False, False, "1234.50"),
    ("(1,234.50)", None, False, "1234.50"), ("1,234.50", True, True, "-1234.50"),
    ("1,234.50", None, True, "-1234.50"), ("-1,234.50", None, True, "1234.50"),
    ("(1,234.50)", False, True, "1234.50"), ("1,234.50 Dr", None, False, "-1234.50"),
    ("1,234.50 Cr", None, True, "1234.50"), ("1,234.50 Cr", True, False, "1234.50"), ("1,234.50Dr", None, False, "-1234.50"),
    ("₹ 12,34,567.00 Cr", None, False, "1234567.00"), ("Rs. -500", None, False, "-500"),
    ("$10.00 @ ₹ 80.00/$ = ₹ 800.00", False, False, "800.00"), ("", None, False, "0")])
def test_amount_strings_in_object_and_report_formats_parse_to_a_signed_credit(text, deemed, report, credit):
    """Raw sign, ISDEEMEDPOSITIVE, report convention and Dr/Cr suffixes each say which side a line is on."""
    assert _xml.credit_value(text, deemed, report=report) == Decimal(credit)


@pytest.mark.parametrize("text", ["Dr 18000", "Cr. 500", "-(18,000.00)", "(-18,000.00)", "--500"])
def test_an_amount_whose_side_is_said_twice_or_before_the_number_is_malformed_not_guessed(text):
    """'Dr 18000' was read as a credit of 18000 (the prefix taken for a currency); two negatives cancelled."""
    from sync.errors import ConflictError
    with pytest.raises(ConflictError) as err:
        _xml.credit_value(text, None)
    assert err.value.kind == "malformed_document" and repr(text)[:20] in err.value.detail


def test_a_receipt_that_debits_the_party_is_malformed(tally):
    """A party line on the debit side is not a receipt from the party; it becomes a conflict, not a payment."""
    tally.add_voucher({"type": "Receipt", "party": "Refunded", "entries": [
        {"ledger": "Refunded", "amount": "-500"}, {"ledger": "Cash", "amount": "500"}]})
    (ev,) = list(connector(tally).fetch(None, Ctx()))
    assert isinstance(ev, Malformed) and "not credited" in ev.problem


def test_bill_allocations_become_references(tally):
    """Named bills are references (`plan:<id>` names an LMS plan); On Account is the unallocated rest."""
    tally.add_receipt("Dua", 30000, bills=[{"name": "INV-1", "type": "Agst Ref", "amount": 18000},
                                           {"name": "plan:5003", "type": "New Ref", "amount": 10000},
                                           {"name": "", "type": "On Account", "amount": 2000}])
    (ev,) = list(connector(tally).fetch(None, Ctx()))
    assert [(r.invoice_id, r.lms_plan_id, r.amount) for r in ev.references] == [
        ("INV-1", None, Decimal("18000.00")), (None, "5003", Decimal("10000.00"))]
    assert ev.unallocated == Decimal("2000.00")


# --- cancellation, optional vouchers, identity ---------------------------------------------------------
def test_cancelled_voucher_is_a_payment_cancelled_with_a_new_version(tally):
    """ISCANCELLED=Yes yields PaymentCancelled for the same GUID at the new AlterID."""
    guid = tally.add_receipt("Eman", 5000)
    new_alter = tally.cancel(guid)
    (ev,) = list(connector(tally).fetch(None, Ctx()))
    assert isinstance(ev, PaymentCancelled)
    assert (ev.doc_id, ev.version, ev.position) == (guid, str(new_alter), alter_position(new_alter, guid))


def test_optional_voucher_is_skipped_unless_it_was_handed_over_before(tally):
    """A memorandum receipt is not read; one handed over as a receipt and then made optional is a cancellation."""
    tally.add_receipt("Faiz", 700, optional=True)
    kept = tally.add_receipt("Gul", 800)
    ctx = Ctx()
    c = connector(tally)
    assert [e.doc_id for e in c.fetch(None, ctx)] == [kept]
    tally.alter(kept, optional=True)
    (ev,) = list(c.fetch(None, ctx))
    assert isinstance(ev, PaymentCancelled) and ev.doc_id == kept


def test_guid_stays_the_document_id_when_vouchers_are_renumbered(tally):
    """Renumbering moves voucher numbers and AlterIDs but not GUIDs nor the content the engine fingerprints."""
    g1 = tally.add_receipt("Hina", 100, date="2026-11-05")
    g2 = tally.add_receipt("Iqra", 200, date="2026-11-06")
    c = connector(tally)
    before = {e.doc_id: e.fingerprint() for e in c.fetch(None, Ctx())}
    tally.add_receipt("Javed", 300, date="2026-11-01")   # back-dated: automatic numbering shifts the others
    assert set(tally.renumber()) >= {g1, g2}
    after = {e.doc_id: e for e in c.fetch(None, Ctx())}
    assert {g: after[g].fingerprint() for g in (g1, g2)} == before
    assert [v["number"] for v in tally.vouchers() if v["guid"] in (g1, g2)] == ["2", "3"]


def test_a_version_the_ledger_already_decided_is_unchanged(tally):
    """The ledger's (GUID, AlterID) pair short-cuts a voucher to Unchanged."""
    guid = tally.add_receipt("Kamran", 900)
    (ev,) = list(connector(tally).fetch(None, Ctx(seen={(guid, "1")})))
    assert isinstance(ev, Unchanged) and ev.doc_id == guid


# --- company state ------------------------------------------------------------------------------------------
def test_no_company_open_is_an_error_not_an_empty_answer(tally):
    """Tally's empty body with no company open stops the source; an open company with no receipts is just empty."""
    c = connector(tally)
    assert list(c.fetch(None, Ctx())) == []
    tally.company_open = False
    with pytest.raises(StopSource, match="no company is open"):
        list(c.fetch(None, Ctx()))
    with pytest.raises(StopSource):
        c.server_now()
    assert tally.stats()["empty"] >= 2


def test_our_company_not_loaded_stops_the_source(tally):
    """Another company being open is not ours: the source stops with both names in the message."""
    c = connector(tally, company="Some Other School")
    with pytest.raises(StopSource, match="'Some Other School' is not open.*Zensbot Academy"):
        list(c.fetch(None, Ctx()))


def test_tally_error_answers_are_source_errors():
    """LINEERROR, STATUS 0 and <RESPONSE> refusals are errors, never an empty collection."""
    for body in ("<ENVELOPE><HEADER><STATUS>0</STATUS></HEADER><BODY><DATA><LINEERROR>Could not find Collection"
                 "</LINEERROR></DATA></BODY></ENVELOPE>", "<RESPONSE>Unknown Request, cannot be processed</RESPONSE>"):
        with pytest.raises(SourceError):
            _xml.parse_answer(body)


# --- cursor -------------------------------------------------------------------------------------------------
def test_position_is_alterid_as_whole_seconds_after_the_epoch():
    """The synthetic change time is monotonic in AlterID and the doc id sorts the same way."""
    assert alter_time(0) == EPOCH and alter_time(600) == datetime(1970, 1, 1, 0, 10, tzinfo=UTC)
    assert alter_position(9, "g") < alter_position(10, "a") < alter_position(10, "b")
    assert alter_position(10, "x").doc_id == "000000000010:x"


def test_alterid_resume_has_no_gap_and_no_duplicate(tally):
    """Stopped midway through windowed pages, a fetch from the last position reads each change once."""
    guids = []
    for i in range(12):
        guids.append(tally.add_receipt(f"S{i}", 100 + i, voucher_type="Fee Receipt"))
        tally.add_voucher({"type": "Sales", "party": f"S{i}", "entries": [{"ledger": f"S{i}", "amount": "-1"},
                                                                          {"ledger": "Fees", "amount": "1"}]})
    c = connector(tally, page_size=5)
    first = []
    for ev in c.fetch(None, Ctx()):
        first.append(ev)
        if len(first) == 5:
            break
    altered = tally.alter(guids[1], amount=555)       # already read: comes back at its new AlterID
    tally.alter(guids[9], narration="late edit")      # not read yet: read once, at its new AlterID
    extra = tally.add_receipt("New", 999)
    rest = list(c.fetch(first[-1].position, Ctx()))
    assert [e.doc_id for e in rest] == [g for g in guids[5:] if g != guids[9]] + [guids[1], guids[9], extra]
    assert [e.position for e in rest] == sorted(e.position for e in rest)
    assert rest[-3].version == str(altered) and rest[-3].amount == Decimal("555.00")
    assert all(e.position > first[-1].position for e in rest)
    assert list(c.fetch(rest[-1].position, Ctx())) == []


def test_a_cursor_ahead_of_the_books_rereads_everything(tally):
    """After a restore from backup the company's AlterIDs are below the cursor; nothing new is skipped."""
    guids = [tally.add_receipt(f"X{i}", 10) for i in range(3)]
    got = [e.doc_id for e in connector(tally).fetch(alter_position(1000, "old-guid"), Ctx())]
    assert got == guids


def test_until_bounds_the_alterid_window(tally):
    """`until` (a synthetic time) stops before that AlterID."""
    guids = [tally.add_receipt(f"T{i}", 10) for i in range(6)]
    got = [e.doc_id for e in connector(tally, page_size=2).fetch(None, Ctx(), until=alter_time(4))]
    assert got == guids[:3]


def test_calendar_bounds_filter_by_voucher_date(tally):
    """A since/until from 2000 on (backfill, reconcile) is a calendar window on DATE, with a day of slack."""
    g = {d: tally.add_receipt(f"W{d}", 10, date=f"2026-11-{d:02d}") for d in (1, 5, 10, 15, 20)}
    c = connector(tally, page_size=2)
    since, until = datetime(2026, 11, 6, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)
    assert [e.doc_id for e in c.fetch(Position(since), Ctx(), until=until)] == [g[5], g[10], g[15]]
    assert set(c.snapshot(datetime(2026, 11, 12, tzinfo=UTC))) == {g[15], g[20]}


def test_snapshot_sees_a_deletion_and_every_live_pair(tally):
    """Deleted vouchers leave nothing; the GUID+AlterID snapshot shows what is left, cancelled included."""
    g = [tally.add_receipt(f"U{i}", 10) for i in range(5)]
    c = connector(tally, page_size=2)
    before = c.snapshot(EPOCH)
    tally.delete(g[2])
    tally.cancel(g[3])
    tally.add_receipt("Memo", 5, optional=True)
    after = c.snapshot(c.reconcile_since())
    assert set(before) - set(after) == {g[2]}
    assert after[g[3]] == str(tally.vouchers()[-2]["alter_id"]) and after[g[0]] == "1"
    assert set(after) == {g[0], g[1], g[3], g[4]}
    assert connector(tally, reconcile_window=3).reconcile_since() == alter_time(tally.last_alter_id - 3)


# --- failures ---------------------------------------------------------------------------------------------------
def test_server_errors_and_dropped_connections_are_retried(tally):
    """A 500 and a dropped answer are retried (clock injected); past the budget the run is deferred."""
    guid = tally.add_receipt("V", 10)
    c = connector(tally)
    tally.faults.fail(500, count=1)
    tally.faults.drop(count=1)
    assert [e.doc_id for e in c.fetch(None, Ctx())] == [guid]
    assert tally.stats()["failed"] == 1 and tally.stats()["dropped"] == 1
    tally.faults.fail(503, count=5)
    with pytest.raises(DeferredError):
        list(c.fetch(None, Ctx()))


def test_a_slow_answer_times_out_and_is_retried(tally):
    """An answer slower than `timeout_seconds` is a transient failure; the retry gets the data."""
    guid = tally.add_receipt("Slow", 10)
    c = connector(tally, timeout_seconds=0.2)
    tally.faults.slow(0.6, count=1)
    assert [e.doc_id for e in c.fetch(None, Ctx())] == [guid]
    assert c.http.requests == 3   # company list (timed out), company list again, one AlterID window


def test_the_fake_refuses_a_filter_it_cannot_evaluate(tally):
    """A misspelt TDL function is a LINEERROR (SourceError), never a filter that matches everything."""
    from connectors.tally._http import TallyHTTP
    http = TallyHTTP(url=tally.url, encoding="utf-16", timeout=5, max_attempts=1, max_seconds=1)
    bad = _xml.voucher_request(COMPANY, 0, 10).replace("$$IsReceipt", "$$IsReciept")
    with pytest.raises(SourceError, match="IsReciept"):
        http.post(bad, "receipts")
    http.close()


def test_probe_reports_a_closed_company(tally):
    """`feesync check` gets a readable problem when no company is open."""
    c = connector(tally)
    assert c.probe() == []
    tally.company_open = False
    (problem,) = c.probe()
    assert "StopSource" in problem and "no company is open" in problem


# --- end to end: engine + LMS sandbox -------------------------------------------------------------------------------
LMS_KEY = "zl_test_tally_3c4d5e6f"


def _lms_seed(n):
    students, plans = [], []
    for i in range(n):
        students.append({"id": 300 + i, "name": f"Student {i}", "email": f"tally{i}@example.pk", "status": "active"})
        plans.append({"id": 7000 + i, "student_id": 300 + i, "batch_id": 1, "plan_type": "installment",
                      "total_amount": 100000, "currency": "PKR", "status": "active",
                      "installments": [{"sequence": 1, "amount_due": 50000, "due_date": "2026-11-01"},
                                       {"sequence": 2, "amount_due": 50000, "due_date": "2026-12-01"}]})
    return {"rate_limit_per_minute": 100000, "institutes": [{
        "id": "inst-tally", "name": "Tally Institute",
        "api_keys": [{"key": LMS_KEY, "name": "feesync-test", "scopes": ["fees:read", "fees:write", "students:read"]}],
        "batches": [{"id": 1, "name": "Python Bootcamp"}], "students": students, "fee_plans": plans, "payments": []}]}


def test_tally_receipts_reach_the_lms_exactly_once_and_a_cancellation_opens_reversed_in_erp(tmp_path, tally):
    """Count and sum of LMS payments equal Tally's receipts; a second run writes nothing; a cancel is a conflict."""
    from sync.app import build_app
    from sync.config import Settings
    from sync.sandbox.lms import LmsSandbox

    pushed = {}
    for i in range(8):
        ledger = "HBL Bank" if i % 3 == 0 else "Cash"
        g = tally.add_receipt(f"Student {i}", 1000 * (i + 1), voucher_type="Fee Receipt" if i % 2 else "Receipt",
                              ledger=ledger, udf={"StudentEmail": f"tally{i}@example.pk"})
        pushed[g] = 1000 * (i + 1)
    tally.cancel(tally.add_receipt("Student 1", 450, udf={"StudentEmail": "tally1@example.pk"}))
    tally.add_receipt("Student 2", 460, optional=True, udf={"StudentEmail": "tally2@example.pk"})
    tally.add_voucher({"type": "Sales", "party": "Student 3", "entries": [{"ledger": "Student 3", "amount": "-9"},
                                                                          {"ledger": "Fees", "amount": "9"}]})
    with LmsSandbox(_lms_seed(8)) as lms:
        settings = Settings(
            state_path=str(tmp_path / "state.db"), log_format="json",
            lms={"base_url": lms.base_url, "api_key": LMS_KEY, "rate_limit_per_minute": 100000, "max_attempts": 3,
                 "max_retry_seconds": 5, "limiter_path": str(tmp_path / "pacing.db")},
            sources={"tally": {"connector": "tally", "interval": "1m", "lookback": "10m", "lag": "0s",
                               "mapping": {"payment_methods": {"HBL Bank": "bank_transfer"}},
                               "settings": {"url": tally.url, "company": COMPANY, "encoding": "utf-16",
                                            "page_size": 4, "customer_email_field": "StudentEmail",
                                            "max_attempts": 2, "max_retry_seconds": 2}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            first = app.engine.run_once("tally")
            pays = lms.payments()
            assert first.counts["pushed"] == len(pushed) == len(pays)
            assert sum(p["amount"] for p in pays) == sum(pushed.values())
            assert sorted(p["notes"] for p in pays) == sorted(f"erp:tally:{g}" for g in pushed)
            assert {p["payment_method"] for p in pays} == {"cash", "bank_transfer"}
            assert first.skipped["cancelled"] == 1 and not first.conflicts

            second = app.engine.run_once("tally")
            assert second.counts.get("pushed", 0) == 0 and len(lms.payments()) == len(pushed)

            victim = next(iter(pushed))
            tally.cancel(victim)
            third = app.engine.run_once("tally")
            assert third.conflicts == {"reversed_in_erp": 1}
            with app.store.engine.connect() as c:
                open_rows = c.execute(select(conflicts.c.doc_id, conflicts.c.kind)
                                      .where(conflicts.c.status == "open")).all()
            assert [tuple(r) for r in open_rows] == [(victim, "reversed_in_erp")]
            assert len(lms.payments()) == len(pushed)

            cursor = app.store.get_cursor("tally")
            tally.company_open = False
            closed = app.engine.run_once("tally")
            assert closed.status == "stopped" and "no company is open" in closed.error
            assert app.store.get_cursor("tally") == cursor
        finally:
            app.close()
