"""The Zoho Books connector over real loopback HTTP against the Zoho fake, and end to end through the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from connectors.zoho import ZohoConnector, ZohoSettings
from connectors.zoho.connector import parse_zoho_time
from sync.errors import DeferredError, StopSource
from sync.events import PaymentCancelled, PaymentReceived, Position, Unchanged
from sync.sandbox.zoho import ZohoFake
from sync.state import conflicts
from tests import scenario

ORG, CLIENT, SECRET, REFRESH = "10234695", "1000.CLIENTID", "zoho_secret_77aa", "1000.refresh_9c2d"
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

    def decide(self, events) -> None:
        for e in events:
            self.decided[e.doc_id] = e.version

    def run(self, events) -> list:
        """Consume a fetch as the engine does: each event is decided before the next is read."""
        out = []
        for e in events:
            self.decided[e.doc_id] = e.version
            out.append(e)
        return out


class Clock:
    """One clock for the fake and the connector; the connector's sleeps advance it."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def _data(per_minute: int = 100, daily: int = 1000) -> dict:
    return {"organizations": [{"organization_id": ORG, "name": "Zensbot Academy", "utc_offset": "+0500",
                               "per_minute_limit": per_minute, "daily_limit": daily}],
            "clients": [{"client_id": CLIENT, "client_secret": SECRET, "refresh_tokens": [REFRESH]}]}


@pytest.fixture
def zoho():
    started = []

    def start(data=None, *, n=0, clock=None, **kw):
        clock = clock or Clock(T0)
        fake = ZohoFake(data or _data(), clock=clock, **kw).start()
        for i in range(n):
            clock.now += timedelta(seconds=7)
            fake.add_payment(f"Student {i % 4}", 1000 + i, email=f"student{i % 4}@example.pk",
                             invoices=[{"invoice_number": f"INV-{i:05d}", "amount_applied": 1000 + i}])
        started.append(fake)
        return fake, clock
    yield start
    for f in started:
        f.stop()


def _connector(fake: ZohoFake, clock: Clock, **settings) -> ZohoConnector:
    conf = {"api_base": fake.api_base, "accounts_base": fake.accounts_base, "organization_id": ORG,
            "client_id": CLIENT, "client_secret": SECRET, "refresh_token": REFRESH, "page_size": 10,
            "max_attempts": 3, **settings}
    return ZohoConnector(ZohoSettings(**conf), clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize("list_key", ["customerpayments", "customer_payments"])
def test_every_payment_is_yielded_once_in_ascending_position_under_either_list_key(zoho, list_key):
    """25 payments, page 10, either list key: each once, positions ascending, amounts Decimal."""
    fake, clock = zoho(n=25, list_key=list_key)
    events = list(_connector(fake, clock).fetch(None, Ledger()))
    assert len(events) == 25 and len({e.doc_id for e in events}) == 25
    assert all(isinstance(e, PaymentReceived) for e in events)
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert sum(e.amount for e in events) == Decimal(sum(1000 + i for i in range(25)))
    assert all(isinstance(e.amount, Decimal) and isinstance(e.references[0].amount, Decimal) for e in events)
    assert fake.stats()["by_label"]["GET /customerpayments"] == 3


def test_times_with_an_offset_without_colon_become_aware_utc_positions(zoho):
    """`2026-11-02T09:00:07+0500` is 04:00:07 UTC; the position is aware UTC."""
    fake, clock = zoho(n=1)
    (event,) = _connector(fake, clock).fetch(None, Ledger())
    assert event.version == "2026-11-02T09:00:07+0500"
    assert event.position.changed_at == datetime(2026, 11, 2, 4, 0, 7, tzinfo=UTC)
    assert event.position.changed_at.utcoffset() == timedelta(0)
    assert parse_zoho_time("2016-06-05T02:15:20-0700") == datetime(2016, 6, 5, 9, 15, 20, tzinfo=UTC)
    assert (event.customer, event.customer_email, event.currency, event.method) == \
        ("Student 0", "student0@example.pk", "PKR", "Cash")


def test_resuming_from_any_cursor_position_leaves_no_gap(zoho):
    """From every position, a fetch yields every payment after it (the window re-reads some before it)."""
    fake, clock = zoho(n=12)
    conn = _connector(fake, clock, page_size=5, rescan_window="30s")
    ledger = Ledger()
    full = ledger.run(conn.fetch(None, ledger))
    for i, e in enumerate(full):
        got = [x.doc_id for x in conn.fetch(e.position, ledger)]
        assert set(x.doc_id for x in full[i + 1:]) <= set(got)
        assert got == sorted(got)   # ascending positions (ids rise with time here)


def test_unchanged_payments_cost_no_detail_call_and_an_edit_in_the_window_is_seen(zoho):
    """Already-decided rows are Unchanged without a detail GET; an edited one comes back with its new version."""
    fake, clock = zoho(n=6)
    conn = _connector(fake, clock)
    ledger = Ledger()
    first = list(conn.fetch(None, ledger))
    ledger.decide(first)
    clock.now += timedelta(minutes=3)
    fake.edit_payment(first[2].doc_id, amount=5000)
    details_before = fake.stats()["by_label"]["GET /customerpayments/{id}"]
    again = list(conn.fetch(Position(first[-1].position.changed_at - timedelta(minutes=10)), ledger))
    assert [type(e) for e in again] == [Unchanged] * 5 + [PaymentReceived]
    assert again[-1].doc_id == first[2].doc_id and again[-1].amount == Decimal(5000)
    assert again[-1].version == "2026-11-02T09:03:42+0500"
    assert fake.stats()["by_label"]["GET /customerpayments/{id}"] == details_before + 1


def test_a_deleted_payment_is_cancelled_in_the_next_window_and_missing_from_the_snapshot(zoho):
    """A payment gone from the window is confirmed by a 404 and yielded once as PaymentCancelled."""
    fake, clock = zoho(n=4)
    conn = _connector(fake, clock)
    ledger = Ledger()
    first = list(conn.fetch(None, ledger))
    ledger.decide(first)
    victim = first[1].doc_id
    assert victim in conn.snapshot(T0)
    fake.delete_payment(victim)
    assert victim not in conn.snapshot(T0) and len(conn.snapshot(T0)) == 3
    since = Position(first[-1].position.changed_at - timedelta(minutes=10))
    second = ledger.run(conn.fetch(since, ledger))
    gone = [e for e in second if isinstance(e, PaymentCancelled)]
    assert [(e.doc_id, e.version) for e in gone] == [(victim, f"deleted|{first[1].version}")]
    third = ledger.run(conn.fetch(since, ledger))
    assert victim not in {e.doc_id for e in third} and all(isinstance(e, Unchanged) for e in third)


def test_a_failed_gateway_payment_is_a_cancellation(zoho):
    """status `failure` is not money received: PaymentCancelled."""
    fake, clock = zoho()
    fake.add_payment("Student 1", 500, status="failure")
    (event,) = _connector(fake, clock).fetch(None, Ledger())
    assert isinstance(event, PaymentCancelled)


def test_token_is_refreshed_before_it_expires(zoho):
    """Near the end of the hour the connector refreshes first; Zoho never sees an expired token."""
    fake, clock = zoho(n=2)
    conn = _connector(fake, clock)
    list(conn.fetch(None, Ledger()))
    clock.now += timedelta(minutes=56)      # inside the 5-minute refresh margin
    list(conn.fetch(None, Ledger()))
    stats = fake.stats()
    assert stats["tokens_issued"] == 2 and 401 not in stats["by_status"]


def test_token_is_refreshed_once_on_401_and_a_second_401_stops_the_source(zoho):
    """An expired token → one refresh and the call succeeds; refused again after refreshing → StopSource."""
    fake, clock = zoho(n=2)
    conn = _connector(fake, clock)
    list(conn.fetch(None, Ledger()))
    fake.expire_tokens()
    assert len(list(conn.fetch(None, Ledger()))) == 2
    assert fake.stats()["by_status"][401] == 1 and fake.stats()["tokens_issued"] == 2
    fake.faults.error(code=57, message="You are not authorized to perform this operation", status=401, count=2,
                      match="GET /customerpayments")
    with pytest.raises(StopSource, match="freshly refreshed"):
        list(conn.fetch(None, Ledger()))


def test_a_rejected_refresh_token_stops_the_source(zoho):
    """The token endpoint's HTTP 200 `{"error": "invalid_code"}` stops the source."""
    fake, clock = zoho(n=1)
    fake.revoke_refresh_token(REFRESH)
    with pytest.raises(StopSource, match="invalid_code"):
        list(_connector(fake, clock).fetch(None, Ledger()))


def test_429_without_retry_after_backs_off_for_the_minute_then_succeeds(zoho):
    """Zoho's 429 has no Retry-After: the connector waits the backoff (on the injected clock) and goes on."""
    fake, clock = zoho(_data(per_minute=4), n=6)
    events = list(_connector(fake, clock, page_size=3).fetch(None, Ledger()))
    assert len(events) == 6
    assert fake.stats()["rate_limited"] >= 1
    assert any(s >= 60 for s in clock.slept)


def test_spent_daily_budget_defers_the_run_and_is_remembered(zoho):
    """Past `daily_budget` calls the run stops with DeferredError; the count survives in the memo."""
    fake, clock = zoho(n=8)
    ledger = Ledger()
    with pytest.raises(DeferredError, match="daily budget"):
        list(_connector(fake, clock, daily_budget=5).fetch(None, ledger))
    assert ledger.memo[f"zoho:{ORG}:calls:2026-11-02"] == "5"
    with pytest.raises(DeferredError):
        list(_connector(fake, clock, daily_budget=5).fetch(None, ledger))   # a new process: still spent
    clock.now += timedelta(days=1)
    assert len(list(_connector(fake, clock, daily_budget=50).fetch(None, ledger))) == 8


def test_list_rows_without_a_change_time_fall_back_to_the_detail(zoho):
    """If the list omits last_modified_time, the detail's updated_time still versions and positions the row."""
    fake, clock = zoho(n=3, list_modified_field=None)
    events = list(_connector(fake, clock).fetch(None, Ledger()))
    assert len(events) == 3 and all(e.version.endswith("+0500") for e in events)


def test_settings_build_zoho_urls_from_the_data_centre():
    """`data_center = "eu"` → zohoapis.eu and accounts.zoho.eu; the plan sets the daily budget."""
    s = ZohoSettings(organization_id=ORG, client_id=CLIENT, client_secret=SECRET, refresh_token=REFRESH,
                     data_center="eu", plan="professional")
    assert s.api_url() == "https://www.zohoapis.eu/books/v3" and s.accounts_url() == "https://accounts.zoho.eu"
    assert s.budget() == 5000
    with pytest.raises(ValueError):
        ZohoSettings(organization_id=ORG, client_id=CLIENT, client_secret=SECRET, refresh_token=REFRESH, page_size=500)


# --- end to end -----------------------------------------------------------------------------------
def test_engine_pushes_every_zoho_receipt_once_and_a_later_deletion_opens_reversed_in_erp(tmp_path):
    """Count and sum of LMS payments equal the fake's receipts; a second run writes nothing; a delete → conflict."""
    from sync.app import build_app
    from sync.config import Settings
    from sync.sandbox.lms import LmsSandbox

    scn = scenario.build(n_students=4, receipts_per_student=3, amount=1000)
    with LmsSandbox(scn["lms_seed"]) as lms, ZohoFake(_data()) as fake:
        start = datetime.now(UTC) - timedelta(minutes=30)
        ids = []
        for n in range(12):
            i = n % 4
            ids.append(fake.add_payment(f"Student {i}", 1000, email=f"student{i}@example.pk", payment_mode="cash",
                                        created_time=start + timedelta(seconds=n)))
        settings = Settings(
            state_path=str(tmp_path / "state.db"), log_format="json",
            lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": 100000,
                 "max_attempts": 3, "max_retry_seconds": 5, "limiter_path": str(tmp_path / "pacing.db")},
            sources={"zoho": {"connector": "zoho", "interval": "1m", "lag": "0s", "settings": {
                "api_base": fake.api_base, "accounts_base": fake.accounts_base, "organization_id": ORG,
                "client_id": CLIENT, "client_secret": SECRET, "refresh_token": REFRESH, "page_size": 5}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            first = app.engine.run_once("zoho")
            pays = lms.payments()
            assert first.counts["pushed"] == 12 and len(pays) == 12
            assert sum(p["amount"] for p in pays) == 12000
            assert {p["notes"] for p in pays} == {f"erp:zoho:{pid}" for pid in ids}

            second = app.engine.run_once("zoho")
            assert second.counts.get("pushed", 0) == 0 and second.counts["unchanged"] == 12

            fake.delete_payment(ids[4])
            third = app.engine.run_once("zoho")
            assert third.conflicts["reversed_in_erp"] == 1 and len(lms.payments()) == 12
            with app.store.engine.connect() as c:
                rows = c.execute(select(conflicts.c.doc_id, conflicts.c.kind)
                                 .where(conflicts.c.status == "open")).all()
            assert [(r.doc_id, r.kind) for r in rows] == [(ids[4], "reversed_in_erp")]
            fourth = app.engine.run_once("zoho")
            assert not fourth.conflicts and fourth.counts.get("pushed", 0) == 0
        finally:
            app.close()
