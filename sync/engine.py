"""The engine: `run_once(source, now)` pulls, maps, pushes and records one pass of one source.

The promises it keeps (sync-correctness.md):
* the intent (key, body) is committed before a write is sent, the outcome after (rule 11);
* a document with an intent but no outcome is re-sent with its stored key and body; a plan
  creation with an uncertain outcome is first looked up by its marker (a lost answer never
  yields two plans, even when the LMS ignores the key);
* the cursor moves in the same transaction as the outcome of the documents it passes, is
  capped at a signpost fixed when the run starts (ERP clock minus lag) and never passes an
  undecided document (rules 4, 5);
* plan creation precedes payments against the plan: a receipt whose plan is not created yet
  waits (pending, not a conflict) and goes through in the same run once the plan exists;
* a pushed document seen again unchanged sends nothing; one changed or cancelled after its
  push becomes a conflict naming the LMS receipt (rule 14);
* documents from the LMS are skipped and counted (rule 15).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Connection, select

from sync import contract as C
from sync.config import Settings, SourceSettings
from sync.connector import Connector
from sync.errors import ConflictError, DeferredError, RetryLater, StopSource
from sync.events import (
    CreditNoteIssued, FeeEvent, Malformed, PaymentCancelled, PaymentReceived, PlanCancelled, PlanIssued, Position,
    Unchanged, from_summary,
)
from sync.lms import LmsClient
from sync.logs import get_logger, redact
from sync.mapping import PlannedWrite, Resolver, WaitForPlan
from sync.money import money_text
from sync.state import Store, conflicts, documents, writes
from sync.times import utcnow, zone

log = get_logger(component="engine")

# Conflict kinds that can heal without a person (a mapping added, a plan created later, the LMS
# briefly failing). The others wait for someone.
SELF_HEALING = {"unknown_student", "no_active_plan", "plan_not_created", "mapping_stale", "unknown_batch",
                "no_plan_for_invoice"}
# 409 answers that mean the goal is already reached for these operations
ALREADY_DONE = {"cancel_plan": {"plan_cancelled"}, "waive_installment": set()}
DECIDED = ("pushed", "skipped", "conflict", "held")
# after these answers a new key revision would risk recording money twice (rule 12): only a person acts
NEVER_REVISE = {"idempotency_key_reused", "lms_conflict", "unexpected_status"}
# conflicts that only a person closes: writing to the LMS never resolves them
KEEP_OPEN = {"reversed_in_erp", "changed_after_sync", "plan_changed_in_erp"}
CLOSED_BY_WRITE = {"unknown_student", "ambiguous_student", "no_active_plan", "ambiguous_plan", "currency_mismatch",
                   "fractional_amount", "invalid_amount", "malformed_document", "unknown_payment_method", "overpayment",
                   "plan_cancelled", "plan_completed", "installment_closed", "mapping_stale", "validation", "rejected",
                   "plan_not_created", "unknown_batch", "no_plan_for_invoice", "unallocated_remainder",
                   "over_allocated",
                   "schedule_mismatch", "key_collision", "internal_error", "amended_after_sync", "lms_conflict",
                   "unexpected_status"}


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
    would_open: list[dict[str, Any]] = field(default_factory=list)   # dry run: the conflicts it would open
    cursor: Position | None = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "run_id": self.run_id, "mode": self.mode, "status": self.status,
                "counts": dict(self.counts), "skipped": dict(self.skipped), "conflicts": dict(self.conflicts),
                "cursor": self.cursor.to_json() if self.cursor else None, "error": self.error,
                "seconds": round(self.seconds, 3)}


class _NeedsPerson(Exception):  # noqa: N818 - control flow inside _push
    def __init__(self, kind: str, write: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind, self.write = kind, write


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


@dataclass
class _Run:
    """Per-run state: where the cursor may go, who waits for which plan."""

    source: str
    src: SourceSettings
    resolver: Resolver
    result: RunResult
    run_id: str
    dry_run: bool
    cursor_key: str | None
    stored: Position | None
    signpost: Position | None
    ordered: bool
    undecided: set[str] = field(default_factory=set)
    waiting: dict[str, list[FeeEvent]] = field(default_factory=dict)
    last_cursor: Position | None = None
    # a dry run stores nothing: what it decided per document (status, reason), so later documents of the
    # same dry run see what a real run would have stored by then
    dry_outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def advance_for(self, event: FeeEvent) -> Position | None:
        """The cursor value this document's outcome may commit, or None (never past an undecided one)."""
        if self.dry_run or not self.cursor_key or not self.ordered or self.undecided:
            return None
        pos = event.position if self.signpost is None else min(event.position, self.signpost)
        if self.stored is not None and pos <= self.stored:
            return None
        if self.last_cursor is not None and pos <= self.last_cursor:
            return None
        return pos


def _fp(body_json: str) -> str:
    return hashlib.sha256(body_json.encode()).hexdigest()[:32]


def _amount_text(amount: Any) -> str | None:
    """A conflict's amount in one plain form ("2000", not the ERP's "2000.0")."""
    if amount is None:
        return None
    try:
        return money_text(Decimal(str(amount)))
    except ArithmeticError:
        return str(amount)


def _write_amount(write: dict[str, Any]) -> Decimal | None:
    """The amount one stored record-payment request carries (one part of a multi-reference receipt)."""
    try:
        value = json.loads(write["body"]).get(C.PAY_AMOUNT)
        return Decimal(str(value)) if value is not None and not isinstance(value, bool) else None
    except (ValueError, TypeError, AttributeError, ArithmeticError):
        return None


class Engine:
    def __init__(self, settings: Settings, store: Store, lms: LmsClient | dict[str, LmsClient],
                 connectors: dict[str, Connector], *, stop_event: threading.Event | None = None,
                 on_event: Callable[[str, FeeEvent], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.lms_clients = lms if isinstance(lms, dict) else {"default": lms}
        self.lms = next(iter(self.lms_clients.values()))   # the (first) institute's client
        self.connectors = connectors
        self.stop_event = stop_event or threading.Event()
        self.on_event = on_event   # progress hook (backfill bar, tests' kill points)
        # heartbeat(source) -> False when this replica lost the source's lease: stop before writing more
        self.heartbeat: Callable[[str], bool] | None = None

    def institute(self, source: str) -> str:
        return self.settings.sources[source].institute

    def lms_for(self, source: str) -> LmsClient:
        return self.lms_clients.get(self.institute(source)) or self.lms

    def _resolver(self, source: str, *, learn: bool = True) -> Resolver:
        src = self.settings.sources[source]
        connector = self.connectors.get(source)
        return Resolver(source=source, key_prefix=src.key_prefix, settings=src.mapping, store=self.store,
                        lms=self.lms_for(source), tz=zone(self.settings.lms_for(source).time_zone), learn=learn,
                        plans_from_invoices=bool(getattr(connector, "plans_from_invoices", False)))

    # --- public ---------------------------------------------------------------------------------
    def run_once(self, source: str, now: datetime | None = None, *, mode: str = "live",
                 since: datetime | None = None, until: datetime | None = None, dry_run: bool = False,
                 cursor_name: str | None = None) -> RunResult:
        """One pass over one source. `now` is only recorded; the cursor signpost is the ERP's clock."""
        started = time.monotonic()
        src = self.settings.sources[source]
        connector = self.connectors[source]
        run_id = uuid.uuid4().hex[:12]
        result = RunResult(source=source, run_id=run_id, mode="dry-run" if dry_run else mode)
        institute = self.institute(source)
        rlog = log.bind(institute=institute, source=source, run_id=run_id, mode=result.mode)
        # every event of this run (push.succeeded, conflict.opened, the connector's own) carries them too
        ctx_tokens = structlog.contextvars.bind_contextvars(institute=institute, run_id=run_id, mode=result.mode)
        lms_before = Counter(self.lms_for(source).requests)
        rid = None if dry_run else self.store.start_run(run_id, source, result.mode, institute=institute)
        cursor_key = cursor_name or source
        resolver = self._resolver(source, learn=not dry_run)
        if dry_run:
            from sync.dryrun import DryLms
            resolver.dry_lms = DryLms(resolver.plan)
        try:
            stored = self.store.get_cursor(cursor_key)
            start = self._start_position(stored, src, since)
            if not dry_run and mode == "live":
                self._revisit_held(source, resolver, result, run_id)
                self._revisit_pending(source, resolver, result, run_id, start)
            server_now = connector.server_now()
            signpost = Position(server_now - src.lag_td(), "") if server_now else None
            if until is not None and (signpost is None or until < signpost.changed_at):
                signpost = Position(until, "")
            run = _Run(source, src, resolver, result, run_id, dry_run, cursor_key, stored, signpost,
                       bool(getattr(connector, "ordered", False)))
            rlog.info("run.started", cursor=stored.to_json() if stored else None,
                      read_from=start.to_json() if start else None,
                      signpost=signpost.to_json() if signpost else None)
            for event in connector.fetch(start, _Ctx(self.store, source), until):
                if self.stop_event.is_set():
                    result.status = "stopped"
                    rlog.info("run.stopping", reason="shutdown requested")
                    break
                if self.on_event is not None:
                    self.on_event(source, event)
                if self.heartbeat is not None and not self.heartbeat(source):
                    result.status = "stopped"
                    result.error = "lease lost to another replica"
                    rlog.warning("lease.lost", reason="another replica holds this source now")
                    break
                try:
                    self._handle(run, event)
                except RetryLater as exc:
                    run.undecided.add(event.doc_id)
                    result.counts["pending"] += 1
                    result.status = "deferred"
                    result.error = redact(str(exc))
                    rlog.warning("push.deferred", doc_id=event.doc_id, error=result.error)
                    if not dry_run:
                        self._mark(source, event, "pending")
                    break
                except StopSource:
                    raise
                except Exception as exc:  # noqa: BLE001 - one poison document must not stop the source
                    if not self._poisoned(run, event, exc):
                        break
            for invoice, waiters in run.waiting.items():
                for ev in waiters:
                    result.counts["waiting_for_plan"] += 1
                    rlog.info("receipt.waiting", doc_id=ev.doc_id, invoice=invoice)
            result.cursor = run.last_cursor
            if result.status == "ok" and result.conflicts:
                result.status = "conflicts"
        except StopSource as exc:
            result.status = "stopped"
            result.error = redact(str(exc))
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
            structlog.contextvars.reset_contextvars(**ctx_tokens)
            if rid is not None:
                self.store.finish_run(rid, result.status, dict(result.counts), result.error)
            raise
        result.seconds = time.monotonic() - started
        if rid is not None:
            self.store.finish_run(rid, result.status, {**result.counts, "skipped": dict(result.skipped),
                                                       "conflicts": dict(result.conflicts),
                                                       "seconds": round(result.seconds, 3)}, result.error)
        sent = Counter(self.lms_for(source).requests)
        sent.subtract(lms_before)
        rlog.info("run.finished", status=result.status, seconds=round(result.seconds, 3),
                  **{f"n_{k}": v for k, v in result.counts.items()},
                  skipped=dict(result.skipped), conflicts=dict(result.conflicts),
                  lms_requests={k: v for k, v in sorted(sent.items()) if v > 0})   # during this run, by status
        structlog.contextvars.reset_contextvars(**ctx_tokens)
        return result

    # --- cursor and ledger helpers -----------------------------------------------------------------
    def _start_position(self, stored: Position | None, src: SourceSettings, since: datetime | None) -> Position | None:
        if stored is not None:
            return Position(stored.changed_at - src.lookback_td(), "")
        if since is not None:
            return Position(since, "")
        return None

    def _commit_cursor(self, conn: Connection, run: _Run, event: FeeEvent) -> None:
        pos = run.advance_for(event)
        if pos is not None and run.cursor_key:
            self.store.set_cursor(conn, run.cursor_key, pos, run.run_id, institute=self.institute(run.source))
            run.last_cursor = pos

    def _mark(self, source: str, event: FeeEvent, status: str) -> None:
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, event.doc_id)
            if doc is None or doc["status"] not in DECIDED:
                self._save_doc(conn, source, event, status, None)

    def _save_doc(self, conn: Connection, source: str, event: FeeEvent, status: str, reason: str | None) -> None:
        amount = getattr(event, "amount", None) if not isinstance(event, PlanIssued) else event.total - event.discount
        self.store.upsert_document(
            conn, source, event.doc_id, institute=self.institute(source), event_kind=event.kind, version=event.version,
            fingerprint=event.fingerprint(), status=status, reason=reason,
            changed_at=event.position.changed_at.isoformat(), summary=event.summary_json(),
            amount=str(amount) if amount is not None else None, currency=getattr(event, "currency", None),
            customer=getattr(event, "customer", None))

    def _poisoned(self, run: _Run, event: FeeEvent, exc: Exception) -> bool:
        """A bug or an input we did not foresee, met while handling one document. With nothing sent for it,
        it becomes an `internal_error` conflict naming the error and the run goes on; with a write in
        flight it stays pending (re-sent with its stored key and body) and the run stops."""
        error = redact(f"{type(exc).__name__}: {exc}")[:400]
        log.error("document.failed", source=run.source, doc_id=event.doc_id, error=error)
        run.result.counts["document_errors"] += 1
        if run.dry_run:
            return True
        with self.store.tx() as conn:
            in_flight = [w for w in self.store.writes_for(conn, run.source, event.doc_id) if w["status"] == "intent"]
        if in_flight:
            run.undecided.add(event.doc_id)
            run.result.status = "deferred"
            run.result.error = error
            self._mark(run.source, event, "pending")
            return False
        self._conflict(run, event, ConflictError(
            "internal_error", f"feesync could not handle this document ({error}); nothing was sent. Report it with "
            "`feesync conflicts show`; retry after an upgrade", definitive=False))
        return True

    # --- one document ------------------------------------------------------------------------------
    def _handle(self, run: _Run, event: FeeEvent, *, retry: bool = False) -> str:
        if isinstance(event, Unchanged):
            run.result.counts["unchanged"] += 1
            if not run.dry_run:
                with self.store.tx() as conn:
                    self._commit_cursor(conn, run, event)
            return "unchanged"
        if isinstance(event, Malformed):
            return self._conflict(run, event, ConflictError("malformed_document", event.problem, definitive=False))
        if isinstance(event, PaymentCancelled):
            return self._payment_cancelled(run, event)
        if isinstance(event, PaymentReceived):
            return self._receipt(run, event, retry=retry)
        if isinstance(event, PlanIssued):
            return self._plan_issued(run, event, retry=retry)
        if isinstance(event, PlanCancelled):
            return self._plan_cancelled(run, event)
        if isinstance(event, CreditNoteIssued):
            return self._credit_note(run, event, retry=retry)
        run.result.counts["ignored"] += 1
        return "ignored"

    def _decided(self, run: _Run, event: FeeEvent) -> None:
        run.undecided.discard(event.doc_id)

    def _skip(self, run: _Run, event: FeeEvent, reason: str) -> str:
        run.result.skipped[reason] += 1
        self._decided(run, event)
        if run.dry_run:
            run.dry_outcomes[event.doc_id] = ("skipped", reason)
        else:
            with self.store.tx() as conn:
                self._save_doc(conn, run.source, event, "skipped", reason)
                self.store.close_conflicts(conn, run.source, event.doc_id, note=f"skipped: {reason}")
                self._commit_cursor(conn, run, event)
        return "skipped"

    def _conflict(self, run: _Run, event: FeeEvent, exc: ConflictError, *, write: dict[str, Any] | None = None,
                  status: str = "conflict", receipt: str | None = None, keep_status: bool = False,
                  money: tuple[str | None, str | None] | None = None) -> str:
        run.result.conflicts[exc.kind] += 1
        self._decided(run, event)
        log.info("conflict.would_open" if run.dry_run else "conflict.opened", source=run.source,
                 doc_id=event.doc_id, kind=exc.kind, detail=exc.detail)
        if run.dry_run:
            run.dry_outcomes[event.doc_id] = (status, exc.kind)
            run.result.would_open.append({"doc_id": event.doc_id, "kind": exc.kind, "detail": exc.detail,
                                          "amount": _amount_text(getattr(event, "amount", None)),
                                          "currency": getattr(event, "currency", None)})
            return "conflict"
        amount = getattr(event, "amount", None)
        if isinstance(event, PlanIssued):
            amount = event.total - event.discount
        currency = getattr(event, "currency", None)
        if money is not None:   # e.g. a cancellation: the money is the pushed receipt's, from the ledger
            amount, currency = money
        elif write is not None and write.get("op") == "record_payment":
            part = _write_amount(write)   # this part only, of a receipt written in several
            amount = part if part is not None else amount
        customer = getattr(event, "customer", None)
        with self.store.tx() as conn:
            if customer is None:   # a cancellation names no customer: the document it cancels does
                known = self.store.document(conn, run.source, event.doc_id)
                customer = known["customer"] if known else None
            if keep_status:
                self.store.upsert_document(conn, run.source, event.doc_id, version=event.version)
            else:
                self._save_doc(conn, run.source, event, status, exc.kind)
            detail = exc.detail
            if exc.extra.get("remaining_balance") is not None:
                detail += f" (remaining balance {exc.extra['remaining_balance']})"
            self.store.open_conflict(
                conn, source=run.source, institute=self.institute(run.source), doc_id=event.doc_id, kind=exc.kind,
                detail=detail,
                write_id=write["id"] if write else None,
                amount=_amount_text(amount), currency=currency,
                customer=customer, lms_receipt=receipt,
                request=json.loads(write["body"]) if write else event.summary(), response=exc.response)
            self._commit_cursor(conn, run, event)
        return "conflict"

    def _wait(self, run: _Run, event: FeeEvent, invoice: str) -> str:
        """Park a document until its invoice's plan exists; past the limit it becomes a conflict."""
        with self.store.tx() as conn:
            doc = self.store.document(conn, run.source, event.doc_id)
            inv = self.store.document(conn, run.source, invoice)
        if run.dry_run and invoice in run.dry_outcomes:
            status, reason = run.dry_outcomes[invoice]
            inv = {"status": status, "reason": reason}
        if inv is not None and inv["status"] in ("conflict", "skipped"):
            why = f"its conflict ({inv['reason']})" if inv["status"] == "conflict" else f"it was {inv['reason']}"
            return self._conflict(run, event, ConflictError(
                "plan_not_created", f"invoice {invoice} has no LMS plan: see {why}; this receipt is retried once "
                "the plan exists", definitive=False))
        first_seen = datetime.fromisoformat(doc["first_seen"]) if doc else utcnow()
        if run.cursor_key is None or utcnow() - first_seen > run.src.plan_wait_td():
            return self._conflict(run, event, ConflictError(
                "plan_not_created", f"waited since {first_seen:%Y-%m-%d %H:%M} UTC for the LMS plan of invoice "
                f"{invoice}; check that invoice's conflict or map it", definitive=False))
        run.undecided.add(event.doc_id)
        run.waiting.setdefault(invoice, []).append(event)
        if not run.dry_run:
            with self.store.tx() as conn:
                self._save_doc(conn, run.source, event, "waiting", f"plan of {invoice}")
        return "pending"

    def _release_failed(self, run: _Run, invoice: str, why: str) -> None:
        """The plan of `invoice` will not be created in this run: its waiters become conflicts now."""
        if run.waiting.get(invoice) and not run.dry_run:
            with self.store.tx() as conn:
                ids = [c["id"] for c in self.store.open_conflicts_for(conn, run.source, invoice)]
            if ids:   # name the invoice's own conflict, so a person goes straight to the cause
                why = why.replace("see its conflict", "see its conflict " + ", ".join(f"#{i}" for i in ids))
        for ev in run.waiting.pop(invoice, []):
            self._conflict(run, ev, ConflictError(
                "plan_not_created", f"invoice {invoice} has no LMS plan: {why}; this receipt is retried once the "
                "plan exists", definitive=False))

    def _release(self, run: _Run, invoice: str) -> None:
        """The plan of `invoice` exists now: the documents waiting for it go through in this run."""
        for ev in run.waiting.pop(invoice, []):
            run.undecided.discard(ev.doc_id)
            self._handle(run, ev, retry=False)

    # --- receipts ------------------------------------------------------------------------------------
    def _payment_cancelled(self, run: _Run, event: PaymentCancelled) -> str:
        with self.store.tx() as conn:
            doc = self.store.document(conn, run.source, event.doc_id)
            done = [w for w in self.store.writes_for(conn, run.source, event.doc_id) if w["status"] in ("done", "intent")]
        if done:   # any write done or in flight: money may be in the LMS, whatever the document's status
            receipts = ", ".join(w["receipt_number"] or f"(key {w['idem_key']}, outcome unknown)" for w in done)
            exc = ConflictError("reversed_in_erp", f"cancelled in the ERP after it was pushed; reverse LMS "
                                f"receipt {receipts} by hand, then resolve", definitive=False)
            # the money at stake is what the LMS holds for it: the parts written, not the whole receipt
            parts = [_write_amount(w) for w in done if w["op"] == "record_payment"]
            held = sum(parts, Decimal(0)) if parts and None not in parts else (doc["amount"] if doc else None)
            if not run.dry_run:
                with self.store.tx() as conn:
                    # the ERP changed it at this time: a windowed reconcile still sees it if it is deleted next
                    self.store.upsert_document(conn, run.source, event.doc_id, reason="cancelled_in_erp",
                                               changed_at=event.position.changed_at.isoformat())
                    # parts never written (an overpaid plan, a missing mapping, ...) now have nothing to write
                    others = {c["kind"] for c in self.store.open_conflicts_for(conn, run.source, event.doc_id)
                              if c["kind"] not in KEEP_OPEN}
                    if others:
                        self.store.close_conflicts(conn, run.source, event.doc_id, kinds=others,
                                                   note="cancelled in the ERP: nothing more to write for it")
            return self._conflict(run, event, exc, receipt=done[0]["receipt_number"], keep_status=True,
                                  write=done[0], money=(str(held) if held is not None else None,
                                                        doc["currency"] if doc else None))
        return self._skip(run, event, "cancelled")

    def _receipt(self, run: _Run, event: PaymentReceived, *, retry: bool = False) -> str:
        if event.origin_marker:
            return self._skip(run, event, "lms_originated")
        with self.store.tx() as conn:
            doc = self.store.document(conn, run.source, event.doc_id)
            prior = self.store.writes_for(conn, run.source, event.doc_id)
            pushed = doc is not None and doc["status"] == "pushed"
            # a conflict is only ever opened together with its document's row (`_conflict`), so a document
            # never seen has none
            blocking = [] if pushed or doc is None else [
                c["kind"] for c in self.store.open_conflicts_for(conn, run.source, event.doc_id)
                if c["kind"] in KEEP_OPEN]
        if pushed:
            return self._pushed_seen_again(run, event, doc, prior, "changed_after_sync")
        if blocking:
            # cancelled or changed in the ERP while (or after) money went to the LMS: a person decides (rule 14)
            run.result.counts["awaiting_person"] += 1
            self._decided(run, event)
            return "conflict"
        if doc is not None and doc["status"] == "conflict" and not retry and any(
                w["status"] == "conflict" for w in prior):
            # The LMS definitively refused it; a re-send needs a person or a mapping change (rule 12).
            run.result.counts["still_in_conflict"] += 1
            self._decided(run, event)
            if not run.dry_run:
                with self.store.tx() as conn:
                    self.store.upsert_document(conn, run.source, event.doc_id, version=event.version)
                    self._commit_cursor(conn, run, event)
            return "conflict"
        if event.amended_from and not retry:
            held = self._hold_amendment(run, event)
            if held:
                return held
        try:
            with self.store.tx() as conn:
                planned = run.resolver.receipt_writes(conn, event)
        except WaitForPlan as wait:
            if not self._intents(prior):
                return self._wait(run, event, wait.invoice_id)
            planned = []
        except ConflictError as exc:
            if not self._intents(prior):
                return self._conflict(run, event, exc)
            planned = []
        return self._push(run, event, self._with_stored_intents(planned, prior), prior)

    @staticmethod
    def _intents(prior: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [w for w in prior if w["status"] == "intent"]

    def _with_stored_intents(self, planned: list[PlannedWrite], prior: list[dict[str, Any]]) -> list[PlannedWrite]:
        """The writes to make now: those planned, plus every stored intent they do not cover. An intent is
        re-sent with its stored key and body (rule 11) even if the document changed or no longer maps."""
        keys = {p.base_key for p in planned}
        extra = [self._planned_from_row(w) for w in self._intents(prior) if w["base_key"] not in keys]
        return extra + planned

    def _planned_from_row(self, w: dict[str, Any]) -> PlannedWrite:
        return PlannedWrite(op=w["op"], base_key=w["base_key"], method=w["method"], path=w["path"],
                            body=json.loads(w["body"]))

    def _push(self, run: _Run, event: FeeEvent, planned: list[PlannedWrite], prior: list[dict[str, Any]],
              *, final_status: str = "pushed") -> str:
        """Send each planned write once (intent, send, outcome); the last outcome decides the document."""
        if run.dry_run:
            for w in planned:   # in order, as the real run sends them; a refusal stops the document there
                try:
                    if run.resolver.dry_lms is not None:
                        run.resolver.dry_lms.apply(w)
                except ConflictError as exc:
                    if exc.kind not in ALREADY_DONE.get(w.op, set()):   # as the real run reads that answer
                        return self._conflict(run, event, exc)
                run.result.planned.append({"doc_id": event.doc_id, "op": w.op, "method": w.method, "path": w.path,
                                           "key": w.base_key, "body": w.body})
                run.result.counts[f"would_{w.op}"] += 1
            self._decided(run, event)
            return "pushed"
        by_key: dict[str, list[dict[str, Any]]] = {}
        for w in prior:
            by_key.setdefault(w["base_key"], []).append(w)
        # Phase 1: the intent of EVERY write of this document is committed before the first is sent, so a
        # crash or an outage between two writes can never leave a later one unrecorded (rule 11).
        steps: list[tuple[PlannedWrite, int | None, str, str, bool, bool]] = []
        counted_ids: set[int] = set()
        first_fresh = True
        try:
            with self.store.tx() as conn:
                for pw in planned:
                    rows = sorted(by_key.get(pw.base_key, []), key=lambda r: r["revision"])
                    latest = rows[-1] if rows else None
                    if latest is not None and latest["status"] == "done":
                        steps.append((pw, None, latest["idem_key"], latest["body"], False, True))
                        continue
                    if latest is not None and latest["status"] == "conflict":
                        kind = self._conflict_kind_of_write(latest["id"])
                        if kind in NEVER_REVISE:
                            raise _NeedsPerson(kind, latest)
                    if latest is not None and latest["status"] == "intent":
                        steps.append((pw, latest["id"], latest["idem_key"], latest["body"],
                                      bool(latest["attempts"]), False))
                        continue
                    revision = 1 if latest is None else latest["revision"] + 1
                    key = pw.base_key if revision == 1 else f"{pw.base_key}~{revision}"
                    body_json = pw.body_json()
                    if latest is not None:
                        self.store.update_write(conn, latest["id"], status="superseded")
                    counted = first_fresh and not steps   # sent right after this commit: count it now
                    wid = self.store.insert_write(
                        conn, source=run.source, institute=self.institute(run.source), doc_id=event.doc_id,
                        op=pw.op, base_key=pw.base_key, revision=revision, idem_key=key, method=pw.method,
                        path=pw.path, body=body_json, body_fingerprint=_fp(body_json), status="intent",
                        attempts=1 if counted else 0, sent_at=utcnow().isoformat() if counted else None)
                    first_fresh = False
                    if counted:
                        counted_ids.add(wid)
                    steps.append((pw, wid, key, body_json, False, False))
                doc = self.store.document(conn, run.source, event.doc_id)
                if doc is None or doc["status"] not in ("pushed",):
                    self._save_doc(conn, run.source, event, "pending", None)
        except ConflictError as exc:   # the key is another source's: nothing was sent
            return self._conflict(run, event, exc)
        except _NeedsPerson as np:
            return self._conflict(run, event, ConflictError(
                np.kind, f"the LMS answered {np.write['last_error'] or np.kind} for key {np.write['idem_key']}; "
                "a new key could record the money twice, so this needs a person", definitive=False), write=np.write)
        # Phase 2: send them one by one; the last outcome decides the document.
        for i, (pw, wid, key, body_json, uncertain, already) in enumerate(steps):
            last = i == len(steps) - 1
            if already:
                if last:
                    self._finish(run, event, final_status)
                continue
            assert wid is not None
            counted = wid in counted_ids
            try:
                payload, replayed = self._send(run, event, pw, wid, key, body_json, uncertain=uncertain,
                                               counted=counted)
            except ConflictError as exc:
                if exc.kind in ALREADY_DONE.get(pw.op, set()):
                    payload, replayed = {"already": exc.detail}, False
                else:
                    with self.store.tx() as conn:
                        self.store.update_write(conn, wid, status="conflict", last_error=exc.detail,
                                                lms_response=json.dumps(exc.response, default=str)
                                                if exc.response is not None else None,
                                                decided_at=utcnow().isoformat())
                        write = next(w for w in self.store.writes_for(conn, run.source, event.doc_id) if w["id"] == wid)
                    return self._conflict(run, event, exc, write=write)
            except RetryLater as exc:
                with self.store.tx() as conn:
                    self.store.update_write(conn, wid, last_error=redact(str(exc))[:500])
                raise
            with self.store.tx() as conn:
                self.store.update_write(conn, wid, status="done", lms_id=str(payload.get("id", "")) or None,
                                        receipt_number=payload.get(C.PAY_RECEIPT_NUMBER),
                                        lms_response=json.dumps(payload, default=str)[:8000],
                                        decided_at=utcnow().isoformat(), last_error=None)
                run.result.counts["writes_done"] += 1
                run.result.counts[f"{pw.op}_done"] += 1
                if replayed:
                    run.result.counts["writes_replayed"] += 1
                if pw.op == "create_plan":
                    run.resolver.learn_plan(conn, event.doc_id, payload, "created")
                if last:
                    self._finish(run, event, final_status, conn=conn)
            log.info("push.succeeded", source=run.source, doc_id=event.doc_id, op=pw.op, key=key,
                     receipt=payload.get(C.PAY_RECEIPT_NUMBER), lms_id=payload.get("id"), replayed=replayed)
        if not planned:
            self._finish(run, event, final_status)
        return "pushed"

    def _finish(self, run: _Run, event: FeeEvent, status: str, conn: Connection | None = None) -> None:
        def go(c: Connection) -> None:
            nonlocal status
            latest: dict[str, dict[str, Any]] = {}
            for w in self.store.writes_for(c, run.source, event.doc_id):
                if w["status"] != "superseded":
                    latest[w["base_key"]] = w
            if status == "pushed" and any(w["status"] == "conflict" for w in latest.values()):
                status = "conflict"   # another write of this document stands refused: its conflict stays open
                self.store.upsert_document(c, run.source, event.doc_id, version=event.version, status=status)
                self._commit_cursor(c, run, event)
                return
            self._save_doc(c, run.source, event, status, None)
            self.store.close_conflicts(c, run.source, event.doc_id, note="written to the LMS",
                                       kinds=CLOSED_BY_WRITE)
            self._commit_cursor(c, run, event)
        self._decided(run, event)
        if conn is not None:
            go(conn)
        else:
            with self.store.tx() as c:
                go(c)
        if status == "pushed" and isinstance(event, PaymentReceived):
            run.result.counts["pushed"] += 1   # receipts; plans, cancellations and waivers count as <op>_done

    def _send(self, run: _Run, event: FeeEvent, pw: PlannedWrite, wid: int, key: str, body_json: str, *,
              uncertain: bool, counted: bool = False) -> tuple[dict[str, Any], bool]:
        body = json.loads(body_json)
        if pw.op != "create_plan":
            if not counted:
                with self.store.tx() as conn:
                    conn.execute(self._bump_attempts(wid))
            answer = self.lms_for(run.source).send(pw.method, pw.path, json_body=body, idem_key=key)
            return (answer.body if isinstance(answer.body, dict) else {}), answer.replayed
        # create plan: never trust the key alone. After any uncertain outcome, look the plan up first.
        student = str(body.get(C.PLAN_STUDENT_ID))
        attempts = self.settings.lms_for(run.source).max_attempts
        last_exc: RetryLater | None = None
        for attempt in range(attempts):
            if uncertain or attempt > 0:
                found = run.resolver.find_created_plan(student, event.doc_id)
                if found is not None:
                    log.info("plan.recognised", source=run.source, doc_id=event.doc_id, plan_id=found.get("id"))
                    return found, True
            if attempt > 0:
                self.stop_event.wait(min(8.0, 0.2 * 2 ** attempt))
                if self.stop_event.is_set():
                    break
            if attempt > 0 or not counted:
                with self.store.tx() as conn:
                    conn.execute(self._bump_attempts(wid))
            try:
                answer = self.lms_for(run.source).send(pw.method, pw.path, json_body=body, idem_key=key,
                                                       max_attempts=1)
                return (answer.body if isinstance(answer.body, dict) else {}), answer.replayed
            except RetryLater as exc:
                last_exc = exc
                uncertain = True
        raise DeferredError(f"create plan for {event.doc_id}: outcome still unknown after {attempts} attempts",
                            last=last_exc)

    def _conflict_kind_of_write(self, wid: int) -> str | None:
        with self.store.engine.connect() as conn:
            return conn.execute(select(conflicts.c.kind).where(conflicts.c.write_id == wid)
                                .order_by(conflicts.c.id.desc())).scalar()

    def _bump_attempts(self, wid: int) -> Any:
        return writes.update().where(writes.c.id == wid).values(attempts=writes.c.attempts + 1,
                                                                 sent_at=utcnow().isoformat())

    def _pushed_seen_again(self, run: _Run, event: FeeEvent, doc: dict[str, Any], prior: list[dict[str, Any]],
                           kind: str) -> str:
        if doc["fingerprint"] == event.fingerprint():
            run.result.counts["unchanged"] += 1
            self._decided(run, event)
            if not run.dry_run:
                with self.store.tx() as conn:
                    self.store.upsert_document(conn, run.source, event.doc_id, version=event.version)
                    self._commit_cursor(conn, run, event)
            return "unchanged"
        refs = ", ".join(w["receipt_number"] or w["lms_id"] or "?" for w in prior if w["status"] == "done")
        what = "LMS receipt" if isinstance(event, PaymentReceived) else "LMS plan"
        exc = ConflictError(kind, f"changed in the ERP after it was pushed ({what} {refs}); correct the LMS by hand, "
                            "then resolve", definitive=False)
        return self._conflict(run, event, exc, receipt=refs, keep_status=True)

    def _hold_amendment(self, run: _Run, event: PaymentReceived) -> str | None:
        """An amendment waits while any ancestor in its amended_from chain holds money in the LMS (written or in
        flight) that nobody has resolved yet: its reversal conflict is open, or its outcome is still unknown."""
        ancestor = event.amended_from
        seen: set[str] = set()
        with self.store.tx() as conn:
            while ancestor and ancestor not in seen:
                seen.add(ancestor)
                doc = self.store.document(conn, run.source, ancestor)
                if doc is None:
                    return None
                ws = [w for w in self.store.writes_for(conn, run.source, ancestor) if w["status"] in ("done", "intent")]
                if ws:
                    open_orig = self.store.open_conflicts_for(conn, run.source, ancestor)
                    unknown = any(w["status"] == "intent" for w in ws)
                    if not open_orig and not unknown:
                        return None   # the ancestor's reversal was resolved by a person: push the amendment
                    receipts = ", ".join(w["receipt_number"] or f"(key {w['idem_key']}, outcome unknown)" for w in ws)
                    break
                try:
                    ancestor = json.loads(doc["summary"]).get("amended_from")
                except (TypeError, ValueError):
                    return None
            else:
                return None
        exc = ConflictError("amended_after_sync", f"amends {event.amended_from}; {ancestor} was written to the LMS "
                            f"as {receipts}; resolve that reversal first, then this is pushed", definitive=False)
        self._conflict(run, event, exc, status="held")
        return "held"

    def _revisit_held(self, source: str, resolver: Resolver, result: RunResult, run_id: str) -> None:
        """Held amendments whose original was resolved are pushed now (they may be far behind the cursor)."""
        with self.store.tx() as conn:
            held = conn.execute(select(documents).where(documents.c.source == source,
                                                        documents.c.status == "held")).mappings().all()
        run = _Run(source, self.settings.sources[source], resolver, result, run_id, False, None, None, None, False)
        for doc in held:
            event = from_summary(doc["event_kind"], json.loads(doc["summary"]))
            if not isinstance(event, PaymentReceived):
                continue
            probe = RunResult(source=source, run_id=run_id, mode="probe")
            if self._hold_amendment(_Run(source, self.settings.sources[source], resolver, probe, run_id, True, None,
                                         None, None, False), event):
                continue   # still waiting (a dry probe: nothing written)
            with self.store.tx() as conn:
                self.store.close_conflicts(conn, source, event.doc_id, kinds={"amended_after_sync"},
                                           note="original resolved; amendment released")
                self.store.upsert_document(conn, source, event.doc_id, status="pending")
            self._receipt(run, event, retry=True)

    def _revisit_pending(self, source: str, resolver: Resolver, result: RunResult, run_id: str,
                         start: Position | None) -> None:
        """Documents left pending behind the read window (e.g. a manual retry that met an LMS outage) are
        re-sent from their stored intents, so nothing stays undecided where the poll no longer looks."""
        if start is None:
            return
        with self.store.tx() as conn:
            rows = conn.execute(select(documents).where(
                documents.c.source == source, documents.c.status == "pending",
                documents.c.changed_at < start.changed_at.isoformat(),
                # a receipt the ERP cancelled is never sent again, not even a write left in flight
                documents.c.reason.is_(None) | (documents.c.reason != "cancelled_in_erp"))).mappings().all()
        run = _Run(source, self.settings.sources[source], resolver, result, run_id, False, None, None, None, False)
        for doc in rows:
            try:
                event = from_summary(doc["event_kind"], json.loads(doc["summary"]))
            except (ValueError, KeyError):
                continue
            self._handle(run, event, retry=True)

    # --- plans, cancellations, credit notes ----------------------------------------------------------
    def _plan_issued(self, run: _Run, event: PlanIssued, *, retry: bool = False) -> str:
        if event.lms_plan_id:
            # the LMS created this invoice: map it to that plan, never create it again
            try:
                with self.store.tx() as conn:
                    run.resolver.plan_for_invoice(conn, event.doc_id, event.lms_plan_id)   # validates the id
            except ConflictError as exc:
                outcome = self._conflict(run, event, exc)
                self._release_failed(run, event.doc_id, "its LMS plan id is invalid")
                return outcome
            if not run.dry_run:
                with self.store.tx() as conn:
                    self.store.set_mapping(conn, "invoice_plan", run.source, event.doc_id, event.lms_plan_id, "lms")
            result = self._skip(run, event, "lms_created_plan")
            self._release(run, event.doc_id)
            return result
        with self.store.tx() as conn:
            doc = self.store.document(conn, run.source, event.doc_id)
            prior = self.store.writes_for(conn, run.source, event.doc_id)
            mapped = run.resolver.plan_for_invoice(conn, event.doc_id, None) if not prior else None
        if doc is not None and doc["status"] == "pushed":
            return self._pushed_seen_again(run, event, doc, prior, "plan_changed_in_erp")
        if mapped and mapped not in run.resolver.dry_plans.values():
            # a person (or the configuration) mapped this invoice to an existing plan: never create another
            result = self._skip(run, event, "mapped_to_existing_plan")
            self._release(run, event.doc_id)
            return result
        if doc is not None and doc["status"] == "conflict" and not retry and any(
                w["status"] == "conflict" for w in prior):
            run.result.counts["still_in_conflict"] += 1
            self._decided(run, event)
            return "conflict"
        try:
            if self._intents(prior):
                planned = [self._planned_from_row(w) for w in self._intents(prior)]   # one plan per invoice
            else:
                with self.store.tx() as conn:
                    planned = [run.resolver.plan_write(conn, event)]
        except ConflictError as exc:
            outcome = self._conflict(run, event, exc)
            self._release_failed(run, event.doc_id, f"see its conflict ({exc.kind})")
            return outcome
        outcome = self._push(run, event, planned, prior)
        if outcome != "pushed":
            self._release_failed(run, event.doc_id, "see its conflict")
        if run.dry_run:
            run.resolver.dry_plan(event, planned[0].body)
        if outcome == "pushed":
            self._release(run, event.doc_id)
            if not run.dry_run and not run.undecided:
                with self.store.tx() as conn:   # the receipts released behind it are decided now
                    self._commit_cursor(conn, run, event)
        return outcome

    def _plan_cancelled(self, run: _Run, event: PlanCancelled) -> str:
        with self.store.tx() as conn:
            planned = run.resolver.cancel_write(conn, event)
            prior = self.store.writes_for(conn, run.source, event.doc_id)
        if planned is None:
            self._release_failed(run, event.doc_id, "the invoice was cancelled in the ERP")
            return self._skip(run, event, "cancelled_invoice_without_plan")
        prior_cancel = [w for w in prior if w["op"] == "cancel_plan"]
        return self._push(run, event, [planned], prior_cancel, final_status="pushed")

    def _credit_note(self, run: _Run, event: CreditNoteIssued, *, retry: bool = False) -> str:
        with self.store.tx() as conn:
            doc = self.store.document(conn, run.source, event.doc_id)
            prior = self.store.writes_for(conn, run.source, event.doc_id)
        if doc is not None and doc["status"] in ("pushed",) or (doc is not None and doc["status"] == "conflict"
                                                                 and not retry and prior):
            return self._pushed_seen_again(run, event, doc, prior, "changed_after_sync") \
                if doc["status"] == "pushed" else "conflict"
        remainder = Decimal(0)
        try:
            if self._intents(prior):   # the waivers were chosen before: send exactly those (rule 11)
                planned = [self._planned_from_row(w) for w in self._intents(prior)]
            else:
                with self.store.tx() as conn:
                    planned, remainder = run.resolver.waive_writes(conn, event)
        except WaitForPlan as wait:
            return self._wait(run, event, wait.invoice_id)
        except ConflictError as exc:
            return self._conflict(run, event, exc)
        if remainder > 0 and not planned:
            return self._conflict(run, event, ConflictError(
                "partial_credit_note", f"credit note of {money_text(event.amount)} {event.currency} covers no whole unpaid "
                f"installment of {event.against_invoice}; waive or adjust by hand", definitive=False))
        outcome = self._push(run, event, planned, prior)
        if remainder > 0 and outcome == "pushed":
            self._conflict(run, event, ConflictError(
                "partial_credit_note", f"credit note waived {len(planned)} installment(s); {money_text(remainder)} "
                f"{event.currency} covers no further whole installment; adjust by hand", definitive=False),
                keep_status=True)
        return outcome

    # --- retry of parked documents (conflicts retry, map) -----------------------------------------------
    def retry_document(self, source: str, doc_id: str) -> str:
        """Re-map and re-send one parked document from its stored event (new key revision if rule 12 allows)."""
        resolver = self._resolver(source)
        with self.store.tx() as conn:
            doc = self.store.document(conn, source, doc_id)
        if doc is None:
            raise LookupError(f"{source}/{doc_id} is not in the ledger")
        if doc["event_kind"] == "Malformed":
            raise ValueError("the ERP document itself is malformed; correct it in the ERP (or the file) and the "
                             "corrected version is read on the next pass; resolve or ignore this one")
        if doc["reason"] == "cancelled_in_erp":   # the stored event is the receipt as it was before that
            raise ValueError("the ERP cancelled this receipt after part of it was pushed: nothing more is "
                             "written for it; reverse what the LMS holds by hand and resolve its reversed_in_erp "
                             "conflict")
        event = from_summary(doc["event_kind"], json.loads(doc["summary"]))
        result = RunResult(source=source, run_id=uuid.uuid4().hex[:12], mode="retry")
        if doc["status"] == "held" and isinstance(event, PaymentReceived):
            probe = RunResult(source=source, run_id=result.run_id, mode="probe")
            if self._hold_amendment(_Run(source, self.settings.sources[source], resolver, probe, result.run_id, True,
                                         None, None, None, False), event):
                return "held"
        run = _Run(source, self.settings.sources[source], resolver, result, result.run_id, False, None, None, None,
                   False)
        return self._handle(run, event, retry=True)
