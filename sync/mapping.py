"""Map a normalised ERP receipt to LMS writes: which plan, which installment, which key, which body.

Order (issue: main job §7): (a) the referenced invoice's LMS plan id (the LMS created that
invoice); (b) a learned or manual invoice -> plan mapping; (c) ERP customer -> LMS student
(mapping, else a unique e-mail match), then that student's single active plan in the same
currency. Every failure is a ConflictError with a kind; nothing here writes to the LMS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from sync import contract as C
from sync.config import MappingSettings
from sync.errors import ConflictError
from sync.events import PaymentReceived
from sync.lms import LmsClient
from sync.money import to_lms_amount
from sync.state import Store
from sync.times import iso_with_offset, local_midnight

KIND_CUSTOMER = "customer_student"
KIND_INVOICE = "invoice_plan"
KIND_INSTALLMENT = "plan_installment"
KIND_PLAN_CURRENCY = "plan_currency"


@dataclass
class PlannedWrite:
    """One LMS write derived deterministically from one ERP document (same input -> same request)."""

    op: str
    base_key: str
    method: str
    path: str
    body: dict[str, Any]
    plan_id: str | None = None
    student_id: str | None = None
    amount: int | None = None

    def body_json(self) -> str:
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"))


@dataclass
class Resolver:
    """Per-run caches over the LMS reads and the state store's mappings."""

    source: str
    key_prefix: str
    settings: MappingSettings
    store: Store
    lms: LmsClient
    tz: Any
    learn: bool = True
    _students: dict[str, str | None] = field(default_factory=dict)
    _plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _plan_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- students and plans ---------------------------------------------------------------
    def student_for(self, conn: Connection, customer: str, email: str | None) -> str:
        configured = self.settings.customers.get(customer)
        if configured:
            return configured
        mapped = self.store.get_mapping(conn, KIND_CUSTOMER, self.source, customer)
        if mapped:
            return mapped
        if not self.settings.match_students_by_email:
            raise ConflictError("unknown_student", f"no LMS student mapped for ERP customer {customer!r}",
                                definitive=False)
        norm = (email or "").strip().lower()
        if not norm:
            raise ConflictError("unknown_student",
                                f"ERP customer {customer!r} has no e-mail and no student mapping", definitive=False)
        if norm not in self._students:
            found = [s for s in self.lms.find_students(norm)
                     if str(s.get(C.STUDENT_EMAIL, "")).strip().lower() == norm]
            if len(found) > 1:
                raise ConflictError("ambiguous_student",
                                    f"{len(found)} LMS students share the e-mail {norm!r}", definitive=False)
            self._students[norm] = str(found[0][C.STUDENT_ID]) if found else None
            if found and self.learn:
                self.store.set_mapping(conn, KIND_CUSTOMER, self.source, customer, self._students[norm], "learned")
        sid = self._students[norm]
        if sid is None:
            raise ConflictError("unknown_student",
                                f"no LMS student has the e-mail of ERP customer {customer!r} ({norm})",
                                definitive=False)
        return sid

    def plans_of(self, student_id: str) -> list[dict[str, Any]]:
        if student_id not in self._plans:
            self._plans[student_id] = self.lms.list_plans(student_id)
            for p in self._plans[student_id]:
                self._plan_by_id[str(p[C.PLAN_ID])] = p
        return self._plans[student_id]

    def plan(self, plan_id: str) -> dict[str, Any]:
        if plan_id not in self._plan_by_id:
            self._plan_by_id[plan_id] = self.lms.get_plan(plan_id)
        return self._plan_by_id[plan_id]

    def forget_student(self, student_id: str) -> None:
        self._plans.pop(student_id, None)

    def single_active_plan(self, student_id: str, currency: str) -> dict[str, Any]:
        plans = self.plans_of(student_id)
        active = [p for p in plans if p.get(C.PLAN_STATUS) == C.PLAN_ACTIVE]
        same = [p for p in active if str(p.get(C.PLAN_CURRENCY, C.DEFAULT_CURRENCY)) == currency]
        if len(same) == 1:
            return same[0]
        if len(same) > 1:
            ids = ", ".join(str(p[C.PLAN_ID]) for p in same)
            raise ConflictError("ambiguous_plan", f"student {student_id} has {len(same)} active {currency} plans "
                                f"({ids}); map the invoice to one", definitive=False)
        if active:
            cur = ", ".join(sorted({str(p.get(C.PLAN_CURRENCY)) for p in active}))
            raise ConflictError("currency_mismatch", f"receipt is in {currency}; student {student_id}'s active "
                                f"plan is in {cur}", definitive=False)
        raise ConflictError("no_active_plan", f"student {student_id} has no active fee plan", definitive=False)

    def installment_id(self, conn: Connection, plan_id: str, sequence: int) -> str:
        erp_key = f"{plan_id}#{sequence}"
        cached = self.store.get_mapping(conn, KIND_INSTALLMENT, "*", erp_key)
        if cached:
            return cached
        plan = self.plan(plan_id)
        for inst in plan.get(C.PLAN_INSTALLMENTS) or []:
            if inst.get(C.INST_SEQUENCE) == sequence:
                iid = str(inst[C.INST_ID])
                if self.learn:
                    self.store.set_mapping(conn, KIND_INSTALLMENT, "*", erp_key, iid, "learned")
                return iid
        raise ConflictError("mapping_stale", f"plan {plan_id} has no installment #{sequence}", definitive=False)

    def plan_for_invoice(self, conn: Connection, invoice_id: str | None, lms_plan_id: str | None) -> str | None:
        if lms_plan_id:
            return lms_plan_id
        if not invoice_id:
            return None
        return self.settings.invoices.get(invoice_id) or self.store.get_mapping(conn, KIND_INVOICE, self.source,
                                                                                invoice_id)

    # --- receipts ---------------------------------------------------------------------------
    def payment_method(self, mode: str | None) -> str:
        if mode and mode in self.settings.payment_methods:
            return self.settings.payment_methods[mode]
        if self.settings.default_payment_method:
            return self.settings.default_payment_method
        raise ConflictError("unknown_payment_method",
                            f"ERP mode of payment {mode!r} has no LMS payment method; add it to "
                            f"mapping.payment_methods", definitive=False)

    def receipt_writes(self, conn: Connection, ev: PaymentReceived) -> list[PlannedWrite]:
        """The LMS payments for one receipt: one per referenced plan/installment, deterministic."""
        method = self.payment_method(ev.method)
        targets: dict[tuple[str, int | None], Decimal] = {}
        student_cache: list[str] = []

        def fallback_plan() -> dict[str, Any]:
            if not student_cache:
                student_cache.append(self.student_for(conn, ev.customer, ev.customer_email))
            return self.single_active_plan(student_cache[0], ev.currency)

        for ref in ev.references:
            plan_id = self.plan_for_invoice(conn, ref.invoice_id, ref.lms_plan_id)
            if plan_id is None:
                plan_id = str(fallback_plan()[C.PLAN_ID])
            key = (plan_id, ref.installment_index)
            targets[key] = targets.get(key, Decimal(0)) + ref.amount
        if not targets:
            targets[(str(fallback_plan()[C.PLAN_ID]), None)] = ev.amount

        writes: list[PlannedWrite] = []
        if len(targets) == 1:
            ((plan_id, seq), allocated), = targets.items()
            # The whole receipt goes to its one plan; the installment is named only when the
            # receipt is wholly allocated to it (otherwise the LMS allocates from the earliest).
            amount = ev.amount
            use_seq = seq if seq is not None and allocated == ev.amount else None
            writes.append(self._payment(conn, ev, ev.doc_id, plan_id, use_seq, amount, method))
        else:
            if ev.unallocated != 0:
                raise ConflictError("unallocated_remainder",
                                    f"receipt pays {len(targets)} targets and leaves {ev.unallocated} unallocated; "
                                    "allocate it in the ERP", definitive=False)
            for plan_id, seq in sorted(targets, key=lambda t: (t[0], t[1] or 0)):
                suffix = f"{plan_id}" + (f"-{seq}" if seq is not None else "")
                writes.append(self._payment(conn, ev, f"{ev.doc_id}/{suffix}", plan_id, seq,
                                            targets[(plan_id, seq)], method))
        self._check_currency(conn, ev, writes)
        return writes

    def plan_currency(self, conn: Connection, plan_id: str) -> str:
        """A plan's currency never changes: read once from the LMS, then from the state store."""
        cached = self.store.get_mapping(conn, KIND_PLAN_CURRENCY, "*", plan_id)
        if cached:
            return cached
        plan = self._plan_by_id.get(plan_id) or self.plan(plan_id)
        cur = str(plan.get(C.PLAN_CURRENCY) or C.DEFAULT_CURRENCY)
        if self.learn:
            self.store.set_mapping(conn, KIND_PLAN_CURRENCY, "*", plan_id, cur, "learned")
        return cur

    def _check_currency(self, conn: Connection, ev: PaymentReceived, writes: list[PlannedWrite]) -> None:
        for w in writes:
            cur = self.plan_currency(conn, w.plan_id or "")
            if cur != ev.currency:
                raise ConflictError("currency_mismatch", f"receipt is in {ev.currency}; LMS plan {w.plan_id} is in "
                                    f"{cur}", definitive=False)

    def _payment(self, conn: Connection, ev: PaymentReceived, key: str, plan_id: str, seq: int | None,
                 amount: Decimal, method: str) -> PlannedWrite:
        whole = to_lms_amount(amount, field=f"amount of {ev.doc_id}")
        body: dict[str, Any] = {
            C.PAY_AMOUNT: whole,
            C.PAY_DATE: iso_with_offset(local_midnight(ev.posting_date, self.tz)),
            C.PAY_METHOD: method,
            C.PAY_REFERENCE: (ev.reference_number or ev.doc_id)[:100],
            C.PAY_NOTES: f"erp:{self.source}:{ev.doc_id}",
        }
        if seq is not None:
            body[C.PAY_INSTALLMENT_ID] = _int_or_str(self.installment_id(conn, plan_id, seq))
        return PlannedWrite(op="record_payment", base_key=f"{self.key_prefix}{key}", method="POST",
                            path=C.path(C.PATH_PLAN_PAYMENTS, plan_id=plan_id), body=body, plan_id=plan_id,
                            amount=whole)


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value
