"""SQL connector against real SQLite files (and PostgreSQL when FEESYNC_TEST_PG_URL is set), and end to end."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from connectors.sql import SQLConnector, SQLSettings
from connectors.sql.connector import translate
from sync.errors import FeesyncError, SourceError, TransientError
from sync.events import Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged
from sync.state import conflicts

COLUMNS = ("document_id", "changed_at", "amount", "currency", "posting_date", "student", "invoice", "status",
           "email", "method", "reference_number")
TIE = "2026-11-02 09:00:00"


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


def row(doc_id, changed_at=TIE, amount="1000.00", *, status="submitted", currency="PKR", student="S1",
        invoice="", email=None, method="Cash", reference_number=None, posting_date="2026-11-02"):
    return (doc_id, changed_at, amount, currency, posting_date, student, invoice, status, email, method,
            reference_number)


def make_db(path, rows, *, id_type="TEXT", changed_type="TEXT", amount_type="NUMERIC"):
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE receipts (document_id {id_type}, changed_at {changed_type}, amount {amount_type}, "
                 "currency TEXT, posting_date TEXT, student TEXT, invoice TEXT, status TEXT, email TEXT, "
                 "method TEXT, reference_number TEXT)")
    conn.executemany(f"INSERT INTO receipts VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    conn.commit()
    conn.close()
    return path


def connector(url, query="SELECT * FROM receipts", **overrides):
    return SQLConnector(SQLSettings(url=url, query=query, **{"page_size": 10, "max_attempts": 2,
                                                             "max_retry_seconds": 2, **overrides}),
                        sleep=lambda s: None)


@pytest.fixture
def tie_db(tmp_path):
    """25 receipts sharing one changed_at, with 3 before and 2 after it."""
    rows = [row(f"B{i}", f"2026-11-02 08:59:5{i}") for i in range(3)]
    rows += [row(f"R{i:02d}", TIE, str(1000 + i)) for i in reversed(range(25))]   # inserted out of order
    rows += [row("Z1", "2026-11-02 09:00:00.25"), row("Z2", "2026-11-02 09:00:01")]
    return f"sqlite:///{make_db(tmp_path / 'erp.db', rows)}"


EXPECTED_ORDER = ["B0", "B1", "B2"] + [f"R{i:02d}" for i in range(25)] + ["Z1", "Z2"]


# --- keyset paging --------------------------------------------------------------------------------------------------
def test_25_rows_sharing_one_changed_at_with_page_10_are_each_read_once_in_order(tie_db):
    """Keyset paging on (changed_at, document_id) walks a tie bigger than two pages without gap or duplicate."""
    c = connector(tie_db)
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == EXPECTED_ORDER
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert events[3].position == Position(datetime(2026, 11, 2, 9, 0, tzinfo=UTC), "R00")
    assert sum(e.amount for e in events if e.doc_id.startswith("R")) == sum(1000 + i for i in range(25))
    assert c.queries == 2 + 3   # shape + sample, then pages of 10, 10, 10 (short page ends it: 30 rows)


def test_resume_from_any_cursor_reads_exactly_the_rest(tie_db):
    """From every position the connector ever yielded, a fetch returns exactly the rows after it."""
    c = connector(tie_db, page_size=7)
    events = list(c.fetch(None, Ctx()))
    for k, ev in enumerate(events):
        assert [e.doc_id for e in c.fetch(ev.position, Ctx())] == EXPECTED_ORDER[k + 1:], k


def test_text_fractions_written_with_trailing_zeros_are_reread_never_skipped(tmp_path):
    """Python's sqlite3 writes `09:00:00` or `09:00:00.250000`; a resume may re-read such a row, never skip one."""
    rows = [row("A", "2026-11-02 09:00:00"), row("B", "2026-11-02 09:00:00.250000"),
            row("C", "2026-11-02 09:00:00.250000"), row("D", "2026-11-02 09:00:00.5")]
    c = connector(f"sqlite:///{make_db(tmp_path / 'frac.db', rows)}", page_size=2)
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == ["A", "B", "C", "D"]
    assert [e.doc_id for e in c.fetch(events[1].position, Ctx())] == ["B", "C", "D"]
    assert [e.doc_id for e in c.fetch(events[3].position, Ctx())] == []


def test_an_inclusive_start_time_rereads_the_whole_tie(tie_db):
    """The engine's lookback start `(t, "")` includes every row at t."""
    got = [e.doc_id for e in connector(tie_db).fetch(Position(datetime(2026, 11, 2, 9, 0, tzinfo=UTC), ""), Ctx())]
    assert got == EXPECTED_ORDER[3:]


def test_until_excludes_rows_at_and_after_it(tie_db):
    """`until` bounds a backfill window: [since, until)."""
    got = [e.doc_id for e in connector(tie_db).fetch(None, Ctx(), until=datetime(2026, 11, 2, 9, 0, tzinfo=UTC))]
    assert got == ["B0", "B1", "B2"]


def test_integer_document_ids_page_and_resume_in_numeric_order(tmp_path):
    """Integer ids sort numerically in the database and in positions (zero-padded), so resume is exact."""
    url = f"sqlite:///{make_db(tmp_path / 'int.db', [row(i, TIE) for i in range(1, 26)], id_type='INTEGER')}"
    c = connector(url)
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == [str(i) for i in range(1, 26)]
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert [e.doc_id for e in c.fetch(events[8].position, Ctx())] == [str(i) for i in range(10, 26)]


def test_naive_times_are_in_the_configured_zone_and_bound_back_in_it(tmp_path):
    """Naive local changed_at values become UTC positions; resuming binds the cursor in the same zone."""
    rows = [row("K1", "2026-11-02 14:00:00"), row("K2", "2026-11-02 14:00:00"), row("K3", "2026-11-02 14:00:05")]
    c = connector(f"sqlite:///{make_db(tmp_path / 'khi.db', rows)}", time_zone="Asia/Karachi")
    events = list(c.fetch(None, Ctx()))
    assert events[0].position.changed_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert [e.doc_id for e in c.fetch(events[0].position, Ctx())] == ["K2", "K3"]
    assert [e.doc_id for e in c.fetch(Position(datetime(2026, 11, 2, 9, 0, 1, tzinfo=UTC), ""), Ctx())] == ["K3"]


def test_iso_text_with_t_and_z_is_never_skipped_by_a_bound(tmp_path):
    """`2026-11-02T09:00:00.123Z`-style text is bound in that style, so SQLite's text comparison skips nothing."""
    rows = [row("A", "2026-11-02T08:59:59.900Z"), row("B", "2026-11-02T09:00:00.123Z"),
            row("C", "2026-11-02T09:00:00.123Z"), row("D", "2026-11-02T10:00:00.000Z")]
    c = connector(f"sqlite:///{make_db(tmp_path / 'iso.db', rows)}", page_size=2)
    assert [e.doc_id for e in c.fetch(Position(datetime(2026, 11, 2, 9, 0, tzinfo=UTC), ""), Ctx())] == ["B", "C", "D"]
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == ["A", "B", "C", "D"]
    # a resume re-reads the rows of the cursor's own instant (the ledger drops them) and skips none
    assert [e.doc_id for e in c.fetch(events[1].position, Ctx())] == ["B", "C", "D"]
    assert [e.doc_id for e in c.fetch(events[0].position, Ctx())] == ["A", "B", "C", "D"]


# --- rows -> events ---------------------------------------------------------------------------------------------------
def test_status_decides_the_event_and_drafts_are_skipped(tmp_path):
    """cancelled/void -> PaymentCancelled, draft -> nothing, anything else -> PaymentReceived."""
    rows = [row("P1", status="submitted"), row("P2", status="Cancelled"), row("P3", status="VOID"),
            row("P4", status="draft"), row("P5", status=None), row("P6", status="paid")]
    c = connector(f"sqlite:///{make_db(tmp_path / 's.db', rows)}")
    events = list(c.fetch(None, Ctx()))
    assert [(e.doc_id, type(e).__name__) for e in events] == [
        ("P1", "PaymentReceived"), ("P2", "PaymentCancelled"), ("P3", "PaymentCancelled"),
        ("P5", "PaymentReceived"), ("P6", "PaymentReceived")]


def test_a_receipt_turned_back_into_a_draft_is_a_cancellation(tmp_path):
    """A document handed over as a receipt and later a draft reaches the engine as PaymentCancelled."""
    path = make_db(tmp_path / 'd.db', [row("Q1")])
    c, ctx = connector(f"sqlite:///{path}"), Ctx()
    assert isinstance(next(iter(c.fetch(None, ctx))), PaymentReceived)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE receipts SET status = 'draft', changed_at = '2026-11-03 10:00:00'")
    (ev,) = list(c.fetch(None, ctx))
    assert isinstance(ev, PaymentCancelled) and ev.doc_id == "Q1"


def test_amounts_from_numeric_text_and_float_columns_are_exact_decimals(tmp_path):
    """NUMERIC, REAL and text amounts ("1,234.50") all parse through to_decimal without float noise."""
    rows = [row("M1", amount=18000), row("M2", amount=1000.5), row("M3", amount="1,234.50"),
            row("M4", amount="12abc")]
    c = connector(f"sqlite:///{make_db(tmp_path / 'm.db', rows, amount_type='')}")
    events = {e.doc_id: e for e in c.fetch(None, Ctx())}
    assert [events[k].amount for k in ("M1", "M2", "M3")] == [Decimal("18000"), Decimal("1000.5"),
                                                              Decimal("1234.50")]
    assert isinstance(events["M4"], Malformed) and "amount" in events["M4"].problem


def test_row_fields_map_to_the_receipt_event(tmp_path):
    """Currency is upper-cased, `plan:<id>` names an LMS plan, an e-mail-looking student is the e-mail."""
    rows = [row("F1", student="ayesha@example.pk", invoice="plan:5001", currency="pkr", method="JazzCash",
                reference_number="JC-1"),
            row("F2", student="STU-2", invoice="ACC-SINV-9", email="bilal@example.pk")]
    f1, f2 = list(connector(f"sqlite:///{make_db(tmp_path / 'f.db', rows)}").fetch(None, Ctx()))
    assert (f1.currency, f1.customer_email, f1.method, f1.reference_number) == ("PKR", "ayesha@example.pk",
                                                                                 "JazzCash", "JC-1")
    assert f1.references[0].lms_plan_id == "5001" and f1.posting_date == date(2026, 11, 2)
    assert (f2.customer, f2.customer_email, f2.references[0].invoice_id) == ("STU-2", "bilal@example.pk",
                                                                            "ACC-SINV-9")


def test_an_edited_row_gets_a_new_version_and_a_decided_one_is_unchanged(tmp_path):
    """The version hashes the whole row: the ledger's version short-cuts to Unchanged, an edit does not."""
    path = make_db(tmp_path / 'v.db', [row("V1")])
    c = connector(f"sqlite:///{path}")
    (ev,) = list(c.fetch(None, Ctx()))
    assert isinstance(next(iter(c.fetch(None, Ctx(seen={("V1", ev.version)})))), Unchanged)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE receipts SET amount = 999")    # changed_at did not move
    (edited,) = list(c.fetch(None, Ctx(seen={("V1", ev.version)})))
    assert isinstance(edited, PaymentReceived) and edited.version != ev.version and edited.amount == 999


def test_values_are_bound_never_formatted_into_the_sql(tmp_path):
    """Ids with quotes resume correctly and colons in the user's query are not taken as parameters."""
    rows = [row("O'Brien-1"), row("O'Brien-2"), row("x'); DROP TABLE receipts; --")]
    path = make_db(tmp_path / 'q.db', rows)
    query = "SELECT r.*, '09:30' AS slot FROM receipts r WHERE r.method <> ':nope'"
    c = connector(f"sqlite:///{path}", query=query, page_size=1)
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == ["O'Brien-1", "O'Brien-2", "x'); DROP TABLE receipts; --"]
    assert [e.doc_id for e in c.fetch(events[0].position, Ctx())] == ["O'Brien-2", "x'); DROP TABLE receipts; --"]


def test_a_view_name_is_a_query(tmp_path):
    """`query` may name a view; it is read like `SELECT * FROM <view>`."""
    path = make_db(tmp_path / 'w.db', [row("W1", status="submitted"), row("W2", status="draft")])
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIEW fee_receipts AS SELECT * FROM receipts WHERE status <> 'draft'")
    assert [e.doc_id for e in connector(f"sqlite:///{path}", query="fee_receipts").fetch(None, Ctx())] == ["W1"]


def test_snapshot_sees_a_deletion(tie_db):
    """A deleted row is missing from the next snapshot of the same window; the others keep their versions."""
    c = connector(tie_db)
    since = datetime(2026, 11, 2, tzinfo=UTC)
    before = c.snapshot(since)
    with sqlite3.connect(tie_db.removeprefix("sqlite:///")) as conn:
        conn.execute("DELETE FROM receipts WHERE document_id = 'R07'")
    after = c.snapshot(since)
    assert set(before) - set(after) == {"R07"} and len(after) == 29
    assert all(after[k] == before[k] for k in after)
    assert set(c.snapshot(since, datetime(2026, 11, 2, 9, 0, tzinfo=UTC))) == {"B0", "B1", "B2"}


# --- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("query,match", [("SELECT * FROM no_such_table", "no such table"),
                                         ("SELECT document_id, changed_at FROM receipts", "lacks the column"),
                                         ("SELECT * FROM receipts WHERE", "syntax error|incomplete input")])
def test_bad_query_is_a_source_error(tie_db, query, match):
    """A query the database rejects, or one without the contract's columns, is a SourceError."""
    with pytest.raises(SourceError, match=match) as err:
        list(connector(tie_db, query=query).fetch(None, Ctx()))
    if "lacks" not in match:
        assert isinstance(err.value.__cause__, sa_exc.DBAPIError)


def test_a_missing_sqlite_file_is_a_source_error_and_is_not_created(tmp_path):
    """A wrong path is reported, never silently created as an empty database."""
    missing = tmp_path / "nope.db"
    with pytest.raises(SourceError, match="does not exist"):
        list(connector(f"sqlite:///{missing}").fetch(None, Ctx()))
    assert not missing.exists()
    assert "does not exist" in connector(f"sqlite:///{missing}").probe()[0]


def test_driver_errors_are_translated_by_kind():
    """Locks and lost connections retry later; rejected SQL is a source error; SQLSTATE decides when present."""
    class PgError(Exception):
        def __init__(self, msg, sqlstate):
            super().__init__(msg)
            self.sqlstate = sqlstate

    locked = sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    gone = sa_exc.OperationalError("SELECT 1", {}, PgError("server closed the connection", "08006"))
    no_table = sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: x"))
    undefined = sa_exc.ProgrammingError("SELECT 1", {}, PgError('relation "x" does not exist', "42P01"))
    serial = sa_exc.OperationalError("SELECT 1", {}, PgError("could not serialize access", "40001"))
    assert isinstance(translate(locked, "page"), TransientError)
    assert isinstance(translate(gone, "page"), TransientError)
    assert isinstance(translate(serial, "page"), TransientError)
    assert isinstance(translate(no_table, "page"), SourceError)
    assert isinstance(translate(undefined, "page"), SourceError)


def test_a_locked_database_is_retried_then_deferred(tie_db):
    """An exclusive lock held by the ERP makes the read retry (clock injected), then defer to the next cycle."""
    from sync.errors import DeferredError
    holder = sqlite3.connect(tie_db.removeprefix("sqlite:///"), timeout=0)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        c = SQLConnector(SQLSettings(url=tie_db + "?timeout=0", query="receipts", max_attempts=2),
                         sleep=lambda s: None)
        with pytest.raises(DeferredError, match="locked"):
            list(c.fetch(None, Ctx()))
        assert c.queries == 2
    finally:
        holder.rollback()
        holder.close()


def test_the_url_password_never_appears_in_errors():
    """A URL with a password: whatever fails (driver missing, connection refused) names no secret."""
    secret = "Sup3rS3cretPw"
    c = connector(f"postgresql://feesync:{secret}@127.0.0.1:1/erp", query="receipts")
    with pytest.raises(FeesyncError) as err:     # ConfigError without a driver, DeferredError with one
        list(c.fetch(None, Ctx()))
    assert secret not in str(err.value)
    assert secret not in repr(c.settings)
    assert all(secret not in p for p in c.probe())


def test_settings_refuse_what_is_not_a_query():
    """`query` must be a SELECT/WITH or a table/view name; the URL must parse."""
    for bad in ("DELETE FROM receipts", "receipts; DROP TABLE x", ""):
        with pytest.raises(ValueError):
            SQLSettings(url="sqlite:///x.db", query=bad)
    with pytest.raises(ValueError):
        SQLSettings(url="not a url", query="receipts")
    assert SQLSettings(url="sqlite:///x.db", query="  SELECT 1;  ").query == "SELECT 1"


# --- PostgreSQL (optional) ---------------------------------------------------------------------------------------------
PG_URL = os.environ.get("FEESYNC_TEST_PG_URL")


@pytest.fixture
def pg_table():
    if not PG_URL:
        pytest.skip("set FEESYNC_TEST_PG_URL (e.g. postgresql+psycopg://user:pw@127.0.0.1/db) to run PostgreSQL tests")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed")
    import sqlalchemy as sa
    name = f"feesync_test_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (document_id bigint, changed_at timestamptz, local_at timestamp, "
                             "amount numeric(12,2), currency text, posting_date date, student text, invoice text, "
                             "status text)"))
        base = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        local = base.astimezone(ZoneInfo("Asia/Karachi")).replace(tzinfo=None)   # the naive `timestamp` column
        rows = [{"i": i, "t": base, "l": local, "a": Decimal(f"{1000 + i}.50")} for i in range(1, 26)]
        rows.append({"i": 99, "t": base + timedelta(microseconds=1), "l": local + timedelta(microseconds=1),
                     "a": Decimal("5.00")})
        conn.execute(sa.text(f"INSERT INTO {name} VALUES (:i, :t, :l, :a, 'PKR', DATE '2026-11-02', 'S', '', "
                             "'submitted')"), rows)
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {name}"))
    engine.dispose()


def test_postgres_timestamptz_tie_pages_and_resumes_exactly(pg_table):
    """On PostgreSQL: 25 ids tied on one timestamptz, page 10, every resume exact, microseconds kept."""
    c = connector(PG_URL, query=f"SELECT * FROM {pg_table}")
    events = list(c.fetch(None, Ctx()))
    assert [e.doc_id for e in events] == [str(i) for i in range(1, 26)] + ["99"]
    assert events[-1].position.changed_at == datetime(2026, 11, 2, 9, 0, 0, 1, tzinfo=UTC)
    for k, ev in enumerate(events):
        assert [e.doc_id for e in c.fetch(ev.position, Ctx())] == [e.doc_id for e in events[k + 1:]]
    assert events[0].amount == Decimal("1001.50")


def test_postgres_naive_timestamps_use_the_time_zone(pg_table):
    """A naive `timestamp` column is local time in `time_zone`, bound back in it."""
    query = (f"SELECT document_id, local_at AS changed_at, amount, currency, posting_date, student, invoice, status "
             f"FROM {pg_table}")
    c = connector(PG_URL, query=query, time_zone="Asia/Karachi")
    events = list(c.fetch(Position(datetime(2026, 11, 2, 9, 0, tzinfo=UTC), "00000000000000000024"), Ctx()))
    assert [e.doc_id for e in events] == ["25", "99"]


def test_postgres_bad_query_is_a_source_error(pg_table):
    """An unknown relation on PostgreSQL is a ProgrammingError, translated to SourceError."""
    with pytest.raises(SourceError, match="does not exist") as err:
        list(connector(PG_URL, query="SELECT * FROM feesync_no_such_relation").fetch(None, Ctx()))
    assert isinstance(err.value.__cause__, sa_exc.ProgrammingError)


# --- end to end: engine + LMS sandbox -------------------------------------------------------------------------------------
LMS_KEY = "zl_test_sql_7a8b9c0d"


def _lms_seed(n):
    students, plans = [], []
    for i in range(n):
        students.append({"id": 400 + i, "name": f"Student {i}", "email": f"sql{i}@example.pk", "status": "active"})
        plans.append({"id": 8000 + i, "student_id": 400 + i, "batch_id": 1, "plan_type": "installment",
                      "total_amount": 100000, "currency": "PKR", "status": "active",
                      "installments": [{"sequence": 1, "amount_due": 50000, "due_date": "2026-11-01"},
                                       {"sequence": 2, "amount_due": 50000, "due_date": "2026-12-01"}]})
    return {"rate_limit_per_minute": 100000, "institutes": [{
        "id": "inst-sql", "name": "SQL Institute",
        "api_keys": [{"key": LMS_KEY, "name": "feesync-test", "scopes": ["fees:read", "fees:write", "students:read"]}],
        "batches": [{"id": 1, "name": "Python Bootcamp"}], "students": students, "fee_plans": plans, "payments": []}]}


def test_sql_receipts_reach_the_lms_exactly_once_and_a_cancellation_opens_reversed_in_erp(tmp_path):
    """Count and sum of LMS payments equal the table's receipts; a second run writes nothing; a void is a conflict."""
    from sync.app import build_app
    from sync.config import Settings
    from sync.sandbox.lms import LmsSandbox

    rows, expected = [], {}
    for i in range(12):
        doc = f"RCPT-{i:03d}"
        student, email, invoice = (f"sql{i % 6}@example.pk", None, "") if i % 2 else (
            f"STU-{i % 6}", f"sql{i % 6}@example.pk", "")
        if i % 4 == 3:
            invoice = f"plan:{8000 + i % 6}"
        rows.append(row(doc, TIE if i < 8 else f"2026-11-02 09:0{i - 7}:00", str(500 * (i + 1)), student=student,
                        email=email, invoice=invoice, method="Bank Transfer" if i % 3 == 0 else "Cash"))
        expected[doc] = 500 * (i + 1)
    rows.append(row("RCPT-draft", TIE, "777", status="draft", student="sql1@example.pk"))
    rows.append(row("RCPT-void", TIE, "888", status="void", student="sql1@example.pk"))
    path = make_db(tmp_path / "erp.db", rows)
    with LmsSandbox(_lms_seed(6)) as lms:
        settings = Settings(
            state_path=str(tmp_path / "state.db"), log_format="json",
            lms={"base_url": lms.base_url, "api_key": LMS_KEY, "rate_limit_per_minute": 100000, "max_attempts": 3,
                 "max_retry_seconds": 5, "limiter_path": str(tmp_path / "pacing.db")},
            sources={"sql": {"connector": "sql", "interval": "1m", "lookback": "10m", "lag": "0s",
                             "settings": {"url": f"sqlite:///{path}", "query": "SELECT * FROM receipts",
                                          "page_size": 5, "time_zone": "Asia/Karachi"}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            first = app.engine.run_once("sql")
            pays = lms.payments()
            assert first.counts["pushed"] == len(expected) == len(pays)
            assert sum(p["amount"] for p in pays) == sum(expected.values())
            assert sorted(p["notes"] for p in pays) == sorted(f"erp:sql:{d}" for d in expected)
            assert first.skipped["cancelled"] == 1 and not first.conflicts

            second = app.engine.run_once("sql")
            assert second.counts.get("pushed", 0) == 0 and len(lms.payments()) == len(expected)

            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE receipts SET status = 'cancelled', changed_at = '2026-11-02 09:30:00' "
                             "WHERE document_id = 'RCPT-004'")
            third = app.engine.run_once("sql")
            assert third.conflicts == {"reversed_in_erp": 1}
            with app.store.engine.connect() as c:
                open_rows = c.execute(select(conflicts.c.doc_id, conflicts.c.kind)
                                      .where(conflicts.c.status == "open")).all()
            assert [tuple(r) for r in open_rows] == [("RCPT-004", "reversed_in_erp")]
            assert len(lms.payments()) == len(expected)
        finally:
            app.close()
