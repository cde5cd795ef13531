"""The Odoo connector over real loopback HTTP against the Odoo fake, and end to end through the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from connectors.odoo import OdooConnector, OdooSettings
from sync.errors import DeferredError, SourceError, StopSource
from sync.events import Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged
from sync.sandbox.odoo import OdooFake
from sync.state import conflicts
from tests import scenario

DB, LOGIN, KEY = "feesync", "sync-bot", "odoo_key_5b1e9c"
T0 = datetime(2026, 11, 2, 4, 0, 0, tzinfo=UTC)


class Ledger:
    """A SourceContext: what the engine would have decided, plus the memo."""

    def __init__(self, seen: dict[str, str] | None = None) -> None:
        self.decided = dict(seen or {})
        self.memo: dict[str, str] = {}

    def seen(self, doc_id, version):
        return self.decided.get(doc_id) == version

    def recall(self, key):
        return self.memo.get(key)

    def remember(self, key, value):
        self.memo[key] = value


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def _data(**extra) -> dict:
    return {"database": DB, "users": [{"login": LOGIN, "api_key": KEY, "uid": 6}],
            "partners": [{"id": 7, "name": "Ayesha Khan", "email": "ayesha.khan@example.pk"},
                         {"id": 8, "name": "Bilal Ahmed", "email": False}],
            "invoices": [{"id": 31, "name": "INV/2026/00031", "partner_id": 7, "amount_total": 45000},
                         {"id": 32, "name": "INV/2026/00032", "partner_id": 7, "amount_total": 45000}],
            **extra}


def _tied(n: int = 25, stamp: str = "2026-11-02 04:00:05") -> list[dict]:
    """n payments whose write_date reads the same second; hidden fractions put them in reverse id order."""
    return [{"id": i, "partner_id": 7, "amount": 1000.0, "write_date": f"{stamp}.{999 - i:06d}"}
            for i in range(1, n + 1)]


def _connector(fake: OdooFake, **settings) -> OdooConnector:
    conf = {"url": fake.url, "database": DB, "login": LOGIN, "api_key": KEY, "version": fake.version,
            "page_size": 10, "max_attempts": 3, "max_retry_seconds": 5, **settings}
    return OdooConnector(OdooSettings(**conf), sleep=lambda s: None)


@pytest.fixture
def odoo():
    started = []

    def start(data, **kw):
        fake = OdooFake(data, clock=kw.pop("clock", lambda: T0 + timedelta(hours=1)), **kw).start()
        started.append(fake)
        return fake
    yield start
    for f in started:
        f.stop()


@pytest.mark.parametrize("micro_output", [False, True])
def test_ties_across_page_boundaries_are_each_yielded_once_ascending(odoo, micro_output):
    """25 payments sharing one write_date (read with or without microseconds), page 10: all once, ascending."""
    fake = odoo(_data(payments=_tied()), micro_output=micro_output)
    events = list(_connector(fake).fetch(None, Ledger()))
    assert [e.doc_id for e in events] == [str(i) for i in range(1, 26)]
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert {e.position.changed_at for e in events} == {datetime(2026, 11, 2, 4, 0, 5, tzinfo=UTC)}
    assert fake.stats()["by_label"]["account.payment.search_read"] == 5   # 1 page + 3 by id + 1 empty


def test_resuming_from_any_cursor_position_leaves_no_gap(odoo):
    """From every yielded position, a new fetch returns exactly the payments after it."""
    payments = _tied(12) + [{"id": 40 + i, "partner_id": 7, "amount": 500.0,
                             "write_date": f"2026-11-02 04:00:{6 + i // 3:02d}.{i * 1000:06d}"} for i in range(9)]
    fake = odoo(_data(payments=payments))
    conn = _connector(fake, page_size=4)
    full = [e.doc_id for e in conn.fetch(None, Ledger())]
    assert sorted(full, key=int) == sorted((str(p["id"]) for p in payments), key=int) and len(set(full)) == 21
    positions = [e.position for e in conn.fetch(None, Ledger())]
    for i, pos in enumerate(positions):
        assert [e.doc_id for e in conn.fetch(pos, Ledger())] == full[i + 1:]
    # the engine's own resume (cursor minus lookback, no id) re-reads inclusively from that second
    again = [e.doc_id for e in conn.fetch(Position(positions[13].changed_at, ""), Ledger())]
    assert again == full[12:]


@pytest.mark.parametrize(("version", "received", "cancelled"), [
    (16, ["posted"], ["cancel"]),
    (17, ["posted"], ["cancel"]),
    (18, ["in_process", "paid"], ["canceled", "rejected"]),
])
def test_states_map_by_version(odoo, version, received, cancelled):
    """16/17 posted and 18 in_process/paid are receipts; cancel/canceled/rejected cancellations; drafts never."""
    states = received + cancelled + ["draft"]
    payments = [{"id": i + 1, "partner_id": 7, "amount": 100.0 * (i + 1), "state": s,
                 "write_date": f"2026-11-02 04:00:0{i}"} for i, s in enumerate(states)]
    fake = odoo(_data(payments=payments), version=version)
    events = list(_connector(fake).fetch(None, Ledger()))
    kinds = {e.doc_id: type(e) for e in events}
    assert kinds == {str(i + 1): (PaymentReceived if s in received else PaymentCancelled)
                     for i, s in enumerate(states) if s != "draft"}
    assert all(e.version.split("|")[1] == states[int(e.doc_id) - 1] for e in events)


def test_cancelling_a_payment_yields_payment_cancelled_with_a_new_version(odoo):
    """A payment cancelled after it was read comes back as PaymentCancelled at a later position."""
    fake = odoo(_data(payments=[{"id": 1, "partner_id": 7, "amount": 18000.0,
                                 "write_date": "2026-11-02 04:00:01"}]), version=17)
    conn = _connector(fake)
    first = list(conn.fetch(None, Ledger()))
    fake.cancel(1, at="2026-11-02 04:30:00")
    second = list(conn.fetch(first[0].position, Ledger({"1": first[0].version})))
    assert [type(e) for e in second] == [PaymentCancelled]
    assert second[0].version.startswith("2026-11-02 04:30:00|cancel|") and second[0].position > first[0].position


def test_receipt_carries_decimal_amounts_references_email_and_aware_utc_positions(odoo):
    """Amount and per-invoice applied amounts are Decimal; e-mail, currency and journal come through."""
    fake = odoo(_data(payments=[
        {"id": 1, "partner_id": 7, "amount": 18000.5, "currency": "PKR", "date": "2026-11-02", "journal": "Bank",
         "payment_reference": "CHQ-889", "invoices": {"31": 12000.25, "32": 6000.25},
         "write_date": "2026-11-02 04:00:01.250000"}]), version=18)
    (event,) = _connector(fake).fetch(None, Ledger())
    assert isinstance(event, PaymentReceived)
    assert event.amount == Decimal("18000.5") and isinstance(event.amount, Decimal)
    assert [(r.invoice_id, r.amount) for r in event.references] == [("INV/2026/00031", Decimal("12000.25")),
                                                                    ("INV/2026/00032", Decimal("6000.25"))]
    assert event.unallocated == Decimal(0)
    assert (event.customer, event.customer_email, event.currency, event.method, event.reference_number) == \
        ("Ayesha Khan", "ayesha.khan@example.pk", "PKR", "Bank", "CHQ-889")
    assert event.position.changed_at == datetime(2026, 11, 2, 4, 0, 1, tzinfo=UTC)
    assert event.position.changed_at.utcoffset() == timedelta(0)


def test_empty_values_arrive_as_false_and_are_handled(odoo):
    """A partner without e-mail (`false`) gives no e-mail; a payment without partner is Malformed."""
    fake = odoo(_data(payments=[{"id": 1, "partner_id": 8, "amount": 10.0, "write_date": "2026-11-02 04:00:01"},
                                {"id": 2, "partner_id": None, "amount": 10.0, "write_date": "2026-11-02 04:00:02"}]))
    first, second = _connector(fake).fetch(None, Ledger())
    assert isinstance(first, PaymentReceived) and first.customer_email is None and first.references == ()
    assert isinstance(second, Malformed) and "partner_id" in second.problem


def test_a_row_already_decided_at_its_version_costs_no_further_reads(odoo):
    """Seen at its version (`write_date|state|digest`) → Unchanged; no further res.partner or account.move read."""
    fake = odoo(_data(payments=[{"id": 1, "partner_id": 7, "amount": 1.0, "invoices": [31],
                                 "write_date": "2026-11-02 04:00:01"}]))
    conn = _connector(fake)
    (first,) = conn.fetch(None, Ledger())
    reads = dict(fake.stats()["by_label"])
    (event,) = conn.fetch(None, Ledger({"1": first.version}))
    assert isinstance(event, Unchanged) and first.version.startswith("2026-11-02 04:00:01|posted|")
    labels = fake.stats()["by_label"]
    assert all(labels.get(k) == reads.get(k) for k in ("res.partner.read", "account.move.read")), (reads, labels)


def test_errors_answered_with_http_200_become_our_error_classes(odoo):
    """AccessError → StopSource, ValueError → SourceError, serialization failures and 5xx retried, then deferred."""
    fake = odoo(_data(payments=_tied(3)))
    conn = _connector(fake)
    fake.faults.error("odoo.exceptions.AccessError", "You are not allowed to access 'Payments'",
                      match="account.payment.search_read")
    with pytest.raises(StopSource):
        list(conn.fetch(None, Ledger()))
    fake.faults.error("builtins.ValueError", "Invalid field 'foo' on model 'account.payment'",
                      match="account.payment.search_read")
    with pytest.raises(SourceError):
        list(conn.fetch(None, Ledger()))
    fake.faults.error("psycopg2.errors.SerializationFailure", "could not serialize access", match="search_read")
    fake.faults.fail(502, match="search_read")
    assert len(list(conn.fetch(None, Ledger()))) == 3
    fake.faults.fail(503, count=3, match="search_read")
    with pytest.raises(DeferredError):
        list(conn.fetch(None, Ledger()))


def test_bad_or_revoked_key_stops_the_source(odoo):
    """authenticate() answering false, or AccessDenied after a revocation, stops the source."""
    fake = odoo(_data(payments=_tied(2)))
    with pytest.raises(StopSource, match="authenticate returned false"):
        list(_connector(fake, api_key="wrong").fetch(None, Ledger()))
    conn = _connector(fake)
    assert len(list(conn.fetch(None, Ledger()))) == 2
    fake.revoke(LOGIN)
    with pytest.raises(StopSource, match="AccessDenied"):
        list(conn.fetch(None, Ledger()))


def test_wrong_database_or_version_stops_the_source(odoo):
    """An unknown database, or a server of another major version than configured, stops the source."""
    fake = odoo(_data(payments=_tied(1)), version=18)
    with pytest.raises(StopSource, match="database"):
        list(_connector(fake, database="nope").fetch(None, Ledger()))
    with pytest.raises(StopSource, match="version 18"):
        list(_connector(fake, version=17).fetch(None, Ledger()))


def test_json2_protocol_on_odoo_19_uses_bearer_key_and_http_statuses(odoo):
    """Odoo 19 JSON-2: reads work with the bearer key; a bad key (401) stops the source."""
    fake = odoo(_data(payments=_tied(12)), version=19)
    events = list(_connector(fake, protocol="json2", login=None).fetch(None, Ledger()))
    assert [e.doc_id for e in events] == [str(i) for i in range(1, 13)]
    with pytest.raises(StopSource):
        list(_connector(fake, protocol="json2", api_key="bad").fetch(None, Ledger()))
    with pytest.raises(ValueError, match="json2 needs Odoo 19"):
        OdooSettings(url=fake.url, database=DB, api_key=KEY, version=18, protocol="json2")


def test_snapshot_sees_an_unlinked_payment(odoo):
    """snapshot() lists id → version in the window; an unlinked payment is simply absent."""
    fake = odoo(_data(payments=_tied(3) + [{"id": 9, "partner_id": 7, "amount": 5.0, "state": "cancel",
                                           "write_date": "2026-11-02 05:00:00"}]))
    conn = _connector(fake)
    before = conn.snapshot(T0, T0 + timedelta(hours=2))
    fake.unlink(2)
    after = conn.snapshot(T0, T0 + timedelta(hours=2))
    assert set(before) == {"1", "2", "3", "9"} and set(after) == {"1", "3", "9"}
    assert after["9"].startswith("2026-11-02 05:00:00|cancel|") and after["9"] == before["9"]
    assert conn.snapshot(T0 + timedelta(minutes=30), T0 + timedelta(hours=2)) == {"9": after["9"]}


# --- end to end -----------------------------------------------------------------------------------
def test_engine_pushes_every_odoo_receipt_once_and_a_later_cancellation_opens_reversed_in_erp(tmp_path):
    """Count and sum of LMS payments equal the fake's receipts; a second run writes nothing; a cancel → conflict."""
    from sync.app import build_app
    from sync.config import Settings
    from sync.sandbox.lms import LmsSandbox

    scn = scenario.build(n_students=4, receipts_per_student=3, amount=1000)
    partners = [{"id": 100 + i, "name": f"Student {i}", "email": f"student{i}@example.pk"} for i in range(4)]
    invoices = [{"id": 300 + i, "name": f"INV/2026/{i + 1:05d}", "partner_id": 100 + i, "amount_total": 3000,
                 "x_zensbot_fee_plan_id": str(5000 + i)} for i in range(4)]
    payments, n = [], 0
    for i in range(4):
        for k in range(3):
            n += 1
            payments.append({"id": n, "partner_id": 100 + i, "amount": 1000.0, "journal": "Cash",
                             "invoices": [300 + i] if k else None, "date": "2026-11-02",
                             "write_date": f"2026-11-02 04:00:{n // 5:02d}.{n:06d}"})
    payments += [{"id": 50, "partner_id": 100, "amount": 700.0, "state": "draft", "write_date": "2026-11-02 04:00:01"},
                 {"id": 51, "partner_id": 100, "amount": 900.0, "payment_type": "outbound",
                  "write_date": "2026-11-02 04:00:01"}]
    clock = Clock(T0 + timedelta(minutes=5))
    with LmsSandbox(scn["lms_seed"]) as lms, \
            OdooFake(_data(payments=payments, partners=partners, invoices=invoices), version=17, clock=clock) as odoo:
        settings = Settings(
            state_path=str(tmp_path / "state.db"), log_format="json",
            lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": 100000,
                 "max_attempts": 3, "max_retry_seconds": 5, "limiter_path": str(tmp_path / "pacing.db")},
            sources={"odoo": {"connector": "odoo", "interval": "1m", "lag": "0s", "settings": {
                "url": odoo.url, "database": DB, "login": LOGIN, "api_key": KEY, "version": 17, "page_size": 5,
                "plan_id_field": "x_zensbot_fee_plan_id"}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            first = app.engine.run_once("odoo")
            pays = lms.payments()
            assert first.counts["pushed"] == 12 and len(pays) == 12
            assert sum(p["amount"] for p in pays) == 12000
            assert {p["notes"] for p in pays} == {f"erp:odoo:{i}" for i in range(1, 13)}

            second = app.engine.run_once("odoo")
            assert second.counts.get("pushed", 0) == 0 and len(lms.payments()) == 12

            clock.now += timedelta(minutes=5)
            odoo.cancel(5)
            third = app.engine.run_once("odoo")
            assert third.conflicts["reversed_in_erp"] == 1 and len(lms.payments()) == 12
            with app.store.engine.connect() as c:
                rows = c.execute(select(conflicts.c.doc_id, conflicts.c.kind)
                                 .where(conflicts.c.status == "open")).all()
            assert [(r.doc_id, r.kind) for r in rows] == [("5", "reversed_in_erp")]
        finally:
            app.close()


def test_an_edit_in_the_same_whole_second_as_the_synced_version_is_seen(tmp_path):
    """`write_date` has whole seconds: the version `write_date|state` called such an edit unchanged, and
    the LMS kept the old amount with no conflict."""
    from sync.testing import harnesses as H
    from sync.testing.conformance import Kit
    kit = Kit(H.OdooHarness(), tmp_path)
    try:
        pid = int(kit.h.add_receipts(1)[0])
        assert kit.run().counts["pushed"] == 1
        written = kit.h.fake._store.payments[pid]["write_date"]
        kit.h.fake.write(pid, amount=99999.0, at=written.replace(microsecond=999999))
        second = kit.run()
        assert kit.open_conflicts() == [(str(pid), "changed_after_sync")], (second.counts, kit.open_conflicts())
        assert [p["amount"] for p in kit.payments()] == [1010]
    finally:
        kit.close()
