"""The state store: cursors, the write ledger, conflicts, learned mappings, run history and leases.

One SQLite file in WAL mode by default, or a PostgreSQL database (`state_url`) shared by
replicas. Every outcome and the cursor it allows are committed in one transaction
(sync-correctness rule 5). The schema evolves through Alembic migrations (`sync/migrations`);
a new store is created by running them, an older one is refused with the command that
upgrades it (`feesync state upgrade`). `state.db-schema` at the repository root is the DDL the
migrations create on SQLite (a test keeps them equal).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column, Connection, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint, bindparam,
    create_engine, event, inspect, select, text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from sync.errors import StateError
from sync.events import Position
from sync.times import utcnow

SCHEMA_VERSION = 2
HEAD_REVISION = "0002"
MIGRATIONS = str(Path(__file__).with_name("migrations"))

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

cursors = Table(
    "cursors", metadata,
    Column("source", String, primary_key=True),
    Column("changed_at", String, nullable=False),   # ISO-8601 UTC
    Column("doc_id", String, nullable=False),
    Column("updated_at", String, nullable=False),
    Column("run_id", String),
    Column("institute", String, nullable=False, server_default="default"),
)

documents = Table(
    "documents", metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String, nullable=False),
    Column("doc_id", String, nullable=False),
    Column("event_kind", String, nullable=False),
    Column("version", String, nullable=False),
    Column("fingerprint", String, nullable=False),
    # pending | pushed | conflict | skipped | waiting | held
    Column("status", String, nullable=False),
    Column("reason", String),
    Column("changed_at", String, nullable=False),
    Column("summary", Text, nullable=False),        # normalised event as JSON (no secrets)
    Column("amount", String),
    Column("currency", String),
    Column("customer", String),
    Column("first_seen", String, nullable=False),
    Column("updated_at", String, nullable=False),
    Column("institute", String, nullable=False, server_default="default"),
    UniqueConstraint("source", "doc_id", name="uq_documents_source_doc"),
)
Index("ix_documents_status", documents.c.source, documents.c.status)

writes = Table(
    "writes", metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String, nullable=False),
    Column("doc_id", String, nullable=False),
    Column("op", String, nullable=False),            # record_payment | create_plan | cancel_plan | waive_installment
    Column("base_key", String, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("idem_key", String, nullable=False),
    Column("method", String, nullable=False),
    Column("path", String, nullable=False),
    Column("body", Text, nullable=False),
    Column("body_fingerprint", String, nullable=False),
    # intent | done | conflict | superseded
    Column("status", String, nullable=False),
    Column("lms_id", String),
    Column("receipt_number", String),
    Column("lms_response", Text),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("created_at", String, nullable=False),
    Column("sent_at", String),
    Column("decided_at", String),
    Column("institute", String, nullable=False, server_default="default"),
    UniqueConstraint("institute", "idem_key", name="uq_writes_institute_key"),
)
Index("ix_writes_doc", writes.c.source, writes.c.doc_id)
Index("ix_writes_status", writes.c.status)

conflicts = Table(
    "conflicts", metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String, nullable=False),
    Column("doc_id", String, nullable=False),
    Column("write_id", Integer),
    Column("kind", String, nullable=False),
    Column("detail", Text, nullable=False),
    Column("status", String, nullable=False),        # open | resolved | ignored
    Column("amount", String),
    Column("currency", String),
    Column("customer", String),
    Column("lms_receipt", String),
    Column("request", Text),
    Column("response", Text),
    Column("attempts", Integer, nullable=False),
    Column("created_at", String, nullable=False),
    Column("updated_at", String, nullable=False),
    Column("resolved_at", String),
    Column("resolved_by", String),
    Column("note", Text),
    Column("institute", String, nullable=False, server_default="default"),
)
Index("ix_conflicts_status", conflicts.c.status, conflicts.c.kind)
Index("ix_conflicts_doc", conflicts.c.source, conflicts.c.doc_id)
Index("ix_conflicts_institute", conflicts.c.institute, conflicts.c.status)

conflict_history = Table(
    "conflict_history", metadata,
    Column("id", Integer, primary_key=True),
    Column("conflict_id", Integer, nullable=False),
    Column("at", String, nullable=False),
    Column("action", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("note", Text),
)

mappings = Table(
    "mappings", metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String, nullable=False),          # customer_student | invoice_plan
    Column("source", String, nullable=False),
    Column("erp_id", String, nullable=False),
    Column("lms_id", String, nullable=False),
    Column("origin", String, nullable=False),        # manual | learned | created
    Column("created_at", String, nullable=False),
    UniqueConstraint("kind", "source", "erp_id", name="uq_mappings"),
)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String, nullable=False),
    Column("source", String, nullable=False),
    Column("mode", String, nullable=False),          # live | backfill | dry-run | retry
    Column("started_at", String, nullable=False),
    Column("finished_at", String),
    Column("status", String, nullable=False),        # running | ok | conflicts | deferred | stopped | failed
    Column("counts", Text),
    Column("error", Text),
    Column("institute", String, nullable=False, server_default="default"),
)
Index("ix_runs_source", runs.c.source, runs.c.id)

leases = Table(
    "leases", metadata,
    Column("source", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

memo = Table(
    "memo", metadata,
    Column("source", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)


def _now() -> str:
    return utcnow().isoformat()


# The hot path (every document costs a handful of these) runs prebuilt statements with bind parameters:
# building a Core statement anew per call costs 3-5x its execution. Keyed by name and, for UPDATEs, the
# set of columns written.
_STATEMENTS: dict[Any, Any] = {}


def _stmt(key: Any, build: Any) -> Any:
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


def _update_by(table: Table, where: tuple[str, ...], values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`UPDATE table SET <values> WHERE <where columns> = :w_<col>`, prebuilt per column set, and its parameters."""
    cols = tuple(sorted(values))
    stmt = _stmt(("update", table.name, where, cols), lambda: table.update().where(
        *(table.c[w] == bindparam(f"w_{w}") for w in where)).values({c: bindparam(f"v_{c}") for c in cols}))
    return stmt, {f"v_{c}": values[c] for c in cols}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop the
    # last commits. Set FEESYNC_SQLITE_SYNCHRONOUS=FULL where that matters more than speed.
    mode = os.environ.get("FEESYNC_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    cur.execute(f"PRAGMA synchronous={mode if mode in ('OFF', 'NORMAL', 'FULL', 'EXTRA') else 'NORMAL'}")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def state_url(target: str | Path) -> str:
    """A SQLAlchemy URL from a path (SQLite) or a URL (postgresql+psycopg://...)."""
    text_target = str(target)
    if "://" in text_target:
        return text_target
    return f"sqlite:///{Path(text_target)}"


def _sqlite_file(url: str) -> Path:
    """The file of a SQLite URL, also in its URI form (`sqlite:///file:/path/s.db?mode=ro&uri=true`)."""
    rest = url.removeprefix("sqlite:///")
    if rest.startswith("file:") and "uri=true" in rest:
        rest = rest.removeprefix("file:").split("?", 1)[0]
    return Path(rest)


def _refuse_empty_file(p: Path) -> None:
    """Never start a new ledger in place of one that a failed copy or restore truncated."""
    if p.is_file() and p.stat().st_size == 0:
        raise StateError(f"state store {str(p)!r} is an empty file (0 bytes), not a store: a failed copy "
                         "or restore? Restore the latest backup (deploy/README.md, section 4), or remove "
                         "the file to start a new, empty store")


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        eng = create_engine(url, pool_size=8, max_overflow=8)
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True)


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.attributes["connection"] = conn
    return cfg


def _revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext
    return MigrationContext.configure(conn).get_current_revision()


def _describe(url: str) -> str:
    """A path or URL fit for messages: the password is never shown."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def schema_ddl() -> str:
    """The DDL the migrations create on SQLite (what `state.db-schema` holds)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schema.db"
        Store.open(path).close()
        con = sqlite3.connect(path)
        try:
            rows = [r[0] for r in con.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name")]
        finally:
            con.close()
    header = (f"-- feesync state store schema, version {SCHEMA_VERSION} (Alembic revision {HEAD_REVISION}).\n"
              "-- Generated by `feesync state schema`; created by the migrations in sync/migrations.\n")
    return header + "".join(f"{r.strip()};\n\n" for r in rows).rstrip() + "\n"


class Store:
    """Thin access layer over the state database. Methods taking `conn` run inside a caller's transaction."""

    def __init__(self, engine: Engine, path: str) -> None:
        self.engine = engine
        self.path = path
        self.is_sqlite = engine.dialect.name == "sqlite"

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, target: str | Path, *, create: bool = True, any_version: bool = False) -> Store:
        """Open a store; a new one is created by the migrations; an outdated one is refused (unless
        `any_version`: `state backup` copies a store of any version, before an upgrade)."""
        url = state_url(target)
        folder_hint = ""
        if url.startswith("sqlite:///"):
            p = _sqlite_file(url)
            _refuse_empty_file(p)
            if not p.exists():
                if not create:
                    raise StateError(f"state store {str(p)!r} does not exist")
                p.parent.mkdir(parents=True, exist_ok=True)
            if p.parent.is_dir() and not os.access(p.parent, os.W_OK):
                folder_hint = (f"; its folder {str(p.parent)!r} is not writable, and SQLite (WAL mode) creates "
                               f"{p.name}-wal and {p.name}-shm beside it: make the folder writable for this user, "
                               "or copy the file to one that is")
        engine = _engine(url)
        store = cls(engine, _describe(url))
        try:
            with engine.begin() as conn:
                tables = set(inspect(conn).get_table_names())
                if not tables - {"sqlite_sequence"}:
                    if not create:
                        raise StateError(f"state store {store.path!r} is empty")
                    from alembic import command
                    command.upgrade(_alembic_config(conn), "head")
                    return store
                if "meta" not in tables:
                    raise StateError(f"{store.path!r} is not a feesync state store (unknown tables)")
                if not any_version:
                    store._check_version(conn)
        except OperationalError as exc:
            engine.dispose()
            raise StateError(f"cannot open state store {store.path!r}: {exc.orig}{folder_hint}") from None
        except DatabaseError as exc:   # e.g. "file is not a database": damaged or not a store at all
            engine.dispose()
            raise StateError(f"cannot open state store {store.path!r}: {exc.orig}; if it is damaged, restore "
                             "the latest backup (deploy/README.md, section 4 'Back up and restore')") from None
        except StateError:
            engine.dispose()
            raise
        return store

    def check_writable(self) -> None:
        """A no-op write, so that a store the daemon cannot write (a restored file left root-owned, a read-only
        mount) is refused at start-up with one clear line instead of failing every job."""
        try:
            with self.engine.begin() as conn:
                conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=meta.c.value))
        except DatabaseError as exc:
            raise StateError(f"state store {self.path!r} cannot be written: {exc.orig}; check its owner and "
                             "permissions (the service user must own it and its folder)") from None

    def _check_version(self, conn: Connection) -> None:
        version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        revision = _revision(conn)
        if revision == HEAD_REVISION and version == str(SCHEMA_VERSION):
            return
        if version is not None and version.isdigit() and int(version) > SCHEMA_VERSION:
            raise StateError(f"state store {self.path!r} has schema version {version}, newer than this feesync "
                             f"(version {SCHEMA_VERSION}); upgrade feesync")
        raise StateError(f"state store {self.path!r} has schema version {version}; this feesync needs version "
                         f"{SCHEMA_VERSION}. Back it up (feesync state backup FILE), then run: feesync state upgrade")

    @classmethod
    def upgrade(cls, target: str | Path) -> tuple[str | None, str]:
        """Apply the migrations; a version-1 store from before Alembic is stamped first. Returns (from, to)."""
        from alembic import command
        url = state_url(target)
        if url.startswith("sqlite:///"):
            p = _sqlite_file(url)
            _refuse_empty_file(p)
            p.parent.mkdir(parents=True, exist_ok=True)
        engine = _engine(url)
        try:
            with engine.begin() as conn:
                tables = set(inspect(conn).get_table_names())
                cfg = _alembic_config(conn)
                before = _revision(conn)
                if before is None and "meta" in tables:
                    version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
                    if version != "1":
                        raise StateError(f"cannot upgrade {_describe(url)!r}: unknown schema version {version}")
                    command.stamp(cfg, "0001")
                    before = "0001"
                command.upgrade(cfg, "head")
        finally:
            engine.dispose()
        return before, HEAD_REVISION

    def backup(self, dest: str | Path) -> Path:
        """An online, consistent copy of a SQLite store (SQLite's backup API; writers may go on)."""
        if not self.is_sqlite:
            raise StateError("state backup copies SQLite stores; back PostgreSQL up with pg_dump")
        dest = Path(dest)
        if dest.exists():
            raise StateError(f"{str(dest)!r} exists; choose a new file")
        if not dest.parent.is_dir():
            raise StateError(f"folder {str(dest.parent)!r} does not exist; create it or choose another path")
        src = sqlite3.connect(self.path)
        try:
            out = sqlite3.connect(dest)
            try:
                src.backup(out)
            finally:
                out.close()
        except sqlite3.Error as exc:
            dest.unlink(missing_ok=True)   # never leave a half copy that looks like a backup
            raise StateError(f"backup to {str(dest)!r} failed: {exc}") from None
        finally:
            src.close()
        return dest

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- cursors -------------------------------------------------------------------------
    def get_cursor(self, source: str, conn: Connection | None = None) -> Position | None:
        def q(c: Connection) -> Position | None:
            row = c.execute(select(cursors).where(cursors.c.source == source)).mappings().first()
            if row is None:
                return None
            return Position(datetime.fromisoformat(row["changed_at"]), row["doc_id"])
        if conn is not None:
            return q(conn)
        with self.engine.connect() as c:
            return q(c)

    def set_cursor(self, conn: Connection, source: str, pos: Position, run_id: str | None,
                   institute: str = "default") -> None:
        values = {"changed_at": pos.changed_at.isoformat(), "doc_id": pos.doc_id,
                  "updated_at": _now(), "run_id": run_id, "institute": institute}
        stmt, params = _update_by(cursors, ("source",), values)
        if not conn.execute(stmt, {**params, "w_source": source}).rowcount:
            conn.execute(cursors.insert(), {"source": source, **values})

    # --- documents -----------------------------------------------------------------------
    def document(self, conn: Connection, source: str, doc_id: str) -> dict[str, Any] | None:
        stmt = _stmt("document", lambda: select(documents).where(
            documents.c.source == bindparam("source"), documents.c.doc_id == bindparam("doc_id")))
        row = conn.execute(stmt, {"source": source, "doc_id": doc_id}).mappings().first()
        return dict(row) if row else None

    def upsert_document(self, conn: Connection, source: str, doc_id: str, **values: Any) -> None:
        values["updated_at"] = _now()
        stmt, params = _update_by(documents, ("source", "doc_id"), values)
        if not conn.execute(stmt, {**params, "w_source": source, "w_doc_id": doc_id}).rowcount:
            values.setdefault("first_seen", values["updated_at"])
            conn.execute(documents.insert(), {"source": source, "doc_id": doc_id, **values})

    def seen(self, source: str, doc_id: str, version: str) -> bool:
        stmt = _stmt("seen", lambda: select(documents.c.version, documents.c.status).where(
            documents.c.source == bindparam("source"), documents.c.doc_id == bindparam("doc_id")))
        with self.engine.connect() as c:
            row = c.execute(stmt, {"source": source, "doc_id": doc_id}).first()
        return bool(row and row.version == version and row.status not in ("pending", "waiting"))

    # --- writes --------------------------------------------------------------------------
    def writes_for(self, conn: Connection, source: str, doc_id: str) -> list[dict[str, Any]]:
        stmt = _stmt("writes_for", lambda: select(writes).where(
            writes.c.source == bindparam("source"), writes.c.doc_id == bindparam("doc_id")).order_by(writes.c.id))
        rows = conn.execute(stmt, {"source": source, "doc_id": doc_id}).mappings().all()
        return [dict(r) for r in rows]

    def write_by_base_key(self, conn: Connection, base_key: str) -> dict[str, Any] | None:
        row = conn.execute(select(writes).where(writes.c.base_key == base_key)
                           .order_by(writes.c.revision.desc())).mappings().first()
        return dict(row) if row else None

    def insert_write(self, conn: Connection, **values: Any) -> int:
        """Record a write's intent. A key another source already used in this institute is a conflict."""
        from sqlalchemy.exc import IntegrityError

        from sync.errors import ConflictError
        values.setdefault("created_at", _now())
        values.setdefault("attempts", 0)
        try:
            with conn.begin_nested():
                return int(conn.execute(writes.insert(), values).inserted_primary_key[0])
        except IntegrityError:
            other = conn.execute(select(writes.c.source, writes.c.doc_id).where(
                writes.c.institute == values.get("institute", "default"),
                writes.c.idem_key == values["idem_key"])).first()
            raise ConflictError(
                "key_collision", f"Idempotency-Key {values['idem_key']!r} was already used in this institute by "
                f"{other.source if other else '?'}/{other.doc_id if other else '?'}; give the sources distinct "
                "key_prefix settings", definitive=False) from None

    def update_write(self, conn: Connection, write_id: int, **values: Any) -> None:
        stmt, params = _update_by(writes, ("id",), values)
        conn.execute(stmt, {**params, "w_id": write_id})

    # --- conflicts -----------------------------------------------------------------------
    def open_conflict(self, conn: Connection, *, source: str, doc_id: str, kind: str, detail: str,
                      institute: str = "default",
                      write_id: int | None = None, amount: str | None = None, currency: str | None = None,
                      customer: str | None = None, lms_receipt: str | None = None,
                      request: Any = None, response: Any = None, actor: str = "feesync") -> int:
        """Open a conflict, or refresh the open one of the same kind for this document."""
        now = _now()
        existing = conn.execute(select(conflicts.c.id, conflicts.c.attempts).where(
            conflicts.c.source == source, conflicts.c.doc_id == doc_id, conflicts.c.kind == kind,
            conflicts.c.status == "open")).first()
        payload = {
            "detail": detail, "write_id": write_id, "amount": amount, "currency": currency,
            "customer": customer, "lms_receipt": lms_receipt,
            "request": json.dumps(request, default=str) if request is not None else None,
            "response": json.dumps(response, default=str) if response is not None else None,
            "updated_at": now,
        }
        if existing:
            conn.execute(conflicts.update().where(conflicts.c.id == existing.id)
                         .values(attempts=existing.attempts + 1, **payload))
            self._history(conn, existing.id, "seen_again", actor, detail)
            return int(existing.id)
        cid = int(conn.execute(conflicts.insert().values(
            source=source, institute=institute, doc_id=doc_id, kind=kind, status="open", attempts=1, created_at=now,
            **payload)).inserted_primary_key[0])
        self._history(conn, cid, "opened", actor, detail)
        return cid

    def close_conflicts(self, conn: Connection, source: str, doc_id: str, *, status: str = "resolved",
                        actor: str = "feesync", note: str | None = None, kinds: set[str] | None = None) -> int:
        stmt = _stmt("open_conflict_ids", lambda: select(conflicts.c.id, conflicts.c.kind).where(
            conflicts.c.source == bindparam("source"), conflicts.c.doc_id == bindparam("doc_id"),
            conflicts.c.status == "open"))
        ids = [r.id for r in conn.execute(stmt, {"source": source, "doc_id": doc_id}) if not kinds or r.kind in kinds]
        for cid in ids:
            self.set_conflict_status(conn, cid, status, actor=actor, note=note)
        return len(ids)

    def set_conflict_status(self, conn: Connection, cid: int, status: str, *, actor: str,
                            note: str | None) -> None:
        now = _now()
        conn.execute(conflicts.update().where(conflicts.c.id == cid).values(
            status=status, updated_at=now, note=note,
            resolved_at=now if status != "open" else None,
            resolved_by=actor if status != "open" else None))
        self._history(conn, cid, status, actor, note)

    def add_history(self, conn: Connection, cid: int, action: str, actor: str, note: str | None) -> int:
        """One step of a conflict's life (opened, seen_again, retried, resolved, ignored ...)."""
        return int(conn.execute(conflict_history.insert().values(
            conflict_id=cid, at=_now(), action=action, actor=actor, note=note)).inserted_primary_key[0])

    _history = add_history

    def open_conflicts_for(self, conn: Connection, source: str, doc_id: str) -> list[dict[str, Any]]:
        stmt = _stmt("open_conflicts_for", lambda: select(conflicts).where(
            conflicts.c.source == bindparam("source"), conflicts.c.doc_id == bindparam("doc_id"),
            conflicts.c.status == "open"))
        rows = conn.execute(stmt, {"source": source, "doc_id": doc_id}).mappings().all()
        return [dict(r) for r in rows]

    # --- mappings ------------------------------------------------------------------------
    def get_mapping(self, conn: Connection, kind: str, source: str, erp_id: str) -> str | None:
        stmt = _stmt("get_mapping", lambda: select(mappings.c.lms_id).where(
            mappings.c.kind == bindparam("kind"), mappings.c.erp_id == bindparam("erp_id"),
            mappings.c.source.in_([bindparam("source"), "*"])).order_by(mappings.c.source.desc()))
        return conn.execute(stmt, {"kind": kind, "erp_id": erp_id, "source": source}).scalar()

    def set_mapping(self, conn: Connection, kind: str, source: str, erp_id: str, lms_id: str, origin: str) -> None:
        updated = conn.execute(mappings.update().where(
            mappings.c.kind == kind, mappings.c.source == source, mappings.c.erp_id == erp_id)
            .values(lms_id=lms_id, origin=origin)).rowcount
        if not updated:
            conn.execute(mappings.insert().values(kind=kind, source=source, erp_id=erp_id, lms_id=lms_id,
                                                  origin=origin, created_at=_now()))

    # --- memo ----------------------------------------------------------------------------
    def recall(self, source: str, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(memo.c.value).where(memo.c.source == source, memo.c.key == key)).scalar()

    def remember(self, source: str, key: str, value: str) -> None:
        with self.engine.begin() as c:
            if not c.execute(memo.update().where(memo.c.source == source, memo.c.key == key)
                             .values(value=value)).rowcount:
                c.execute(memo.insert().values(source=source, key=key, value=value))

    # --- runs ----------------------------------------------------------------------------
    def start_run(self, run_id: str, source: str, mode: str, institute: str = "default") -> int:
        with self.engine.begin() as c:
            return int(c.execute(runs.insert().values(run_id=run_id, source=source, institute=institute, mode=mode,
                                                      started_at=_now(), status="running")).inserted_primary_key[0])

    def finish_run(self, rid: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == rid).values(
                finished_at=_now(), status=status, counts=json.dumps(counts, default=str), error=error))

    # --- leases (replicas sharing sources) ----------------------------------------------------
    def db_now(self, conn: Connection) -> float:
        """The database's clock on PostgreSQL (one clock for every replica); the local clock on SQLite."""
        if self.is_sqlite:
            return time.time()
        return float(conn.execute(text("SELECT extract(epoch from clock_timestamp())")).scalar())

    def acquire_lease(self, source: str, owner: str, ttl: float) -> bool:
        """Take or renew `source`'s lease for `ttl` seconds; False when another live owner holds it."""
        from sqlalchemy.exc import IntegrityError
        try:
            with self.engine.begin() as conn:
                now = self.db_now(conn)
                got = conn.execute(leases.update().where(
                    leases.c.source == source,
                    (leases.c.owner == owner) | (leases.c.expires_at < now)).values(
                    owner=owner, expires_at=now + ttl)).rowcount
                if got:
                    return True
                if conn.execute(select(leases.c.source).where(leases.c.source == source)).first():
                    return False
                conn.execute(leases.insert().values(source=source, owner=owner, acquired_at=now, expires_at=now + ttl))
                return True
        except IntegrityError:
            return False

    def release_lease(self, source: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.update().where(leases.c.source == source, leases.c.owner == owner)
                         .values(expires_at=0.0))

    def lease_owners(self) -> dict[str, tuple[str, float]]:
        with self.engine.connect() as conn:
            return {r.source: (r.owner, r.expires_at) for r in conn.execute(select(leases))}
