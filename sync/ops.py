"""Operator queries and actions behind the CLI, the report and the status page.

Everything a finance or ops person does with conflicts lives here, once: list (filters, sorting,
totals with the money at stake), show (the ERP document, what was sent, what the LMS said, what to
do next), resolve / ignore (with a note), retry (one or in bulk; the engine chooses the key
revision, sync-correctness rule 12), map (a manual customer -> student or invoice -> plan mapping,
then retry exactly what it unblocks), self-healing retries on a schedule with a cap, and export.

Conflict lifecycle: ``open`` -> ``resolved`` (a successful retry, automatically, or a person with a
note) or ``ignored`` (a person, with a note). Every step is a row in ``conflict_history``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, func, select

from sync.engine import CLOSED_BY_WRITE, KEEP_OPEN, NEVER_REVISE, SELF_HEALING
from sync.errors import ConflictError, RetryLater, StopSource
from sync.money import money_text
from sync.money import plain as _plain
from sync.state import (
    Store,
    conflict_history,
    conflicts,
    cursors,
    documents,
    mappings,
    runs,
    writes,
)
from sync.times import parse_duration, parse_iso, utcnow

NEXT_STEPS = {
    "unknown_student": "Add the customer -> student mapping (or fix the e-mail in the ERP or LMS), then retry.",
    "ambiguous_student": "Several LMS students share this e-mail; map the customer to one student, then retry.",
    "no_active_plan": "Create (or re-activate) the student's fee plan in the LMS, or map the invoice, then retry.",
    "ambiguous_plan": "The student has several active plans; map the ERP invoice to the right plan, then retry.",
    "currency_mismatch": "The receipt's currency differs from the plan's; correct it in the ERP or record it by hand.",
    "fractional_amount": "The LMS holds whole units only; correct the ERP amount or record the payment by hand.",
    "invalid_amount": "The amount is zero or negative; correct the ERP document.",
    "malformed_document": "The ERP document is missing or has invalid fields (see detail); correct it in the ERP.",
    "unknown_payment_method": "Add the ERP mode of payment to mapping.payment_methods, then retry.",
    "overpayment": "The LMS plan's balance is smaller than the receipt; check the plan, then retry or record by hand.",
    "plan_cancelled": "The LMS plan is cancelled; map the receipt to the right plan, or refund it, then resolve.",
    "plan_completed": "The LMS plan is already fully paid; check for a duplicate receipt in the ERP.",
    "installment_closed": "The installment is already paid or waived; check the ERP allocation, then retry.",
    "mapping_stale": "The mapped LMS plan/installment/student is gone; fix the mapping, then retry.",
    "plan_not_created": "The LMS plan for this invoice does not exist yet; it is retried once the plan exists.",
    "reversed_in_erp": "The receipt was cancelled in the ERP after it reached the LMS: reverse the LMS receipt "
                       "named in the detail by hand, then resolve this conflict.",
    "changed_after_sync": "The receipt changed in the ERP after it reached the LMS: correct the LMS payment by "
                          "hand, then resolve.",
    "amended_after_sync": "An amendment waits for its original's reversal to be resolved; it is pushed after that.",
    "unallocated_remainder": "Allocate the whole receipt in the ERP (or split it), then retry.",
    "over_allocated": "The receipt's references allocate more than it received: correct the allocation in the "
                      "ERP (the corrected version is read on the next pass), then retry.",
    "validation": "The LMS rejected the request body (see detail); correct the mapping or the ERP document, then retry.",
    "rejected": "The LMS rejected the request (see detail); fix the cause, then retry.",
    "idempotency_key_reused": "The LMS holds another request under this key; inspect both and resolve by hand.",
    "unknown_batch": "The invoice's batch has no LMS batch: add it to mapping.batches (or set default_batch_id) in "
                     "the configuration, or map the invoice to an existing LMS plan; it is retried by itself.",
    "schedule_mismatch": "The invoice's payment schedule does not add up to its total; correct it in the ERP.",
    "no_plan_for_invoice": "The invoice has no LMS plan yet; map the invoice to its plan, or wait: it is retried "
                           "by itself once the plan exists.",
    "plan_changed_in_erp": "The invoice changed in the ERP after its LMS plan was created: correct the LMS plan by "
                           "hand, then resolve.",
    "partial_credit_note": "The credit note does not cover whole unpaid installments; waive or adjust the "
                           "installments in the LMS by hand, then resolve.",
    "lms_conflict": "The LMS refused it as a conflict (see detail); check the plan in the LMS, then retry or resolve.",
    "unexpected_status": "The LMS answered something feesync does not expect (see detail); check, then retry.",
}
DEFAULT_NEXT_STEP = "Read the detail, fix the cause, then retry or resolve."
KNOWN_KINDS = frozenset(NEXT_STEPS) | CLOSED_BY_WRITE | KEEP_OPEN | NEVER_REVISE

# Kinds a retry cannot fix: the LMS already holds money for the document (rule 12/14: a new key
# revision could record it twice), so a person corrects the LMS by hand and resolves.
NOT_RETRYABLE = {
    "reversed_in_erp": "the LMS already holds this receipt; reverse it by hand, then resolve",
    "changed_after_sync": "the LMS already holds this receipt; correct it by hand, then resolve",
    "plan_changed_in_erp": "the LMS already holds this plan; correct it by hand, then resolve",
    "idempotency_key_reused": "the LMS holds another request under this key; a new key could record the "
                              "money twice; inspect both, then resolve",
}
# Kinds whose next step is done by hand in the LMS: `resolve` is the command (a retry fails the same way).
BY_HAND_ONLY = {"partial_credit_note"}
# Kinds fixed either in the ERP/LMS and retried, or recorded by hand and resolved: both commands.
BY_HAND_TOO = {"currency_mismatch", "fractional_amount", "overpayment", "plan_cancelled", "lms_conflict"}
# Kinds a customer -> student mapping can unblock (everything that depends on which student it is).
STUDENT_KINDS = {"unknown_student", "ambiguous_student", "no_active_plan", "ambiguous_plan", "currency_mismatch",
                 "mapping_stale", "plan_cancelled", "plan_completed", "overpayment", "installment_closed",
                 "validation", "rejected", "plan_not_created"}
KIND_CUSTOMER, KIND_INVOICE = "customer_student", "invoice_plan"
SORTS = ("id", "amount", "age")
STATUSES = ("open", "resolved", "ignored", "all")
AGE_BUCKETS = (("under 1 day", timedelta(days=1)), ("1-7 days", timedelta(days=7)),
               ("7-30 days", timedelta(days=30)), ("over 30 days", None))
HEAL_ACTOR = "feesync:heal"

_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def source_lock(source: str) -> threading.RLock:
    """One lock per source in this process: a retry never runs beside that source's sync pass."""
    with _locks_guard:
        return _locks.setdefault(source, threading.RLock())


# --- small helpers -------------------------------------------------------------------------------
def to_amount(text: Any) -> Decimal | None:
    if text in (None, ""):
        return None
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None




def money_display(value: Decimal | str | None, currency: str | None = None) -> str:
    """`12,500` / `12,500.5 PKR` for people."""
    amount = to_amount(value) if not isinstance(value, Decimal) else value
    if amount is None:
        return "-"
    text = f"{_plain(amount):,f}"
    return f"{text} {currency}".strip() if currency else text


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def _ts(value: str | None) -> datetime | None:
    return parse_iso(value) if value else None


def _duration(value: str | timedelta | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return parse_duration(value)


def _history(conn: Connection, cid: int, action: str, actor: str, note: str | None) -> int:
    return int(conn.execute(conflict_history.insert().values(
        conflict_id=cid, at=utcnow().isoformat(), action=action, actor=actor, note=note)).inserted_primary_key[0])


# --- status ------------------------------------------------------------------------------------------
def status(store: Store, configured: list[str], *, settings: Any = None, now: datetime | None = None,
           last_runs: int = 5) -> dict[str, Any]:
    """Per source: cursor and its lag, the last runs, the last successful run, documents, open conflicts."""
    now = now or utcnow()
    with store.engine.connect() as c:
        names = set(configured) | set(c.execute(select(documents.c.source).distinct()).scalars())
        out = []
        for name in sorted(names):
            cur = c.execute(select(cursors).where(cursors.c.source == name)).mappings().first()
            recent = c.execute(select(runs).where(runs.c.source == name).order_by(runs.c.id.desc())
                               .limit(max(1, last_runs))).mappings().all()
            ok = c.execute(select(func.max(runs.c.finished_at)).where(
                runs.c.source == name, runs.c.status.in_(("ok", "conflicts")),
                runs.c.mode == "live")).scalar()
            docs = dict(c.execute(select(documents.c.status, func.count()).where(documents.c.source == name)
                                  .group_by(documents.c.status)).all())
            open_c = c.execute(select(func.count()).select_from(conflicts).where(
                conflicts.c.source == name, conflicts.c.status == "open")).scalar()
            run_rows = [({k: r[k] for k in ("run_id", "mode", "started_at", "finished_at", "status", "error")}
                         | {"counts": json.loads(r["counts"] or "{}"), "seconds": _run_seconds(r)}) for r in recent]
            src = settings.sources.get(name) if settings is not None else None
            out.append({
                "source": name,
                "configured": name in configured,
                "enabled": bool(src.enabled) if src is not None else None,
                "cursor": {"changed_at": cur["changed_at"], "doc_id": cur["doc_id"],
                           "updated_at": cur["updated_at"]} if cur else None,
                "lag_seconds": round((now - parse_iso(cur["changed_at"])).total_seconds(), 1) if cur else None,
                "last_run": run_rows[0] if run_rows else None,
                "last_runs": run_rows,
                "last_success": ok,
                "max_stale": (src.max_stale if src is not None else None),
                "documents": docs, "open_conflicts": open_c,
            })
    return {"sources": out, "generated_at": now.isoformat()}


def _run_seconds(r: Any) -> float | None:
    if not r["finished_at"]:
        return None
    return round((parse_iso(r["finished_at"]) - parse_iso(r["started_at"])).total_seconds(), 3)


# --- listing -----------------------------------------------------------------------------------------
def _students_map(conn: Connection, student: str) -> set[str]:
    """ERP customers mapped (manually or learned) to an LMS student id."""
    return set(conn.execute(select(mappings.c.erp_id).where(mappings.c.kind == KIND_CUSTOMER,
                                                            mappings.c.lms_id == student)).scalars())


def list_conflicts(store: Store, *, status: str = "open", kind: str | Iterable[str] | None = None,
                   source: str | None = None, student: str | None = None,
                   older_than: str | timedelta | None = None, newer_than: str | timedelta | None = None,
                   sort: str = "id", limit: int | None = None, ids: Iterable[int] | None = None,
                   now: datetime | None = None) -> list[dict[str, Any]]:
    """Conflicts with filters. `student` matches the ERP customer (case-insensitive substring) or an LMS
    student id the customer is mapped to; ages are since the conflict was opened."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    now = now or utcnow()
    q = select(conflicts).order_by(conflicts.c.id)
    if status != "all":
        q = q.where(conflicts.c.status == status)
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    if kinds:
        q = q.where(conflicts.c.kind.in_(kinds))
    if source:
        q = q.where(conflicts.c.source == source)
    if ids is not None:
        q = q.where(conflicts.c.id.in_(list(ids)))
    older, newer = _duration(older_than), _duration(newer_than)
    if older is not None:
        q = q.where(conflicts.c.created_at <= (now - older).isoformat())
    if newer is not None:
        q = q.where(conflicts.c.created_at >= (now - newer).isoformat())
    with store.engine.connect() as c:
        rows = [dict(r) for r in c.execute(q).mappings()]
        if student:
            mapped = _students_map(c, student)
            needle = student.strip().lower()
            rows = [r for r in rows if (r["customer"] or "") in mapped or needle in (r["customer"] or "").lower()]
        heal_counts = _heal_counts(c, [r["id"] for r in rows])
        doc_kinds = _document_kinds(c, rows)
    for r in rows:
        _decorate(r, now, heal_counts.get(r["id"], 0))
        r["document_kind"] = DOCUMENT_KINDS.get(doc_kinds.get((r["source"], r["doc_id"]), ""), "other")
    if sort == "amount":
        rows.sort(key=lambda r: (to_amount(r["amount"]) is None, -(to_amount(r["amount"]) or 0), r["id"]))
    elif sort == "age":
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
    return rows[:limit] if limit else rows


# What an open conflict's amount is: money the ERP received (a receipt: "money at stake"), an invoice's
# total (billed, not received) or a credit note's amount. Counted apart, so the headline is money received.
DOCUMENT_KINDS = {"PaymentReceived": "receipt", "PaymentCancelled": "receipt", "PlanIssued": "invoice",
                  "PlanCancelled": "invoice", "CreditNoteIssued": "credit_note"}


def _document_kinds(conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for source in {r["source"] for r in rows}:
        ids = sorted({r["doc_id"] for r in rows if r["source"] == source})
        for i in range(0, len(ids), 500):
            q = select(documents.c.doc_id, documents.c.event_kind).where(
                documents.c.source == source, documents.c.doc_id.in_(ids[i:i + 500]))
            out.update({(source, d): k for d, k in conn.execute(q)})
    return out


def _heal_counts(conn: Connection, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    q = (select(conflict_history.c.conflict_id, func.count()).where(
        conflict_history.c.action == "auto_retry").group_by(conflict_history.c.conflict_id))
    return {cid: n for cid, n in conn.execute(q).all()}


def _decorate(r: dict[str, Any], now: datetime, heals: int = 0) -> None:
    seconds = (now - parse_iso(r["created_at"])).total_seconds()
    r["age"] = _age(seconds)
    r["age_seconds"] = int(seconds)
    r["self_healing"] = r["kind"] in SELF_HEALING
    r["auto_retries"] = heals
    r["retryable"] = r["kind"] not in NOT_RETRYABLE
    r["next_step"] = NEXT_STEPS.get(r["kind"], DEFAULT_NEXT_STEP)
    amount = to_amount(r.get("amount"))
    if amount is not None:
        r["amount"] = money_text(amount)   # one plain form ("20000", "18749.5") whatever the ERP sent
    for k in ("request", "response"):
        if isinstance(r.get(k), str):
            try:
                r[k] = json.loads(r[k])
            except ValueError:
                pass


def totals(rows: list[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    """Counts by kind / source / status, the money at stake by currency (exact Decimal sums as
    strings), age buckets, and the oldest and largest items."""
    now = now or utcnow()
    money: dict[str, Decimal] = defaultdict(Decimal)
    invoiced: dict[str, Decimal] = defaultdict(Decimal)
    credited: dict[str, Decimal] = defaultdict(Decimal)
    by_kind_money: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    by_source_money: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    ages: Counter[str] = Counter()
    no_amount = 0
    for r in rows:
        amount = to_amount(r.get("amount"))
        cur = r.get("currency") or "?"
        if amount is None:
            no_amount += 1
        else:
            doc_kind = r.get("document_kind", "receipt")
            {"invoice": invoiced, "credit_note": credited}.get(doc_kind, money)[cur] += amount
            by_kind_money[r["kind"]][cur] += amount
            by_source_money[r["source"]][cur] += amount
        age = timedelta(seconds=r.get("age_seconds", (now - parse_iso(r["created_at"])).total_seconds()))
        for label, limit in AGE_BUCKETS:
            if limit is None or age < limit:
                ages[label] += 1
                break

    def _m(d: dict[str, Decimal]) -> dict[str, str]:
        return {k: money_text(v) for k, v in sorted(d.items())}

    def _brief(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r.get(k) for k in ("id", "source", "doc_id", "kind", "amount", "currency", "customer", "age",
                                      "created_at")}

    with_amount = [r for r in rows if to_amount(r.get("amount")) is not None]
    return {
        "total": len(rows),
        "by_kind": dict(sorted(Counter(r["kind"] for r in rows).items())),
        "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "by_status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "money_at_stake": _m(money),            # receipts: money the ERP received that the LMS lacks
        "invoiced_in_conflict": _m(invoiced),   # invoice totals (fee plans not created or not mapped)
        "credited_in_conflict": _m(credited),   # credit notes not applied
        "amount_by_kind": {k: _m(v) for k, v in sorted(by_kind_money.items())},
        "amount_by_source": {k: _m(v) for k, v in sorted(by_source_money.items())},
        "without_amount": no_amount,
        "ages": {label: ages.get(label, 0) for label, _ in AGE_BUCKETS},
        "oldest": [_brief(r) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))[:5]],
        "largest": [_brief(r) for r in sorted(with_amount, key=lambda r: (-to_amount(r["amount"]), r["id"]))[:5]],
    }


def conflicts_payload(rows: list[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    return {"conflicts": rows, **totals(rows, now)}


# --- one conflict --------------------------------------------------------------------------------------
def show_conflict(store: Store, cid: int, *, settings: Any = None, command: str = "feesync") -> dict[str, Any] | None:
    """The conflict, its ERP document, every write sent for it with the LMS answer, its history, and
    what to do next in plain words (with the exact commands)."""
    rows = list_conflicts(store, status="all", ids=[cid])
    if not rows:
        return None
    row = rows[0]
    with store.engine.connect() as c:
        row["history"] = [dict(h) for h in c.execute(select(conflict_history).where(
            conflict_history.c.conflict_id == cid).order_by(conflict_history.c.id)).mappings()]
        doc = c.execute(select(documents).where(documents.c.source == row["source"],
                                                documents.c.doc_id == row["doc_id"])).mappings().first()
        sent = c.execute(select(writes).where(writes.c.source == row["source"], writes.c.doc_id == row["doc_id"])
                         .order_by(writes.c.id)).mappings().all()
    row["document"] = json.loads(doc["summary"]) if doc else None
    row["document_status"] = doc["status"] if doc else None
    row["writes"] = [{
        "id": w["id"], "key": w["idem_key"], "revision": w["revision"], "method": w["method"], "path": w["path"],
        "body": json.loads(w["body"]), "status": w["status"], "attempts": w["attempts"],
        "receipt_number": w["receipt_number"], "lms_answer": _maybe_json(w["lms_response"]),
        "last_error": w["last_error"], "sent_at": w["sent_at"], "decided_at": w["decided_at"]} for w in sent]
    guide = guidance(row, settings, command=command)
    row["next_step"] = guide["text"]
    row["commands"] = guide["commands"]
    return row


def _maybe_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _invoices_of(document: dict[str, Any] | None) -> list[str]:
    if not document:
        return []
    return [r["invoice_id"] for r in document.get("references") or [] if r.get("invoice_id")]


def command_prefix(settings: Any = None, *, absolute: bool = False) -> str:
    """How the operator runs feesync, so printed commands paste as they are: the program as it was
    started when `feesync` on PATH is not that program (e.g. `.venv/bin/feesync`), plus `--config FILE`
    when the settings came from a file (absolute for reports, which are read from anywhere)."""
    program = "feesync"
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "feesync":
        on_path = shutil.which("feesync")
        if on_path is None or os.path.realpath(on_path) != os.path.realpath(argv0):
            program = os.path.abspath(argv0) if absolute else argv0
    config = getattr(settings, "config_file", None)
    if config:
        return f"{program} --config {shlex.quote(os.path.abspath(config) if absolute else config)}"
    return program


def guidance(row: dict[str, Any], settings: Any = None, *, command: str = "feesync") -> dict[str, Any]:
    """What to do next, in plain words, with the commands that do it (`command`: how the operator runs
    feesync, e.g. with their --config, so the commands can be pasted as printed)."""
    kind, src, cid = row["kind"], row["source"], row["id"]
    customer = row.get("customer") or "?"
    text = NEXT_STEPS.get(kind, DEFAULT_NEXT_STEP)
    commands: list[str] = []
    invoices = _invoices_of(row.get("document"))
    if row["status"] != "open":
        return {"text": f"Nothing to do: this conflict is {row['status']}"
                        + (f" ({row['note']})." if row.get("note") else "."), "commands": []}
    if kind in ("unknown_student", "ambiguous_student"):
        text = (f"The LMS has no single student for ERP customer \"{customer}\". Find the student in the LMS "
                f"and map the customer to them; feesync then retries this customer's receipts.")
        commands.append(f"{command} conflicts map --source {src} --customer \"{customer}\" --student LMS_STUDENT_ID")
    elif kind in ("ambiguous_plan", "no_active_plan", "mapping_stale", "plan_cancelled", "plan_not_created"):
        if invoices:
            commands.append(f"{command} conflicts map --source {src} --invoice \"{invoices[0]}\" --plan LMS_PLAN_ID")
        commands.append(f"{command} conflicts retry {cid}")
    elif kind in NOT_RETRYABLE or kind in BY_HAND_ONLY:
        commands.append(f"{command} conflicts resolve {cid} --note \"what you corrected in the LMS\"")
    elif kind != "amended_after_sync":
        commands.append(f"{command} conflicts retry {cid}")
    if kind in BY_HAND_TOO:
        commands.append(f"{command} conflicts resolve {cid} --note \"recorded by hand in the LMS\"")
    if kind in SELF_HEALING:
        cap = getattr(settings, "heal_max_attempts", None)
        every = getattr(settings, "heal_interval", None)
        done = row.get("auto_retries", 0)
        if cap is not None and done >= cap:
            text += f" Automatic retries stopped after {done} attempts: it now waits for a person."
        elif every:
            text += f" The daemon also retries it by itself every {every}" + (
                f" (attempt {done} of {cap} so far)." if cap is not None else ".")
    if kind not in NOT_RETRYABLE:
        commands.append(f"{command} conflicts ignore {cid} --note \"why nothing will be written\"")
    return {"text": text, "commands": commands}


# --- lifecycle: resolve / ignore ------------------------------------------------------------------------
def change_status(store: Store, ids: list[int], status: str, *, actor: str, note: str) -> list[dict[str, Any]]:
    """open -> resolved | ignored, with a note (required). Conflicts not open are left as they are."""
    if status not in ("resolved", "ignored"):
        raise ValueError("status must be resolved or ignored")
    if not (note or "").strip():
        raise ValueError("a note is required (what was done, or why it is ignored)")
    out = []
    with store.tx() as conn:
        for cid in ids:
            row = conn.execute(select(conflicts.c.id, conflicts.c.status).where(conflicts.c.id == cid)).first()
            if row is None:
                out.append({"id": cid, "outcome": "no such conflict", "changed": False})
            elif row.status != "open":
                out.append({"id": cid, "outcome": f"already {row.status}", "changed": False})
            else:
                store.set_conflict_status(conn, cid, status, actor=actor, note=note.strip())
                out.append({"id": cid, "outcome": status, "changed": True})
    return out


def set_status(store: Store, ids: list[int], status: str, *, actor: str, note: str) -> int:
    return sum(1 for o in change_status(store, ids, status, actor=actor, note=note) if o["changed"])


# --- retries ---------------------------------------------------------------------------------------------
def retry_conflicts(app: Any, ids: list[int], *, actor: str = "cli", action: str = "retried") -> list[dict[str, Any]]:
    """Re-map and re-send the documents behind these conflicts (the engine picks the key revision).

    One document is retried once even when several of its conflicts are named. A conflict the retry
    replaces by one of another kind is resolved as superseded, naming the new one.
    """
    out: list[dict[str, Any]] = []
    done_docs: dict[tuple[str, str], str] = {}
    for cid in ids:
        rows = list_conflicts(app.store, status="all", ids=[cid])
        if not rows:
            out.append({"id": cid, "doc_id": None, "outcome": "no such conflict", "status": None})
            continue
        row = rows[0]
        key = (row["source"], row["doc_id"])
        if row["status"] != "open":
            out.append(_result(row, f"not retried: already {row['status']}", row["status"]))
            continue
        if row["kind"] in NOT_RETRYABLE:
            out.append(_result(row, f"not retried: {NOT_RETRYABLE[row['kind']]}", "open"))
            continue
        if row["source"] not in app.settings.sources:
            out.append(_result(row, "not retried: source not configured", "open"))
            continue
        if key in done_docs:
            outcome = done_docs[key]
        else:
            outcome = _retry_one(app, row, actor, action)
            done_docs[key] = outcome
        after = list_conflicts(app.store, status="all", ids=[cid])[0]
        note = str(after.get("note") or "")
        if after["status"] == "resolved" and note.startswith("superseded by #"):
            # not fixed: the retry got further and met another problem, which is the conflict to read now
            new = note.removeprefix("superseded by ").removesuffix(" on retry")
            out.append(_result(after, f"replaced by conflict {new}", "superseded"))
        else:
            out.append(_result(after, outcome, after["status"]))
    return out


def _result(row: dict[str, Any], outcome: str, status_after: str | None) -> dict[str, Any]:
    return {"id": row["id"], "source": row["source"], "doc_id": row["doc_id"], "kind": row["kind"],
            "amount": row.get("amount"), "currency": row.get("currency"), "outcome": outcome, "status": status_after}


def _retry_one(app: Any, row: dict[str, Any], actor: str, action: str) -> str:
    source, doc_id = row["source"], row["doc_id"]
    with app.store.tx() as conn:
        before = {c["id"] for c in app.store.open_conflicts_for(conn, source, doc_id)}
        # the history row comes before whatever the engine records; its note gets the outcome below
        marks = [_history(conn, cid, action, actor, "in progress") for cid in sorted(before)]
    try:
        with source_lock(source):
            outcome = app.engine.retry_document(source, doc_id)
    except (LookupError, ValueError) as exc:
        outcome = f"cannot be retried: {exc}"
    except ConflictError as exc:   # a read during mapping answered definitively
        outcome = f"conflict: {exc.kind}: {exc.detail}"
    except StopSource as exc:
        outcome = f"stopped: {exc}"
    except RetryLater as exc:
        outcome = f"deferred (nothing decided, try again later): {exc}"
    with app.store.tx() as conn:
        now_open = app.store.open_conflicts_for(conn, source, doc_id)
        new = [c for c in now_open if c["id"] not in before]
        if marks:
            conn.execute(conflict_history.update().where(conflict_history.c.id.in_(marks)).values(note=outcome))
        still = {c["id"] for c in now_open}
        if new:
            for cid in before & still:
                app.store.set_conflict_status(conn, cid, "resolved", actor=actor,
                                              note=f"superseded by #{new[0]['id']} ({new[0]['kind']}) on retry")
    return outcome


def retryable_ids(store: Store, **filters: Any) -> list[int]:
    """Open conflicts matching the filters that a retry can act on."""
    return [r["id"] for r in list_conflicts(store, status="open", **filters) if r["kind"] not in NOT_RETRYABLE]


def heal(app: Any, *, max_attempts: int | None = None, sources: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Retry open conflicts of the self-healing kinds (a mapping added, a plan created later, the LMS
    briefly failing), each at most `max_attempts` times in total; the rest wait for a person."""
    cap = app.settings.heal_max_attempts if max_attempts is None else max_attempts
    names = set(sources) if sources is not None else {n for n, s in app.settings.sources.items() if s.enabled}
    due = [r for r in list_conflicts(app.store, status="open", kind=sorted(SELF_HEALING))
           if r["source"] in names and r["auto_retries"] < cap]
    out: list[dict[str, Any]] = []
    stalled: set[str] = set()
    seen_docs: set[tuple[str, str]] = set()
    for r in due:
        if app.stop_event.is_set():
            break
        if r["source"] in stalled or (r["source"], r["doc_id"]) in seen_docs:
            continue
        seen_docs.add((r["source"], r["doc_id"]))
        res = retry_conflicts(app, [r["id"]], actor=HEAL_ACTOR, action="auto_retry")[0]
        out.append(res)
        if res["outcome"].startswith(("deferred", "stopped")):
            stalled.add(r["source"])   # the LMS is failing: try this source again next time
    return out


# --- mappings ----------------------------------------------------------------------------------------
def unblocked_by(store: Store, kind: str, source: str, erp_id: str) -> list[int]:
    """Open, retryable conflicts that a customer -> student or invoice -> plan mapping can unblock."""
    rows = list_conflicts(store, status="open", source=source)
    if kind == KIND_CUSTOMER:
        return [r["id"] for r in rows if r["customer"] == erp_id and r["kind"] in STUDENT_KINDS]
    if kind == KIND_INVOICE:
        with store.engine.connect() as c:
            docs = {d.doc_id: json.loads(d.summary) for d in c.execute(
                select(documents.c.doc_id, documents.c.summary).where(
                    documents.c.source == source, documents.c.doc_id.in_([r["doc_id"] for r in rows])))}
        return [r["id"] for r in rows if r["kind"] not in NOT_RETRYABLE and erp_id in _invoices_of(docs.get(r["doc_id"]))]
    raise ValueError(f"unknown mapping kind {kind!r}")


def add_mapping(app: Any, kind: str, source: str, erp_id: str, lms_id: str, *, actor: str = "cli",
                verify: bool = True, retry: bool = True) -> dict[str, Any]:
    """Store a manual mapping (origin `manual`), then retry the conflicts it unblocks.

    With `verify`, the LMS student / plan must exist (one read, nothing written)."""
    if kind not in (KIND_CUSTOMER, KIND_INVOICE):
        raise ValueError(f"kind must be {KIND_CUSTOMER} or {KIND_INVOICE}")
    if source not in app.settings.sources:
        raise ValueError(f"unknown source {source!r}")
    erp_id, lms_id = erp_id.strip(), str(lms_id).strip()
    if not erp_id or not lms_id:
        raise ValueError("both the ERP id and the LMS id are needed")
    if verify:
        try:
            lms = app.engine.lms_for(source)
            found = lms.get_student(lms_id) if kind == KIND_CUSTOMER else lms.get_plan(lms_id)
        except ConflictError as exc:
            what = "student" if kind == KIND_CUSTOMER else "fee plan"
            raise ValueError(f"the LMS has no {what} {lms_id} ({exc.detail})") from None
        if not isinstance(found, dict):
            raise ValueError(f"the LMS answered no object for {lms_id}")
    configured = app.settings.sources[source].mapping
    shadow = (configured.customers if kind == KIND_CUSTOMER else configured.invoices).get(erp_id)
    with app.store.tx() as conn:
        previous = app.store.get_mapping(conn, kind, source, erp_id)
        app.store.set_mapping(conn, kind, source, erp_id, lms_id, "manual")
    ids = unblocked_by(app.store, kind, source, erp_id)
    closed: list[int] = []
    with app.store.tx() as conn:
        for cid in ids:
            _history(conn, cid, "mapped", actor, f"{kind} {erp_id} -> {lms_id}")
        if kind == KIND_INVOICE:
            # the invoice now has its LMS plan: its own plan-creation conflict (unknown_batch, ...) is moot,
            # and retrying it could create a second plan
            for c in app.store.open_conflicts_for(conn, source, erp_id):
                app.store.set_conflict_status(conn, c["id"], "resolved", actor=actor,
                                              note=f"mapped by hand to LMS plan {lms_id}: no plan is created for "
                                                   "this invoice")
                closed.append(int(c["id"]))
    ids = [i for i in ids if i not in closed]
    retried = retry_conflicts(app, ids, actor=actor) if retry else []
    return {"kind": kind, "source": source, "erp_id": erp_id, "lms_id": lms_id, "previous": previous,
            "shadowed_by_config": shadow, "unblocked": ids, "closed": closed, "retried": retried,
            "resolved": sum(1 for r in retried if r["status"] == "resolved")}


# --- export ------------------------------------------------------------------------------------------------
EXPORT_COLUMNS = ("id", "status", "source", "doc_id", "kind", "amount", "currency", "customer", "lms_receipt",
                  "age", "created_at", "updated_at", "attempts", "auto_retries", "detail", "next_step", "note")


_NUMBER = re.compile(r"[+-]?\d[\d,]*(\.\d+)?")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: ERP text that starts like a formula (`=HYPERLINK(...)`, `+`, `-`,
    `@`, a tab or CR) gets a leading apostrophe (OWASP's advice); numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def export(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(conflicts_payload(rows), indent=2, default=str)
    if fmt != "csv":
        raise ValueError("format must be csv or json")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    for r in rows:
        w.writerow([csv_cell("" if r.get(c) is None else r.get(c)) for c in EXPORT_COLUMNS])
    return buf.getvalue()


# --- check ---------------------------------------------------------------------------------------------
def check(settings: Any, *, offline: bool = False) -> list[str]:
    """Connectors load and validate, the state store opens and can be written, LMS and ERPs answer, the
    key has its scopes. `offline`: no network (what a service checks before it starts: an ERP or an LMS
    key that is down must not keep every other source from running)."""
    from sync.app import build_connectors
    from sync.lms import LmsClient
    problems: list[str] = []
    if not settings.sources:
        problems.append("sources: none configured (add a [sources.<name>] section with its connector)")
    stop = threading.Event()
    try:
        connectors = build_connectors(settings, stop)
    except Exception as exc:  # noqa: BLE001 - check lists every failure
        problems.extend(getattr(exc, "problems", [str(exc)]))
        connectors = {}
    try:
        store = Store.open(settings.state_target())
        try:
            store.check_writable()
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"state: {exc}")
    if offline:
        for conn in connectors.values():
            conn.close()
        return problems
    for inst_id, inst in settings.institutes.items():
        if inst.lms.api_key is None:
            continue   # reported by config.missing_secrets
        lms = LmsClient(inst.lms, stop_event=stop)
        try:
            found = lms.probe()
        finally:
            lms.close()
        label = "" if len(settings.institutes) == 1 else f"institutes.{inst_id}: "
        problems.extend(f"{label}{p}" for p in found)
    for name, conn in connectors.items():
        probe = getattr(conn, "probe", None)
        if probe is not None:
            problems.extend(f"sources.{name}: {p}" for p in probe())
        conn.close()
    return problems
