"""The engine: `run_once(source, now)` pulls, maps, pushes and records one pass of one source.

The promises it keeps (sync-correctness.md):
* the intent (key, body) is committed before a write is sent, the outcome after (rule 11);
* a document with an intent but no outcome is re-sent with its stored key and body;
* the cursor moves in the same transaction as the outcome of the documents it passes, is
  capped at a signpost fixed when the run starts (ERP clock minus lag) and never passes an
  undecided document (rules 4, 5);
* a pushed document seen again unchanged sends nothing; one changed or cancelled after its
  push becomes a conflict naming the LMS receipt (rule 14);
* documents from the LMS are skipped and counted (rule 15).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from sync import contract as C
from sync.config import Settings, SourceSettings
from sync.connector import Connector
from sync.errors import ConflictError, RetryLater, StopSource
from sync.events import FeeEvent, Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged, from_summary
from sync.lms import LmsClient
from sync.logs import get_logger, redact
from sync.mapping import PlannedWrite, Resolver
from sync.state import Store, documents, writes
from sync.times import utcnow, zone

log = get_logger(component="engine")

# Conflict kinds that can heal without a person (a mapping added, a plan created later, the LMS
# briefly failing). The others wait for someone.
SELF_HEALING = {"unknown_student", "no_active_plan", "plan_not_created", "mapping_stale"}


@dataclass
class RunResult:
    source: str
    run_id: str
    mode: str
    status: str = "ok"                    # ok | conflicts | deferred | stopped | failed
    counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    planned: list[dict[str, Any]] = field(default_factory=list)   # dry run: the writes it would make
    cursor: Position | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "run_id": self.run_id, "mode": self.mode, "status": self.status,
                "counts": dict(self.counts), "skipped": dict(self.skipped), "conflicts": dict(self.conflicts),
                "cursor": self.cursor.to_json() if self.cursor else None, "error": self.error}


class _Ctx:
    """The SourceContext lent to connectors."""

    def __init__(self, store: Store, source: str) -> None:
        self.store, self.source = store, source

    def seen(self, doc_id: str, version: str) -> bool:
        return self.store.seen(self.source, doc_id, version)

    def recall(self, key: str) -> str | None:
        return self.store.recall(self.source, key)

    def remember(self, key: str, value: str) -> None:
        self.store.remember(self.source, key, value)


def _fp(body_json: str) -> str:
    return hashlib.sha256(body_json.encode()).hexdigest()[:32]


class Engine:
    def __init__(self, settings: Settings, store: Store, lms: LmsClient, connectors: dict[str, Connector], *,
                 stop_event: threading.Event | None = None,
                 on_event: Callable[[str, FeeEvent], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.lms = lms
        self.connectors = connectors
        self.stop_event = stop_event or threading.Event()
        self.tz = zone(settings.lms.time_zone)
        self.on_event = on_event   # progress hook (backfill bar, tests' kill points)
        self._stopped_sources: dict[str, str] = {}

    # --- public ---------------------------------------------------------------------------------
    def run_once(self, source: str, now: datetime | None = None, *, mode: str = "live",
                 since: datetime | None = None, until: datetime | None = None, dry_run: bool = False,
                 cursor_name: str | None = None) -> RunResult:
        """One pass over one source. `now` is only recorded; the cursor signpost is the ERP's clock."""
        src = self.settings.sources[source]
        connector = self.connectors[source]
        run_id = uuid.uuid4().hex[:12]
        result = RunResult(source=source, run_id=run_id, mode="dry-run" if dry_run else mode)
        rlog = log.bind(source=source, run_id=run_id, mode=result.mode)
        rid = None if dry_run else self.store.start_run(run_id, source, result.mode)
        cursor_key = cursor_name or source
        resolver = Resolver(source=source, key_prefix=src.key_prefix, settings=src.mapping, store=self.store,
                            lms=self.lms, tz=self.tz, learn=not dry_run)
        try:
            if not dry_run and mode == "live":
                self._revisit_held(source, src, resolver, result, run_id)
            stored = self.store.get_cursor(cursor_key)
            start = self._start_position(stored, src, since)
            server_now = connector.server_now()
            signpost = Position(server_now - src.lag_td(), "") if server_now else None
            if until is not None and (signpost is None or until < signpost.changed_at):
                signpost = Position(until, "")
            rlog.info("run.started", cursor=stored.to_json() if stored else None,
                      read_from=start.to_json() if start else None,
                      signpost=signpost.to_json() if signpost else None)
            blocked = False          # an undecided document was met: the cursor stays behind it
            last_decided: Position | None = None
            for event in connector.fetch(start, _Ctx(self.store, source), until):
                if self.stop_event.is_set():
                    result.status = "stopped"
                    rlog.info("run.stopping", reason="shutdown requested")
                    break
                if self.on_event is not None:
                    self.on_event(source, event)
                advance = None
                if not blocked and (connector.ordered or False):
                    advance = event.position if signpost is None else min(event.position, signpost)
                    if stored is not None and advance <= stored:
                        advance = None
                try:
                    decision = self._handle(source, src, resolver, event, result, run_id,
                                            cursor_key if advance else None, advance, dry_run)
                except RetryLater as exc:
                    blocked = True
                    result.counts["pending"] += 1
                    result.status = "deferred"
                    result.error = redact(str(exc))
                    rlog.warning("push.deferred", doc_id=event.doc_id, error=result.error)
                    if not dry_run:
                        self._mark_pending(source, event)
                    break
                if decision == "pending":
                    blocked = True
                elif advance is not None:
                    last_decided = advance
            if last_decided is not None:
                result.cursor = last_decided
            if result.status == "ok" and result.conflicts:
                result.status = "conflicts"
        except StopSource as exc:
            result.status = "stopped"
            result.error = redact(str(exc))
            self._stopped_sources[source] = result.error
            rlog.error("source.stopped", system=exc.system, status=exc.status, error=result.error,
                       hint="check the API key / credentials and scopes; the cursor was kept")
        except RetryLater as exc:
            result.status = "deferred"
            result.error = redact(str(exc))
            rlog.warning("run.deferred", error=result.error)
        except Exception as exc:
            result.status = "failed"
            result.error = redact(f"{type(exc).__name__}: {exc}")
            rlog.error("run.failed", error=result.error)
            if rid is not None:
                self.store.finish_run(rid, result.status, result.as_dict()["counts"], result.error)
            raise
        if rid is not None:
            self.store.finish_run(rid, result.status, {**result.counts, "skipped": dict(result.skipped),
                                                       "conflicts": dict(result.conflicts)}, result.error)
        rlog.info("run.finished", status=result.status, **{f"n_{k}": v for k, v in result.counts.items()},
                  skipped=dict(result.skipped), conflicts=dict(result.conflicts),
                  lms_requests=dict(self.lms.requests))
        return result

    # --- cursor helpers -----------------------------------------------------------------------------
    def _start_position(self, stored: Position | None, src: SourceSettings, since: datetime | None) -> Position | None:
        if stored is not None:
            return Position(stored.changed_at - src.lookback_td(), "")
        if since is not None:
            return Position(since, "")
        return None

    def _set_cursor(self, conn: Connection, cursor_key: str | None, advance: Position | None, run_id: str) -> None:
        if cursor_key and advance is not None:
            self.store.set_cursor(conn, cursor_key, advance, run_id)

    def _mark_pending(self, source: str, event: FeeEvent) -> None:
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, event.doc_id)
            if doc is None or doc["status"] not in ("pushed", "skipped", "conflict", "held"):
                self._save_doc(conn, source, event, "pending", None)

    def _save_doc(self, conn: Connection, source: str, event: FeeEvent, status: str, reason: str | None) -> None:
        summary = event.summary()
        self.store.upsert_document(
            conn, source, event.doc_id, event_kind=event.kind, version=event.version,
            fingerprint=event.fingerprint(), status=status, reason=reason,
            changed_at=event.position.changed_at.isoformat(), summary=json.dumps(summary),
            amount=str(getattr(event, "amount", "") or "") or None, currency=getattr(event, "currency", None),
            customer=getattr(event, "customer", None))

    # --- one document ------------------------------------------------------------------------------
    def _handle(self, source: str, src: SourceSettings, resolver: Resolver, event: FeeEvent, result: RunResult,
                run_id: str, cursor_key: str | None, advance: Position | None, dry_run: bool) -> str:
        if isinstance(event, Unchanged):
            result.counts["unchanged"] += 1
            if not dry_run and cursor_key:
                with self.store.tx() as conn:
                    self._set_cursor(conn, cursor_key, advance, run_id)
            return "unchanged"
        if isinstance(event, Malformed):
            return self._conflict_doc(source, event, ConflictError("malformed_document", event.problem,
                                                                   definitive=False),
                                      result, run_id, cursor_key, advance, dry_run)
        if isinstance(event, PaymentCancelled):
            return self._cancelled(source, event, result, run_id, cursor_key, advance, dry_run)
        if isinstance(event, PaymentReceived):
            return self._receipt(source, resolver, event, result, run_id, cursor_key, advance, dry_run)
        result.counts["ignored"] += 1
        return "ignored"

    def _skip(self, source: str, event: FeeEvent, reason: str, result: RunResult, run_id: str,
              cursor_key: str | None, advance: Position | None, dry_run: bool) -> str:
        result.skipped[reason] += 1
        if not dry_run:
            with self.store.tx() as conn:
                self._save_doc(conn, source, event, "skipped", reason)
                self._set_cursor(conn, cursor_key, advance, run_id)
        return "skipped"

    def _conflict_doc(self, source: str, event: FeeEvent, exc: ConflictError, result: RunResult, run_id: str,
                      cursor_key: str | None, advance: Position | None, dry_run: bool, *,
                      write: dict[str, Any] | None = None, status: str = "conflict",
                      receipt: str | None = None) -> str:
        result.conflicts[exc.kind] += 1
        log.info("conflict.opened", source=source, doc_id=event.doc_id, kind=exc.kind, detail=exc.detail)
        if dry_run:
            return "conflict"
        with self.store.tx() as conn:
            self._save_doc(conn, source, event, status, exc.kind)
            self.store.open_conflict(
                conn, source=source, doc_id=event.doc_id, kind=exc.kind, detail=exc.detail,
                write_id=write["id"] if write else None,
                amount=str(getattr(event, "amount", "")) or None, currency=getattr(event, "currency", None),
                customer=getattr(event, "customer", None), lms_receipt=receipt,
                request=json.loads(write["body"]) if write else None, response=exc.response)
            self._set_cursor(conn, cursor_key, advance, run_id)
        return "conflict"

    def _cancelled(self, source: str, event: PaymentCancelled, result: RunResult, run_id: str,
                   cursor_key: str | None, advance: Position | None, dry_run: bool) -> str:
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, event.doc_id)
            done = [w for w in self.store.writes_for(conn, source, event.doc_id) if w["status"] in ("done", "intent")]
        if doc is not None and doc["status"] in ("pushed", "pending") and done:
            receipts = ", ".join(w["receipt_number"] or f"(key {w['idem_key']}, outcome unknown)" for w in done)
            exc = ConflictError("reversed_in_erp", f"cancelled in the ERP after it was pushed; reverse LMS "
                                f"receipt {receipts} by hand", definitive=False)
            result.conflicts[exc.kind] += 1
            if dry_run:
                return "conflict"
            with self.store.tx() as conn:
                self.store.upsert_document(conn, source, event.doc_id, version=event.version,
                                           reason="cancelled_in_erp")
                self.store.open_conflict(conn, source=source, doc_id=event.doc_id, kind=exc.kind, detail=exc.detail,
                                         write_id=done[0]["id"], amount=doc.get("amount"),
                                         currency=doc.get("currency"), customer=doc.get("customer"),
                                         lms_receipt=done[0]["receipt_number"])
                self._set_cursor(conn, cursor_key, advance, run_id)
            log.warning("conflict.opened", source=source, doc_id=event.doc_id, kind=exc.kind, receipts=receipts)
            return "conflict"
        # never pushed: nothing to undo; any open conflict about it no longer needs a person
        if not dry_run:
            with self.store.tx() as conn:
                self.store.close_conflicts(conn, source, event.doc_id, note="cancelled in the ERP before sync")
        return self._skip(source, event, "cancelled", result, run_id, cursor_key, advance, dry_run)

    def _receipt(self, source: str, resolver: Resolver, event: PaymentReceived, result: RunResult, run_id: str,
                 cursor_key: str | None, advance: Position | None, dry_run: bool, *, retry: bool = False) -> str:
        if event.origin_marker:
            return self._skip(source, event, "lms_originated", result, run_id, cursor_key, advance, dry_run)
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, event.doc_id)
            prior = self.store.writes_for(conn, source, event.doc_id)
        if doc is not None and doc["status"] == "pushed":
            return self._pushed_seen_again(source, event, doc, prior, result, run_id, cursor_key, advance, dry_run)
        if doc is not None and doc["status"] == "conflict" and not retry and any(
                w["status"] == "conflict" for w in prior):
            # The LMS definitively refused it before; a re-send needs a person or a mapping change (rule 12).
            if not dry_run:
                with self.store.tx() as conn:
                    self.store.upsert_document(conn, source, event.doc_id, version=event.version)
                    self._set_cursor(conn, cursor_key, advance, run_id)
            result.counts["still_in_conflict"] += 1
            return "conflict"
        if event.amended_from and not retry:
            held = self._hold_amendment(source, event, result, run_id, cursor_key, advance, dry_run)
            if held:
                return held
        pending_intents = [w for w in prior if w["status"] == "intent"]
        try:
            if pending_intents:
                planned = [self._planned_from_row(w) for w in pending_intents]   # rule 11: stored key and body
            else:
                with self.store.tx() as conn:
                    planned = resolver.receipt_writes(conn, event)
        except ConflictError as exc:
            return self._conflict_doc(source, event, exc, result, run_id, cursor_key, advance, dry_run)
        if dry_run:
            for w in planned:
                result.planned.append({"doc_id": event.doc_id, "op": w.op, "method": w.method, "path": w.path,
                                       "key": w.base_key, "body": w.body})
            result.counts["would_push"] += 1
            return "pushed"
        return self._push(source, event, planned, prior, result, run_id, cursor_key, advance, retry=retry)

    def _planned_from_row(self, w: dict[str, Any]) -> PlannedWrite:
        return PlannedWrite(op=w["op"], base_key=w["base_key"], method=w["method"], path=w["path"],
                            body=json.loads(w["body"]))

    def _push(self, source: str, event: PaymentReceived, planned: list[PlannedWrite], prior: list[dict[str, Any]],
              result: RunResult, run_id: str, cursor_key: str | None, advance: Position | None, *,
              retry: bool) -> str:
        by_key = {}
        for w in prior:
            by_key.setdefault(w["base_key"], []).append(w)
        for i, pw in enumerate(planned):
            rows = sorted(by_key.get(pw.base_key, []), key=lambda r: r["revision"])
            latest = rows[-1] if rows else None
            if latest is not None and latest["status"] == "done":
                continue
            if latest is not None and latest["status"] == "intent":
                wid, key, body_json = latest["id"], latest["idem_key"], latest["body"]
            else:
                revision = 1 if latest is None else latest["revision"] + 1
                key = pw.base_key if revision == 1 else f"{pw.base_key}~{revision}"
                body_json = pw.body_json()
                with self.store.tx() as conn:
                    if latest is not None:
                        self.store.update_write(conn, latest["id"], status="superseded")
                    self._save_doc(conn, source, event, "pending", None)
                    wid = self.store.insert_write(
                        conn, source=source, doc_id=event.doc_id, op=pw.op, base_key=pw.base_key, revision=revision,
                        idem_key=key, method=pw.method, path=pw.path, body=body_json, body_fingerprint=_fp(body_json),
                        status="intent")
            last = i == len(planned) - 1
            outcome = self._send_write(source, event, wid, key, pw.method, pw.path, body_json, result, run_id,
                                       cursor_key if last else None, advance if last else None, last)
            if outcome != "done":
                return outcome
        return "pushed"

    def _send_write(self, source: str, event: PaymentReceived, wid: int, key: str, method: str, path: str,
                    body_json: str, result: RunResult, run_id: str, cursor_key: str | None,
                    advance: Position | None, last: bool) -> str:
        body = json.loads(body_json)
        with self.store.tx() as conn:
            conn.execute(self._bump_attempts(wid))
        try:
            answer = self.lms.send(method, path, json_body=body, idem_key=key)
        except ConflictError as exc:
            with self.store.tx() as conn:
                self.store.update_write(conn, wid, status="conflict", last_error=exc.detail,
                                        lms_response=json.dumps(exc.response, default=str) if exc.response else None,
                                        decided_at=utcnow().isoformat())
            with self.store.tx() as conn:
                write = next(w for w in self.store.writes_for(conn, source, event.doc_id) if w["id"] == wid)
            return self._conflict_doc(source, event, exc, result, run_id, cursor_key, advance, False, write=write)
        except RetryLater as exc:
            with self.store.tx() as conn:
                self.store.update_write(conn, wid, last_error=redact(str(exc))[:500])
            raise
        except StopSource:
            raise
        payment = answer.body if isinstance(answer.body, dict) else {}
        with self.store.tx() as conn:
            self.store.update_write(conn, wid, status="done", lms_id=str(payment.get(C.PAY_ID, "")) or None,
                                    receipt_number=payment.get(C.PAY_RECEIPT_NUMBER),
                                    lms_response=json.dumps(payment, default=str)[:4000],
                                    decided_at=utcnow().isoformat(), last_error=None)
            result.counts["writes_done"] += 1
            if answer.replayed:
                result.counts["writes_replayed"] += 1
            if last:
                self._save_doc(conn, source, event, "pushed", None)
                self.store.close_conflicts(conn, source, event.doc_id, note="pushed after retry")
                self._set_cursor(conn, cursor_key, advance, run_id)
        if last:
            result.counts["pushed"] += 1
            log.info("push.succeeded", source=source, doc_id=event.doc_id, key=key,
                     receipt=payment.get(C.PAY_RECEIPT_NUMBER), replayed=answer.replayed)
        return "done"

    def _bump_attempts(self, wid: int) -> Any:
        return writes.update().where(writes.c.id == wid).values(attempts=writes.c.attempts + 1,
                                                                 sent_at=utcnow().isoformat())

    def _pushed_seen_again(self, source: str, event: PaymentReceived, doc: dict[str, Any],
                           prior: list[dict[str, Any]], result: RunResult, run_id: str, cursor_key: str | None,
                           advance: Position | None, dry_run: bool) -> str:
        if doc["fingerprint"] == event.fingerprint():
            result.counts["unchanged"] += 1
            if not dry_run:
                with self.store.tx() as conn:
                    self.store.upsert_document(conn, source, event.doc_id, version=event.version)
                    self._set_cursor(conn, cursor_key, advance, run_id)
            return "unchanged"
        receipts = ", ".join(w["receipt_number"] or "?" for w in prior if w["status"] == "done")
        exc = ConflictError("changed_after_sync", f"changed in the ERP after it was pushed (LMS receipt {receipts}); "
                            "correct the LMS payment by hand, then resolve", definitive=False)
        result.conflicts[exc.kind] += 1
        if dry_run:
            return "conflict"
        with self.store.tx() as conn:
            self.store.upsert_document(conn, source, event.doc_id, version=event.version)
            self.store.open_conflict(conn, source=source, doc_id=event.doc_id, kind=exc.kind, detail=exc.detail,
                                     amount=str(event.amount), currency=event.currency, customer=event.customer,
                                     lms_receipt=receipts, request=event.summary())
            self._set_cursor(conn, cursor_key, advance, run_id)
        return "conflict"

    def _hold_amendment(self, source: str, event: PaymentReceived, result: RunResult, run_id: str,
                        cursor_key: str | None, advance: Position | None, dry_run: bool) -> str | None:
        """An amendment of a pushed receipt waits until a person resolved the original's reversal."""
        with self.store.tx() as conn:
            original = self.store.document(conn, source, event.amended_from or "")
            if original is None or original["status"] != "pushed":
                return None
            open_orig = [c for c in self.store.open_conflicts_for(conn, source, event.amended_from or "")]
            orig_writes = self.store.writes_for(conn, source, event.amended_from or "")
        if original.get("reason") != "cancelled_in_erp" and not open_orig:
            return None
        if original.get("reason") == "cancelled_in_erp" and not open_orig:
            return None   # the reversal was resolved by a person: push the amendment
        receipts = ", ".join(w["receipt_number"] or "?" for w in orig_writes if w["status"] == "done")
        exc = ConflictError("amended_after_sync", f"amends {event.amended_from}, which was pushed as LMS receipt "
                            f"{receipts}; resolve the original's conflict first, then this is pushed",
                            definitive=False)
        self._conflict_doc(source, event, exc, result, run_id, cursor_key, advance, dry_run, status="held")
        return "held"

    def _revisit_held(self, source: str, src: SourceSettings, resolver: Resolver, result: RunResult,
                      run_id: str) -> None:
        """Held amendments whose original was resolved are pushed now (they may be far behind the cursor)."""
        with self.store.tx() as conn:
            held = conn.execute(select(documents).where(documents.c.source == source,
                                                        documents.c.status == "held")).mappings().all()
        for doc in held:
            event = from_summary(doc["event_kind"], json.loads(doc["summary"]))
            if not isinstance(event, PaymentReceived):
                continue
            with self.store.tx() as conn:
                blockers = self.store.open_conflicts_for(conn, source, event.amended_from or "")
            if blockers:
                continue
            with self.store.tx() as conn:
                self.store.close_conflicts(conn, source, event.doc_id, kinds={"amended_after_sync"},
                                           note="original resolved; amendment released")
                self.store.upsert_document(conn, source, event.doc_id, status="pending")
            self._receipt(source, resolver, event, result, run_id, None, None, False, retry=True)

    # --- retry of parked documents (conflicts retry, map) -----------------------------------------------
    def retry_document(self, source: str, doc_id: str) -> str:
        """Re-map and re-send one parked document from its stored event (new key revision if rule 12 allows)."""
        src = self.settings.sources[source]
        resolver = Resolver(source=source, key_prefix=src.key_prefix, settings=src.mapping, store=self.store,
                            lms=self.lms, tz=self.tz)
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, doc_id)
        if doc is None:
            raise LookupError(f"{source}/{doc_id} is not in the ledger")
        event = from_summary(doc["event_kind"], json.loads(doc["summary"]))
        result = RunResult(source=source, run_id=uuid.uuid4().hex[:12], mode="retry")
        if not isinstance(event, PaymentReceived):
            raise ValueError(f"{doc_id}: a {doc['event_kind']} cannot be retried")
        if doc["status"] == "held":
            with self.store.tx() as conn:
                if self.store.open_conflicts_for(conn, source, event.amended_from or ""):
                    return "held"
        return self._receipt(source, resolver, event, result, result.run_id, None, None, False, retry=True)
