"""Operator queries and actions behind the CLI: status, conflicts, retries, connectivity checks."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from sync.state import Store, conflict_history, conflicts, cursors, documents, runs
from sync.times import utcnow

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
    "reversed_in_erp": "The receipt was cancelled in the ERP after it reached the LMS: reverse the LMS receipt "
                       "named in the detail by hand, then resolve this conflict.",
    "changed_after_sync": "The receipt changed in the ERP after it reached the LMS: correct the LMS payment by "
                          "hand, then resolve.",
    "amended_after_sync": "An amendment waits for its original's reversal to be resolved; it is pushed after that.",
    "unallocated_remainder": "Allocate the whole receipt in the ERP (or split it), then retry.",
    "validation": "The LMS rejected the request body (see detail); correct the mapping or the ERP document, then retry.",
    "rejected": "The LMS rejected the request (see detail); fix the cause, then retry.",
    "idempotency_key_reused": "The LMS holds another request under this key; inspect both and resolve by hand.",
}


def _age(created: str, now: datetime) -> str:
    seconds = (now - datetime.fromisoformat(created)).total_seconds()
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def status(store: Store, configured: list[str]) -> dict[str, Any]:
    with store.engine.connect() as c:
        names = set(configured) | set(c.execute(select(documents.c.source).distinct()).scalars())
        out = []
        for name in sorted(names):
            cur = c.execute(select(cursors).where(cursors.c.source == name)).mappings().first()
            last = c.execute(select(runs).where(runs.c.source == name).order_by(runs.c.id.desc()).limit(1)).mappings().first()
            docs = dict(c.execute(select(documents.c.status, func.count()).where(documents.c.source == name)
                                  .group_by(documents.c.status)).all())
            open_c = c.execute(select(func.count()).select_from(conflicts).where(
                conflicts.c.source == name, conflicts.c.status == "open")).scalar()
            out.append({
                "source": name,
                "cursor": {"changed_at": cur["changed_at"], "doc_id": cur["doc_id"]} if cur else None,
                "last_run": ({k: last[k] for k in ("run_id", "mode", "started_at", "finished_at", "status", "error")}
                             | {"counts": json.loads(last["counts"] or "{}")}) if last else None,
                "documents": docs, "open_conflicts": open_c,
            })
    return {"sources": out}


def list_conflicts(store: Store, *, status: str = "open", kind: str | None = None,
                   source: str | None = None) -> list[dict[str, Any]]:
    q = select(conflicts).order_by(conflicts.c.id)
    if status != "all":
        q = q.where(conflicts.c.status == status)
    if kind:
        q = q.where(conflicts.c.kind == kind)
    if source:
        q = q.where(conflicts.c.source == source)
    now = utcnow()
    with store.engine.connect() as c:
        rows = [dict(r) for r in c.execute(q).mappings()]
    for r in rows:
        r["age"] = _age(r["created_at"], now)
        r["next_step"] = NEXT_STEPS.get(r["kind"], "Read the detail, fix the cause, then retry or resolve.")
        for k in ("request", "response"):
            r[k] = json.loads(r[k]) if r[k] else None
    return rows


def conflicts_payload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"conflicts": rows, "by_kind": dict(Counter(r["kind"] for r in rows)), "total": len(rows)}


def show_conflict(store: Store, cid: int) -> dict[str, Any] | None:
    rows = [r for r in list_conflicts(store, status="all") if r["id"] == cid]
    if not rows:
        return None
    row = rows[0]
    with store.engine.connect() as c:
        row["history"] = [dict(h) for h in c.execute(select(conflict_history).where(
            conflict_history.c.conflict_id == cid).order_by(conflict_history.c.id)).mappings()]
        doc = c.execute(select(documents).where(documents.c.source == row["source"],
                                                documents.c.doc_id == row["doc_id"])).mappings().first()
    row["document"] = json.loads(doc["summary"]) if doc else None
    return row


def set_status(store: Store, ids: list[int], status: str, *, actor: str, note: str) -> int:
    changed = 0
    with store.tx() as conn:
        for cid in ids:
            exists = conn.execute(select(conflicts.c.id).where(conflicts.c.id == cid)).first()
            if exists:
                store.set_conflict_status(conn, cid, status, actor=actor, note=note)
                changed += 1
    return changed


def retry_conflicts(app: Any, ids: list[int]) -> list[dict[str, Any]]:
    out = []
    for cid in ids:
        row = show_conflict(app.store, cid)
        if row is None:
            out.append({"id": cid, "doc_id": None, "outcome": "no such conflict"})
            continue
        if row["source"] not in app.settings.sources:
            out.append({"id": cid, "doc_id": row["doc_id"], "outcome": "source not configured"})
            continue
        try:
            outcome = app.engine.retry_document(row["source"], row["doc_id"])
        except (LookupError, ValueError) as exc:
            outcome = str(exc)
        out.append({"id": cid, "doc_id": row["doc_id"], "outcome": outcome})
    return out


def check(settings: Any) -> list[str]:
    """Connectors load and validate, the state store opens, LMS and ERPs answer, the key has its scopes."""
    from sync.app import build_connectors
    from sync.lms import LmsClient
    from sync.state import Store
    import threading
    problems: list[str] = []
    stop = threading.Event()
    try:
        connectors = build_connectors(settings, stop)
    except Exception as exc:  # noqa: BLE001 - check lists every failure
        problems.extend(getattr(exc, "problems", [str(exc)]))
        connectors = {}
    try:
        Store.open(settings.state_path).close()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"state: {exc}")
    lms = LmsClient(settings.lms, stop_event=stop)
    try:
        problems.extend(lms.probe())
    finally:
        lms.close()
    for name, conn in connectors.items():
        probe = getattr(conn, "probe", None)
        if probe is not None:
            problems.extend(f"sources.{name}: {p}" for p in probe())
        conn.close()
    return problems
