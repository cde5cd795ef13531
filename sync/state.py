"""The SQLite state store: cursors, the write ledger, conflicts, learned mappings and run history.

One SQLite file in WAL mode. Every outcome and the cursor it allows are committed in one
transaction (sync-correctness rule 5). The schema carries a version; opening a store of
another version fails with a clear message. `state.db-schema` at the repository root is the
DDL this module creates (a test keeps them equal).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column, Connection, Index, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine,
    event, select, text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from sync.errors import StateError
from sync.events import Position
from sync.times import utcnow

SCHEMA_VERSION = 1

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
    UniqueConstraint("idem_key", name="uq_writes_idem_key"),
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
)
Index("ix_conflicts_status", conflicts.c.status, conflicts.c.kind)
Index("ix_conflicts_doc", conflicts.c.source, conflicts.c.doc_id)

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
)
Index("ix_runs_source", runs.c.source, runs.c.id)

memo = Table(
    "memo", metadata,
    Column("source", String, primary_key=True),
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)


def _now() -> str:
    return utcnow().isoformat()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop the
    # last commits. Set FEESYNC_SQLITE_SYNCHRONOUS=FULL where that matters more than speed.
    import os
    cur.execute(f"PRAGMA synchronous={os.environ.get('FEESYNC_SQLITE_SYNCHRONOUS', 'NORMAL')}")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def schema_ddl() -> str:
    """The DDL of the current schema, as SQLite stores it (what `state.db-schema` holds)."""
    eng = create_engine("sqlite://")
    metadata.create_all(eng)
    with eng.connect() as conn:
        rows = conn.execute(text(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name")).scalars().all()
    header = f"-- feesync state store schema, version {SCHEMA_VERSION}. Generated by `feesync state schema`.\n"
    return header + "".join(f"{r.strip()};\n\n" for r in rows).rstrip() + "\n"


class Store:
    """Thin access layer over the state database. Methods taking `conn` run inside a caller's transaction."""

    def __init__(self, engine: Engine, path: str) -> None:
        self.engine = engine
        self.path = path

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> Store:
        p = Path(path)
        exists = p.exists() and p.stat().st_size > 0
        if not exists and not create:
            raise StateError(f"state store {str(p)!r} does not exist")
        if not exists:
            p.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{p}", pool_size=8, max_overflow=8)
        event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine, str(p))
        try:
            with engine.begin() as conn:
                tables = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).scalars())
                if "meta" not in tables:
                    if tables - {"sqlite_sequence"}:
                        raise StateError(f"{str(p)!r} is not a feesync state store (unknown tables)")
                    metadata.create_all(conn)
                    conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    conn.execute(meta.insert().values(key="created_at", value=_now()))
                else:
                    version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
                    if version != str(SCHEMA_VERSION):
                        raise StateError(
                            f"state store {str(p)!r} has schema version {version}; this feesync needs "
                            f"version {SCHEMA_VERSION}. Use the matching feesync release, or migrate the store "
                            f"(feesync state upgrade) after a backup.")
        except OperationalError as exc:
            engine.dispose()
            raise StateError(f"cannot open state store {str(p)!r}: {exc.orig}") from None
        except StateError:
            engine.dispose()
            raise
        return store

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

    def set_cursor(self, conn: Connection, source: str, pos: Position, run_id: str | None) -> None:
        values = {"changed_at": pos.changed_at.isoformat(), "doc_id": pos.doc_id,
                  "updated_at": _now(), "run_id": run_id}
        updated = conn.execute(cursors.update().where(cursors.c.source == source).values(**values)).rowcount
        if not updated:
            conn.execute(cursors.insert().values(source=source, **values))

    # --- documents -----------------------------------------------------------------------
    def document(self, conn: Connection, source: str, doc_id: str) -> dict[str, Any] | None:
        row = conn.execute(select(documents).where(documents.c.source == source,
                                                   documents.c.doc_id == doc_id)).mappings().first()
        return dict(row) if row else None

    def upsert_document(self, conn: Connection, source: str, doc_id: str, **values: Any) -> None:
        values["updated_at"] = _now()
        updated = conn.execute(documents.update().where(documents.c.source == source,
                                                        documents.c.doc_id == doc_id).values(**values)).rowcount
        if not updated:
            values.setdefault("first_seen", values["updated_at"])
            conn.execute(documents.insert().values(source=source, doc_id=doc_id, **values))

    def seen(self, source: str, doc_id: str, version: str) -> bool:
        with self.engine.connect() as c:
            row = c.execute(select(documents.c.version, documents.c.status).where(
                documents.c.source == source, documents.c.doc_id == doc_id)).first()
        return bool(row and row.version == version and row.status not in ("pending", "waiting"))

    # --- writes --------------------------------------------------------------------------
    def writes_for(self, conn: Connection, source: str, doc_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(select(writes).where(writes.c.source == source, writes.c.doc_id == doc_id)
                            .order_by(writes.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def write_by_base_key(self, conn: Connection, base_key: str) -> dict[str, Any] | None:
        row = conn.execute(select(writes).where(writes.c.base_key == base_key)
                           .order_by(writes.c.revision.desc())).mappings().first()
        return dict(row) if row else None

    def insert_write(self, conn: Connection, **values: Any) -> int:
        values.setdefault("created_at", _now())
        values.setdefault("attempts", 0)
        return int(conn.execute(writes.insert().values(**values)).inserted_primary_key[0])

    def update_write(self, conn: Connection, write_id: int, **values: Any) -> None:
        conn.execute(writes.update().where(writes.c.id == write_id).values(**values))

    # --- conflicts -----------------------------------------------------------------------
    def open_conflict(self, conn: Connection, *, source: str, doc_id: str, kind: str, detail: str,
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
            source=source, doc_id=doc_id, kind=kind, status="open", attempts=1, created_at=now,
            **payload)).inserted_primary_key[0])
        self._history(conn, cid, "opened", actor, detail)
        return cid

    def close_conflicts(self, conn: Connection, source: str, doc_id: str, *, status: str = "resolved",
                        actor: str = "feesync", note: str | None = None, kinds: set[str] | None = None) -> int:
        q = select(conflicts.c.id).where(conflicts.c.source == source, conflicts.c.doc_id == doc_id,
                                        conflicts.c.status == "open")
        if kinds:
            q = q.where(conflicts.c.kind.in_(kinds))
        ids = list(conn.execute(q).scalars())
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

    def _history(self, conn: Connection, cid: int, action: str, actor: str, note: str | None) -> None:
        conn.execute(conflict_history.insert().values(conflict_id=cid, at=_now(), action=action,
                                                      actor=actor, note=note))

    def open_conflicts_for(self, conn: Connection, source: str, doc_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(select(conflicts).where(conflicts.c.source == source, conflicts.c.doc_id == doc_id,
                                                    conflicts.c.status == "open")).mappings().all()
        return [dict(r) for r in rows]

    # --- mappings ------------------------------------------------------------------------
    def get_mapping(self, conn: Connection, kind: str, source: str, erp_id: str) -> str | None:
        return conn.execute(select(mappings.c.lms_id).where(
            mappings.c.kind == kind, mappings.c.erp_id == erp_id,
            mappings.c.source.in_([source, "*"])).order_by(mappings.c.source.desc())).scalar()

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
    def start_run(self, run_id: str, source: str, mode: str) -> int:
        with self.engine.begin() as c:
            return int(c.execute(runs.insert().values(run_id=run_id, source=source, mode=mode,
                                                      started_at=_now(), status="running")).inserted_primary_key[0])

    def finish_run(self, rid: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == rid).values(
                finished_at=_now(), status=status, counts=json.dumps(counts, default=str), error=error))
