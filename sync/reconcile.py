"""Reconciliation: does the LMS hold exactly the money the ERP received? (sync-correctness rule 9)

A cursor cannot see deletions or silent edits, so this pass compares both sides in full and
writes nothing to the LMS:

* ERP side: the source's connector `fetch`, from `--since` (or the beginning), with a context
  whose `seen()` is always False so every document is yielded in full (and whose memo is left
  alone). `PaymentReceived` events (docstatus 1) not originating in the LMS are "the ERP received".
* LMS side: every payment (`GET /payments`, paged); those whose `notes` start with
  `erp:<source>:` came from this source (the engine writes `erp:<source>:<doc id>`). Reversed
  payments hold no money. Each involved student's fee summary gives the plan totals.

Drifts, per ERP document: `missing_in_lms` (the ERP received it, the LMS holds nothing),
`not_in_erp` (the LMS holds it, but the ERP document is cancelled or gone), `amount_mismatch`.
Each names the open conflicts that already explain it. Results are grouped per student and plan,
kept in the state store's memo (`ops.reconciliation`) and written to `report_dir` as JSON + CSV.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sync import contract as C
from sync.events import Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged
from sync.logs import get_logger
from sync.ops import money_text, to_amount
from sync.state import Store, conflicts, memo, writes
from sync.times import parse_iso, utcnow

MEMO_KEY = "ops.reconciliation"
DRIFT_KINDS = ("missing_in_lms", "not_in_erp", "amount_mismatch")
_PLAN_IN_PATH = re.compile(r"/fee-plans/([^/]+)/payments$")
log = get_logger(component="reconcile")


class FullContext:
    """The SourceContext for reconciliation: nothing counts as seen, and the memo is not touched."""

    def seen(self, doc_id: str, version: str) -> bool:
        return False

    def recall(self, key: str) -> str | None:
        return None

    def remember(self, key: str, value: str) -> None:
        return None


def reconcile(app: Any, source: str, *, since: datetime | None = None, summaries: bool = True,
              save: bool = True) -> dict[str, Any]:
    """Compare one source with the LMS; return (and by default store) the result."""
    if source not in app.connectors:
        raise ValueError(f"unknown or disabled source {source!r}")
    started = utcnow()
    connector = app.connectors[source]
    prefix = f"erp:{source}:"

    # --- the ERP side -------------------------------------------------------------------------
    erp: dict[str, dict[str, Any]] = {}
    cancelled: set[str] = set()
    counts = defaultdict(int)
    unreadable: list[dict[str, str]] = []
    start = Position(since, "") if since is not None else None
    for event in connector.fetch(start, FullContext()):
        if isinstance(event, PaymentReceived):
            if event.origin_marker:
                counts["lms_originated"] += 1
                continue
            erp[event.doc_id] = {"amount": event.amount, "currency": event.currency, "customer": event.customer,
                                 "posting_date": event.posting_date.isoformat()}
            cancelled.discard(event.doc_id)
        elif isinstance(event, PaymentCancelled):
            cancelled.add(event.doc_id)
            erp.pop(event.doc_id, None)
        elif isinstance(event, Malformed):
            unreadable.append({"doc_id": event.doc_id, "problem": event.problem})
        elif isinstance(event, Unchanged):   # a connector that ignores `seen`: cannot compare it
            counts["unreadable"] += 1

    # --- the LMS side -------------------------------------------------------------------------
    held: dict[str, list[dict[str, Any]]] = defaultdict(list)
    other = 0
    lms = app.engine.lms_for(source)   # the institute this source writes to
    for p in lms.list_payments():
        notes = str(p.get(C.PAY_NOTES) or "")
        if not notes.startswith(prefix):
            other += 1
            continue
        if p.get(C.PAY_STATUS, C.PAY_RECEIVED) != C.PAY_RECEIVED:
            continue   # reversed: holds no money
        held[notes[len(prefix):]].append(p)

    ledger = _ledger(app.store, source, set(erp) | set(held))
    in_window = set(erp) | cancelled
    if since is not None:
        # The window is ERP change time, the only order every connector lists in: an LMS payment is
        # in it when its document is (fetched above) or when the ledger last saw that document change
        # inside it (so a document deleted since is reported). Its payment date says nothing about
        # when the ERP changed the document: a receipt posted after `since` but last changed before it
        # is outside the window on both sides, not "gone from the ERP".
        for doc_id in held:
            changed = ledger["changed_at"].get(doc_id)
            if changed and parse_iso(changed) >= since:
                in_window.add(doc_id)
    else:
        in_window |= set(held)

    # --- compare ------------------------------------------------------------------------------------
    open_by_doc = _open_conflicts(app.store, source)
    drifts: list[dict[str, Any]] = []
    for doc_id in sorted(in_window):
        pays = held.get(doc_id, [])
        lms_amount = sum((Decimal(str(p.get(C.PAY_AMOUNT, 0))) for p in pays), Decimal(0))
        plan_ids = sorted({str(p.get(C.PAY_FEE_PLAN_ID)) for p in pays}) or ledger["plans"].get(doc_id, [])
        students = sorted({str(p.get(C.PAY_STUDENT_ID)) for p in pays if p.get(C.PAY_STUDENT_ID) is not None})
        doc = erp.get(doc_id)
        base = {"doc_id": doc_id, "student_id": students[0] if students else None,
                "plan_id": plan_ids[0] if plan_ids else None,
                "customer": (doc or {}).get("customer") or ledger["customer"].get(doc_id),
                "currency": (doc or {}).get("currency") or ledger["currency"].get(doc_id),
                "lms_receipts": [p.get(C.PAY_RECEIPT_NUMBER) for p in pays],
                "explained_by": open_by_doc.get(doc_id, [])}
        if doc is not None and not pays:
            drifts.append({**base, "kind": "missing_in_lms", "erp_amount": money_text(doc["amount"]),
                           "lms_amount": "0", "detail": "the ERP received it; the LMS holds no payment for it"})
        elif doc is None and pays:
            why = "cancelled in the ERP" if doc_id in cancelled else "not found in the ERP (deleted?)"
            drifts.append({**base, "kind": "not_in_erp", "erp_amount": "0", "lms_amount": money_text(lms_amount),
                           "detail": f"the LMS holds {money_text(lms_amount)} from this source; the document is {why}"})
        elif doc is not None and lms_amount != doc["amount"]:
            drifts.append({**base, "kind": "amount_mismatch", "erp_amount": money_text(doc["amount"]),
                           "lms_amount": money_text(lms_amount),
                           "detail": f"the ERP says {money_text(doc['amount'])}, the LMS holds {money_text(lms_amount)}"})
    # --- per student and plan --------------------------------------------------------------------------
    plans = _per_plan(app, erp, held, ledger, drifts, in_window, summaries, source)
    finished = utcnow()
    totals_by_kind = {k: sum(1 for d in drifts if d["kind"] == k) for k in DRIFT_KINDS}
    erp_money: dict[str, Decimal] = defaultdict(Decimal)
    for d in erp.values():
        erp_money[d["currency"]] += d["amount"]
    result = {
        "source": source, "since": since.isoformat() if since else None,
        "started_at": started.isoformat(), "finished_at": finished.isoformat(),
        "erp": {"received": len(erp), "cancelled": len(cancelled), "lms_originated": counts["lms_originated"],
                "unreadable": len(unreadable) + counts["unreadable"], "unreadable_documents": unreadable[:50],
                "amount": {k: money_text(v) for k, v in sorted(erp_money.items())}},
        "lms": {"payments_from_source": sum(len(v) for v in held.values()),
                "amount_from_source": money_text(sum((Decimal(str(p.get(C.PAY_AMOUNT, 0)))
                                                      for v in held.values() for p in v), Decimal(0))),
                "other_payments": other},
        "counts": totals_by_kind, "drifts": drifts, "drift_total": len(drifts),
        "unexplained": sum(1 for d in drifts if not d["explained_by"]),
        "plans": plans, "lms_requests": dict(lms.requests),
    }
    log.info("reconcile.finished", source=source, drifts=len(drifts), **totals_by_kind)
    if save:
        store_result(app.store, result, getattr(app.settings, "report_dir", None))
    return result


def _ledger(store: Store, source: str, doc_ids: set[str]) -> dict[str, dict[str, Any]]:
    """What the ledger knows per document: the plans its writes went to, its change time, customer, currency."""
    from sync.state import documents
    out: dict[str, dict[str, Any]] = {"plans": defaultdict(list), "changed_at": {}, "customer": {}, "currency": {}}
    with store.engine.connect() as c:
        for w in c.execute(select(writes.c.doc_id, writes.c.path).where(writes.c.source == source)):
            m = _PLAN_IN_PATH.search(w.path or "")
            if m and w.doc_id in doc_ids and m.group(1) not in out["plans"][w.doc_id]:
                out["plans"][w.doc_id].append(m.group(1))
        for d in c.execute(select(documents.c.doc_id, documents.c.changed_at, documents.c.customer,
                                  documents.c.currency).where(documents.c.source == source)):
            if d.doc_id in doc_ids:
                out["changed_at"][d.doc_id] = d.changed_at
                out["customer"][d.doc_id] = d.customer
                out["currency"][d.doc_id] = d.currency
    return out


def _open_conflicts(store: Store, source: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with store.engine.connect() as c:
        for r in c.execute(select(conflicts.c.id, conflicts.c.doc_id, conflicts.c.kind).where(
                conflicts.c.source == source, conflicts.c.status == "open").order_by(conflicts.c.id)):
            out[r.doc_id].append({"id": r.id, "kind": r.kind})
    return out


def _per_plan(app: Any, erp: dict[str, dict[str, Any]], held: dict[str, list[dict[str, Any]]],
              ledger: dict[str, dict[str, Any]], drifts: list[dict[str, Any]], in_window: set[str],
              summaries: bool, source: str = "") -> list[dict[str, Any]]:
    """Per (student, plan): what the ERP received, what the LMS holds from this source, the plan's paid total."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    student_of_plan: dict[str, str] = {}
    for pays in held.values():
        for p in pays:
            student_of_plan[str(p.get(C.PAY_FEE_PLAN_ID))] = str(p.get(C.PAY_STUDENT_ID))

    def row(student: str, plan: str) -> dict[str, Any]:
        return rows.setdefault((student, plan), {"student_id": student, "plan_id": plan, "erp_received": Decimal(0),
                                                 "lms_from_source": Decimal(0), "lms_paid_total": None, "drifts": 0})
    for doc_id in in_window:
        pays = held.get(doc_id, [])
        doc = erp.get(doc_id)
        for p in pays:
            row(str(p.get(C.PAY_STUDENT_ID)), str(p.get(C.PAY_FEE_PLAN_ID)))["lms_from_source"] += Decimal(
                str(p.get(C.PAY_AMOUNT, 0)))
        if doc is not None:
            # the ERP amount goes to the plan the LMS holds it on (the first, when split), else to the
            # plan the ledger meant it for, else to the ERP customer (never mapped)
            plan = str(pays[0].get(C.PAY_FEE_PLAN_ID)) if pays else (ledger["plans"].get(doc_id) or [None])[0]
            row(*_owner(plan, student_of_plan, doc["customer"]))["erp_received"] += doc["amount"]
    for d in drifts:
        row(*_owner(d["plan_id"], student_of_plan, d["customer"], d["student_id"]))["drifts"] += 1
    if summaries:
        for student in sorted({s for s, _ in rows if s.isdigit()}):
            try:
                summary = app.engine.lms_for(source).fee_summary(student)
            except Exception as exc:  # noqa: BLE001 - a summary is informative; its failure is listed
                log.warning("reconcile.summary_failed", student_id=student, error=str(exc))
                continue
            for plan in summary.get(C.SUMMARY_PLANS) or []:
                key = (student, str(plan.get(C.PLAN_ID)))
                if key in rows:
                    rows[key]["lms_paid_total"] = str(plan.get(C.PLAN_AMOUNT_PAID))
    out = []
    for (_s, _p), r in sorted(rows.items()):
        out.append({**r, "erp_received": money_text(r["erp_received"]),
                    "lms_from_source": money_text(r["lms_from_source"]),
                    "difference": money_text(r["erp_received"] - r["lms_from_source"])})
    return out


def _owner(plan: str | None, student_of_plan: dict[str, str], customer: str | None,
           student: str | None = None) -> tuple[str, str]:
    if plan is None:
        return (f"customer:{customer or '?'}", "?")
    return (student or student_of_plan.get(plan) or "?", plan)


# --- storage ---------------------------------------------------------------------------------------
def store_result(store: Store, result: dict[str, Any], report_dir: str | None) -> list[Path]:
    store.remember(result["source"], MEMO_KEY, json.dumps(result, default=str))
    paths: list[Path] = []
    if report_dir:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", result["source"])
        jpath = out / f"reconciliation-{safe}.json"
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        tmp.replace(jpath)
        cpath = out / f"reconciliation-{safe}.csv"
        with cpath.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["kind", "doc_id", "student_id", "plan_id", "customer", "currency", "erp_amount",
                        "lms_amount", "lms_receipts", "explained_by", "detail"])
            for d in result["drifts"]:
                from sync.ops import csv_cell
                w.writerow([csv_cell(x) for x in (
                    d["kind"], d["doc_id"], d["student_id"] or "", d["plan_id"] or "", d["customer"] or "",
                    d["currency"] or "", d["erp_amount"], d["lms_amount"],
                    " ".join(str(x) for x in d["lms_receipts"] if x),
                    " ".join(f"#{c['id']} {c['kind']}" for c in d["explained_by"]), d["detail"])])
        paths = [jpath, cpath]
    return paths


def latest(store: Store) -> list[dict[str, Any]]:
    """The latest stored reconciliation of every source, by source name."""
    with store.engine.connect() as c:
        rows = c.execute(select(memo.c.source, memo.c.value).where(memo.c.key == MEMO_KEY)
                         .order_by(memo.c.source)).all()
    out = []
    for _source, value in rows:
        try:
            out.append(json.loads(value))
        except ValueError:
            continue
    return out


def drift_amounts(result: dict[str, Any]) -> dict[str, str]:
    """Sum of |ERP - LMS| over the drifts, by currency."""
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for d in result.get("drifts", []):
        a, b = to_amount(d.get("erp_amount")) or Decimal(0), to_amount(d.get("lms_amount")) or Decimal(0)
        sums[d.get("currency") or "?"] += abs(a - b)
    return {k: money_text(v) for k, v in sorted(sums.items())}
