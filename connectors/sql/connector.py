"""SQL connector: fee receipts from any database SQLAlchemy can reach, by a `(changed_at, document_id)` keyset.

* `query` is a SELECT (or `WITH … SELECT`) or a table/view name, whose columns are named
  `document_id, changed_at, amount, currency, posting_date, student, invoice, status`
  (+ optional `email`, `method`, `reference_number`; names matched case-insensitively).
* Paging wraps the query as a subquery and reads
  `WHERE changed_at > :m OR (changed_at = :m AND document_id > :n) ORDER BY changed_at,
  document_id LIMIT :k` with bound, explicitly typed parameters (SQLAlchemy renders the
  dialect's LIMIT/TOP/FETCH), until a short page. The first page of a poll is inclusive
  (`changed_at >= :m`) from the engine's start position; later pages continue from the last
  row's values exactly as the database returned them, so ties of any size are read once.
  The user's query text is not a template: colons in it are escaped, values are never
  formatted into SQL.
* Times: see `connectors.sql._keys` (aware/naive timestamps, ISO text, dates, epoch numbers;
  naive values are in `time_zone`).
* `status`: `cancelled`/`canceled`/`void`/`voided` -> `PaymentCancelled`; `draft` -> skipped
  (unless this connector handed the same document over as a receipt before: then it is a
  `PaymentCancelled`, so a pushed receipt turned back into a draft reaches a person);
  anything else, NULL included -> `PaymentReceived`.
* `invoice`: an ERP invoice id (mapped through `mapping.invoices`) or `plan:<LMS plan id>`.
* Version: a hash of the whole row, so any edit is seen even when `changed_at` did not move
  (rule 9 still needs the reconcile pass for rows whose `changed_at` did not move at all).
* Errors: connect failures, lost connections, lock timeouts and serialization failures are
  `TransientError` (retried, then deferred); a query the database rejects (ProgrammingError,
  SQLSTATE class 42, SQLite "no such table/column", syntax errors) is `SourceError`; an account
  the database refuses (wrong password, unknown role, no grant: SQLSTATE 28xxx / 42501, MySQL
  1044/1045/1142) is `StopSource` (the source stops, the cursor is kept); each raised `from` the
  driver's exception. A SQLite file is opened read-only and must exist.
* Each page is read on its own short connection and fully fetched before events are yielded,
  so no transaction stays open while the engine talks to the LMS.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from connectors.sql import _keys
from sync.connector import SourceContext
from sync.errors import ConfigError, ConflictError, FeesyncError, SourceError, StopSource, TransientError
from sync.events import (
    FeeEvent,
    Malformed,
    PaymentCancelled,
    PaymentReceived,
    Position,
    Reference,
    Unchanged,
)
from sync.logs import get_logger, redact, register_secret
from sync.money import to_decimal
from sync.retry import call_with_retry
from sync.times import dst_margin, zone

log = get_logger(component="sql")

REQUIRED = ("document_id", "changed_at", "amount", "currency", "posting_date", "student", "invoice", "status")
OPTIONAL = ("email", "method", "reference_number")
CANCELLED = frozenset({"cancelled", "canceled", "void", "voided"})
DRAFT = frozenset({"draft"})
_MEMO = "sql-receipt:"
_NAME = re.compile(r'^(?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?$')
_SELECT = re.compile(r"^\s*(select|with)\b", re.I)


class SQLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: SecretStr                         # any SQLAlchemy URL; may embed a password
    query: str                             # a SELECT / WITH … SELECT, or a table or view name
    page_size: int = Field(500, ge=1, le=100_000)
    time_zone: str = "UTC"                 # zone of naive changed_at values
    max_attempts: int = Field(4, ge=1, le=10)
    max_retry_seconds: float = Field(60.0, gt=0, le=86_400)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        try:
            url = make_url(v.get_secret_value())
        except sa_exc.ArgumentError:
            raise ValueError("is not a SQLAlchemy database URL (e.g. postgresql+psycopg://user@host/db)") from None
        if url.password:
            register_secret(str(url.password))
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        text = v.strip().rstrip(";").strip()
        if not text:
            raise ValueError("must be a SELECT or a table/view name")
        if not (_NAME.match(text) or _SELECT.match(text)):
            raise ValueError("must be a SELECT (or WITH … SELECT) or a table/view name")
        return text

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str) -> str:
        zone(v)
        return v


@dataclass(frozen=True)
class _Shape:
    """The query's columns (real names by canonical name) and one sample row's key values."""

    names: dict[str, str]
    columns: tuple[str, ...]
    sample_changed: Any
    sample_id: Any


def _sqlstate(exc: sa_exc.DBAPIError) -> str:
    orig = exc.orig
    for attr in ("sqlstate", "pgcode"):
        code = getattr(orig, attr, None)
        if isinstance(code, str):
            return code
    return ""


_QUERY_PROBLEMS = ("no such table", "no such column", "syntax error", "near \"", "ambiguous column",
                   "no such function", "misuse of", "wrong number of arguments", "incomplete input",
                   "unknown column", "doesn't exist", "does not exist")
_MYSQL_QUERY_CODES = frozenset({1054, 1064, 1146, 1149, 1109, 1052})
# The account is refused (wrong password, unknown role, no grant): a person must fix the URL or the
# grants. Connection-time failures carry no SQLSTATE in psycopg, hence the texts.
_ACCESS_PROBLEMS = ("password authentication failed", "authentication failed", "no pg_hba.conf entry",
                    "permission denied", "access denied", "insufficient privilege")
_ROLE_MISSING = re.compile(r'role "[^"]*" does not exist', re.I)
_MYSQL_ACCESS_CODES = frozenset({1044, 1045, 1142, 1143, 1227})


def translate(exc: sa_exc.SQLAlchemyError, what: str) -> FeesyncError:
    """One boundary for driver errors: retry-later or a query/source problem (never the URL)."""
    orig = getattr(exc, "orig", None)
    detail = redact(str(orig if orig is not None else exc).strip().splitlines()[0][:300]) if str(
        orig if orig is not None else exc).strip() else type(exc).__name__
    state = _sqlstate(exc) if isinstance(exc, sa_exc.DBAPIError) else ""
    mysql_code = orig.args[0] if orig is not None and getattr(orig, "args", None) and isinstance(
        orig.args[0], int) else None
    query_problem = (isinstance(exc, sa_exc.ProgrammingError) or state.startswith("42")
                     or mysql_code in _MYSQL_QUERY_CODES
                     or any(p in detail.lower() for p in _QUERY_PROBLEMS))
    if state.startswith("28") or state == "42501" or mysql_code in _MYSQL_ACCESS_CODES or any(
            p in detail.lower() for p in _ACCESS_PROBLEMS) or _ROLE_MISSING.search(detail):
        return StopSource(f"SQL source {what}: the database refused the account: {detail}; check the user and "
                          "password in `url` and the account's grants on the query's tables", system="erp")
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        query_problem = False
    if query_problem and not state.startswith(("08", "40", "53", "57")):
        return SourceError(f"SQL source {what}: the database rejected the query: {detail}")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError) or state.startswith(
            ("08", "40", "53", "57")) or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated):
        return TransientError(f"SQL source {what}: {type(exc).__name__}: {detail}")
    return SourceError(f"SQL source {what}: {type(exc).__name__}: {detail}")


def _engine_url(raw: str) -> sa.URL:
    """SQLite files are opened read-only (and must exist); other URLs are used as given."""
    url = make_url(raw)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" \
            or url.database.startswith("file:") or url.query.get("uri"):
        return url
    path = Path(url.database)
    if not path.is_file():
        raise SourceError(f"SQL source: the SQLite file {str(path)!r} does not exist")
    return url.set(database=f"file:{path.resolve().as_posix()}", query={**url.query, "mode": "ro", "uri": "true"})


class SQLConnector:
    name: ClassVar[str] = "sql"
    settings_model: ClassVar[type[BaseModel]] = SQLSettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: SQLSettings, *, transport: Any = None, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.settings = settings
        self.zone = zone(settings.time_zone)
        self.stop_event = stop_event or threading.Event()
        self.sleep = sleep or self.stop_event.wait
        self._engine: sa.Engine | None = None
        self.queries = 0
        q = settings.query
        self._from_sql = (f"SELECT * FROM {q}" if _NAME.match(q) else q).replace(":", r"\:")

    # --- contract ----------------------------------------------------------------------------
    def server_now(self) -> datetime | None:
        return None   # database clocks and the column's writer may differ; the lookback covers late rows

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def probe(self) -> list[str]:
        """Run the query's shape and count rows the cursor can never see (NULL keys)."""
        try:
            shape = self._shape()
            sub = self._subquery(shape)
            cond = sa.or_(sub.c[shape.names["changed_at"]].is_(None), sub.c[shape.names["document_id"]].is_(None))
            hidden = self._run(lambda c: c.execute(sa.select(sa.func.count()).select_from(sub).where(cond)).scalar(),
                               "probe")
        except Exception as exc:  # noqa: BLE001 - `check` reports every failure as text
            return [f"sql: {type(exc).__name__}: {exc}"]
        if hidden:
            return [f"sql: {hidden} row(s) have a NULL changed_at or document_id; the cursor never sees them"]
        return []

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        shape = self._shape()
        if shape.sample_changed is None:
            return   # no rows with a change time at all
        codec = self._codec(shape)
        sub = self._subquery(shape)
        c_at, c_id = sub.c[shape.names["changed_at"]], sub.c[shape.names["document_id"]]
        t_at, t_id = codec.sa_type(), _keys.id_type(shape.sample_id)
        where: Any = None
        if since is not None:
            # naive local times repeat an hour each autumn: a row written after the clocks went back carries
            # an earlier local time than the cursor, so such a read starts that much earlier (the rows read
            # again are recognised as unchanged)
            margin = dst_margin(codec.zone, since.changed_at) if codec.local_naive else timedelta(0)
            m = sa.literal(codec.bind(since.changed_at - margin), t_at)
            if since.doc_id and not margin:
                n = sa.literal(_keys.bind_id(since.doc_id, shape.sample_id), t_id)
                where = sa.or_(c_at > m, sa.and_(c_at == m, c_id > n))
            else:
                where = c_at >= m
        limit_until = c_at < sa.literal(codec.bind(until), t_at) if until is not None else None
        while True:
            stmt = sa.select(sub).where(c_at.is_not(None), c_id.is_not(None))
            if where is not None:
                stmt = stmt.where(where)
            if limit_until is not None:
                stmt = stmt.where(limit_until)
            stmt = stmt.order_by(c_at, c_id).limit(self.settings.page_size)
            rows = self._run(lambda c, s=stmt: [dict(r._mapping) for r in c.execute(s)], "page")
            for row in rows:
                event = self._event_for(row, shape, since, ctx)
                if event is not None:
                    yield event
            if len(rows) < self.settings.page_size:
                return
            last = rows[-1]
            m_raw = sa.literal(last[shape.names["changed_at"]], t_at)
            n_raw = sa.literal(last[shape.names["document_id"]], t_id)
            where = sa.or_(c_at > m_raw, sa.and_(c_at == m_raw, c_id > n_raw))

    def snapshot(self, since: datetime, until: datetime | None = None) -> dict[str, str]:
        """document_id -> row hash of every non-draft row whose changed_at is in [since, until)."""
        out: dict[str, str] = {}

        class _Blind:
            def seen(self, doc_id: str, version: str) -> bool:
                return False

            def recall(self, key: str) -> str | None:
                return None

            def remember(self, key: str, value: str) -> None:
                pass

        for event in self.fetch(Position(since, ""), _Blind(), until):
            out[event.doc_id] = event.version
        return out

    # --- database ----------------------------------------------------------------------------
    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            raw = self.settings.url.get_secret_value()
            try:
                self._engine = sa.create_engine(_engine_url(raw), pool_pre_ping=True)
            except (sa_exc.NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
                raise ConfigError(f"SQL source: the database driver is not installed: {redact(str(exc))}") from exc
            except sa_exc.ArgumentError as exc:
                raise ConfigError(f"SQL source: bad database URL: {redact(str(exc))}") from exc
        return self._engine

    def _run(self, fn: Callable[[sa.Connection], Any], what: str) -> Any:
        def once() -> Any:
            self.queries += 1
            try:
                with self.engine.connect() as conn:
                    return fn(conn)
            except sa_exc.SQLAlchemyError as exc:
                raise translate(exc, what) from exc

        return call_with_retry(once, max_attempts=self.settings.max_attempts,
                               max_seconds=self.settings.max_retry_seconds, retry_after_cap=60.0, sleep=self.sleep,
                               stop_event=self.stop_event, what="SQL read",
                               on_retry=lambda n, e: log.warning("erp.retry", query=what, attempt=n, error=str(e)))

    def _shape(self) -> _Shape:
        def read(conn: sa.Connection) -> _Shape:
            keys = list(conn.execute(sa.text(f"SELECT * FROM ({self._from_sql}) q WHERE 1 = 0")).keys())
            names = {k.lower(): k for k in keys}
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise SourceError(f"SQL source: the query lacks the column(s) {', '.join(missing)} "
                                  f"(it has {', '.join(keys)[:300]})")
            sub = sa.text(self._from_sql).columns(*[sa.column(k) for k in keys]).subquery("q")
            c_at, c_id = sub.c[names["changed_at"]], sub.c[names["document_id"]]
            sample = conn.execute(sa.select(c_at, c_id).where(c_at.is_not(None), c_id.is_not(None)).limit(1)).first()
            return _Shape(names, tuple(keys), sample[0] if sample else None, sample[1] if sample else None)

        return self._run(read, "query shape")

    def _subquery(self, shape: _Shape) -> Any:
        return sa.text(self._from_sql).columns(*[sa.column(k) for k in shape.columns]).subquery("q")

    def _codec(self, shape: _Shape) -> _keys.TimeCodec:
        try:
            return _keys.TimeCodec.learn(shape.sample_changed, self.zone)
        except ValueError as exc:
            raise SourceError(f"SQL source: {exc}") from None

    # --- rows -> events ------------------------------------------------------------------------
    def _event_for(self, row: dict[str, Any], shape: _Shape, since: Position | None,
                   ctx: SourceContext) -> FeeEvent | None:
        get = {canon: row.get(real) for canon, real in shape.names.items()}
        raw_id = get["document_id"]
        doc_id = str(raw_id).strip()
        version = hashlib.sha256(repr(sorted((k, _plain(v)) for k, v in get.items())).encode()).hexdigest()[:24]
        try:
            changed = _keys.to_utc(get["changed_at"], self.zone)
        except ValueError as exc:
            changed = since.changed_at if since is not None else _keys.EPOCH
            pos = Position(changed, _keys.position_id(raw_id))
            return Malformed(doc_id=doc_id, position=pos, version=version, problem=f"row {doc_id}: {exc}",
                             location=f"document_id={doc_id}")
        pos = Position(changed, _keys.position_id(raw_id))
        if not doc_id:
            return Malformed(doc_id=f"(empty id at {changed.isoformat()})", position=pos, version=version,
                             problem="document_id is empty", location=f"changed_at={changed.isoformat()}")
        if ctx.seen(doc_id, version):
            return Unchanged(doc_id=doc_id, position=pos, version=version)
        status = str(get["status"] or "").strip().lower()
        if status in DRAFT:
            if ctx.recall(_MEMO + doc_id):
                return PaymentCancelled(doc_id=doc_id, position=pos, version=version)
            return None
        if status in CANCELLED:
            return PaymentCancelled(doc_id=doc_id, position=pos, version=version)
        try:
            event = self._receipt(get, doc_id, pos, version)
        except ConflictError as exc:
            return Malformed(doc_id=doc_id, position=pos, version=version, problem=f"row {doc_id}: {exc.detail}",
                             location=f"document_id={doc_id}")
        if not ctx.recall(_MEMO + doc_id):
            ctx.remember(_MEMO + doc_id, "1")
        return event

    def _receipt(self, get: dict[str, Any], doc_id: str, pos: Position, version: str) -> PaymentReceived:
        amount = to_decimal(get["amount"], field="amount")
        currency = str(get["currency"] or "").strip().upper()
        if len(currency) != 3 or not currency.isalpha():
            raise ConflictError("malformed_document", f"currency {str(get['currency'])[:10]!r} is not an ISO code",
                                definitive=False)
        student = str(get["student"] or "").strip()
        if not student:
            raise ConflictError("malformed_document", "student is empty", definitive=False)
        email = str(get.get("email") or "").strip() or (student if "@" in student else None)
        invoice = str(get["invoice"] or "").strip()
        refs: tuple[Reference, ...] = ()
        if invoice.lower().startswith("plan:") and invoice[5:].strip():
            refs = (Reference(invoice_id=None, amount=amount, lms_plan_id=invoice[5:].strip()),)
        elif invoice:
            refs = (Reference(invoice_id=invoice, amount=amount),)
        return PaymentReceived(
            doc_id=doc_id, position=pos, version=version, customer=student, customer_email=email, amount=amount,
            currency=currency, posting_date=_posting_date(get["posting_date"], self.zone), references=refs,
            method=str(get.get("method") or "").strip() or None,
            reference_number=str(get.get("reference_number") or "").strip() or None)


def _plain(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def _posting_date(value: Any, tz: Any) -> date:
    if isinstance(value, datetime):
        return (value if value.tzinfo is None else value.astimezone(tz)).date()
    if isinstance(value, date):
        return value
    text = str(value or "").strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise ConflictError("malformed_document", f"posting_date {text[:20]!r} is not a date",
                            definitive=False) from None
