"""Map a normalised ERP receipt to LMS writes: which plan, which installment, which key, which body.

Order (issue: main job §7): (a) the referenced invoice's LMS plan id (the LMS created that
invoice); (b) a learned or manual invoice -> plan mapping; (c) ERP customer -> LMS student
(mapping, else a unique e-mail match), then that student's single active plan in the same
currency. Every failure is a ConflictError with a kind; nothing here writes to the LMS.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from sync import contract as C
from sync.config import MappingSettings
from sync.errors import ConflictError
from sync.events import MAX_DOC_ID, CreditNoteIssued, PaymentReceived, PlanCancelled, PlanIssued
from sync.lms import LmsClient
from sync.money import money_text, to_lms_amount
from sync.state import Store
from sync.times import iso_with_offset, local_midnight

KIND_CUSTOMER = "customer_student"
KIND_INVOICE = "invoice_plan"
KIND_INSTALLMENT = "plan_installment"
KIND_PLAN_CURRENCY = "plan_currency"


class WaitForPlan(Exception):  # noqa: N818 - a signal, not an error
    """The receipt references an ERP invoice whose LMS plan this source has not created yet."""

    def __init__(self, invoice_id: str) -> None:
        super().__init__(invoice_id)
        self.invoice_id = invoice_id


MAX_KEY = 200


def idem_key(text: str) -> str:
    """The Idempotency-Key for a text derived from an ERP document: the text itself when it is printable
    ASCII of a sane length (the usual case: `ACC-PAY-2026-00001`), else a deterministic digest of it,
    because an HTTP header cannot carry other characters (ERP names can be Urdu, Arabic, ...)."""
    if text.isascii() and text.isprintable() and len(text) <= MAX_KEY:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]
    visible = "".join(ch for ch in text if ch.isascii() and ch.isalnum() or ch in "-_:/.")[:60]
    return f"{visible}~u{digest}"


def plan_marker(source: str, invoice_id: str) -> str:
    """The text feesync puts in a created plan's notes, to recognise it after an uncertain outcome."""
    return f"erp:{source}:{invoice_id}"


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
    plans_from_invoices: bool = False     # the source creates plans from its invoices: receipts wait for them
    dry_plans: dict[str, str] = field(default_factory=dict)   # dry run: invoice -> placeholder plan id
    _students: dict[str, str | None] = field(default_factory=dict)
    _plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _plan_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    _currency: dict[str, str] = field(default_factory=dict)    # plan id -> currency (it never changes)

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
        if plan_id in self.dry_plans.values():
            return f"<installment {sequence} of {plan_id}>"
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
            if not re.match(C.LMS_ID_PATTERN, lms_plan_id):
                who = f"invoice {invoice_id}" if invoice_id else "the document"
                raise ConflictError("malformed_document", f"{who} names LMS plan {lms_plan_id[:40]!r}, "
                                    "which is not an LMS plan id", definitive=False)
            return lms_plan_id
        if not invoice_id:
            return None
        return (self.settings.invoices.get(invoice_id)
                or self.store.get_mapping(conn, KIND_INVOICE, self.source, invoice_id)
                or self.dry_plans.get(invoice_id))

    # --- receipts ---------------------------------------------------------------------------
    def payment_method(self, mode: str | None) -> str:
        if mode and mode in self.settings.payment_methods:
            return self.settings.payment_methods[mode]
        if self.settings.default_payment_method:
            return self.settings.default_payment_method
        if not mode:
            raise ConflictError("unknown_payment_method",
                                "the document names no mode of payment (an empty or missing method); set "
                                "mapping.default_payment_method, or fill it in the ERP", definitive=False)
        raise ConflictError("unknown_payment_method",
                            f"ERP mode of payment {mode!r} has no LMS payment method; add it to "
                            f"mapping.payment_methods", definitive=False)

    def receipt_writes(self, conn: Connection, ev: PaymentReceived) -> list[PlannedWrite]:
        """The LMS payments for one receipt: one per referenced plan/installment, deterministic."""
        if len(ev.doc_id) > MAX_DOC_ID:
            raise ConflictError("malformed_document", f"document id is {len(ev.doc_id)} characters long; at most "
                                f"{MAX_DOC_ID} (it becomes the LMS payment's notes and key)", definitive=False)
        method = self.payment_method(ev.method)
        targets: dict[tuple[str, int | None], Decimal] = {}
        labels: dict[tuple[str, int | None], str] = {}
        student_cache: list[str] = []

        def fallback_plan() -> dict[str, Any]:
            if not student_cache:
                student_cache.append(self.student_for(conn, ev.customer, ev.customer_email))
            return self.single_active_plan(student_cache[0], ev.currency)

        for ref in ev.references:
            plan_id = self.plan_for_invoice(conn, ref.invoice_id, ref.lms_plan_id)
            if plan_id is None and self.plans_from_invoices and ref.invoice_id and ref.doctype == "Sales Invoice":
                raise WaitForPlan(ref.invoice_id)
            if plan_id is None:
                plan_id = str(fallback_plan()[C.PLAN_ID])
            key = (plan_id, ref.installment_index)
            targets[key] = targets.get(key, Decimal(0)) + ref.amount
            # the key suffix names the ERP reference (never an LMS id): a retry rebuilds the same keys
            labels.setdefault(key, f"{ref.invoice_id or 'plan'}/{ref.installment_term or ref.installment_index or '-'}")
        if not targets:
            targets[(str(fallback_plan()[C.PLAN_ID]), None)] = ev.amount

        allocated_total = sum(targets.values(), Decimal(0))
        if len(targets) > 1 and allocated_total > ev.amount:   # (one target gets the receipt's amount)
            # never more money into the LMS than the ERP received, whatever a connector made of the rest
            raise ConflictError("over_allocated", f"receipt of {money_text(ev.amount)} {ev.currency} allocates "
                                f"{money_text(allocated_total)} across its references; correct the allocation in the "
                                "ERP", definitive=False)
        writes: list[PlannedWrite] = []
        if len(targets) == 1:
            ((plan_id, seq), allocated), = targets.items()
            # The whole receipt goes to its one plan; the installment is named only when the
            # receipt is wholly allocated to it (otherwise the LMS allocates from the earliest).
            amount = ev.amount
            use_seq = seq if seq is not None and allocated == ev.amount else None
            writes.append(self._payment(conn, ev, ev.doc_id, plan_id, use_seq, amount, method))
        else:
            if ev.unallocated != 0 or allocated_total != ev.amount:
                raise ConflictError("unallocated_remainder",
                                    f"receipt pays {len(targets)} targets and leaves "
                                    f"{money_text(ev.amount - allocated_total)} unallocated; "
                                    "allocate it in the ERP", definitive=False)
            for target in sorted(targets, key=lambda t: labels[t]):
                plan_id, seq = target
                writes.append(self._payment(conn, ev, f"{ev.doc_id}/{labels[target]}", plan_id, seq,
                                            targets[target], method))
        self._check_currency(conn, ev, writes)
        return writes

    def plan_currency(self, conn: Connection, plan_id: str) -> str:
        """A plan's currency never changes: read once from the LMS, then from the state store."""
        if plan_id in self._currency:
            return self._currency[plan_id]
        if plan_id in self.dry_plans.values():
            return self._dry_currency[plan_id]
        cur = self.store.get_mapping(conn, KIND_PLAN_CURRENCY, "*", plan_id)
        if not cur:
            plan = self._plan_by_id.get(plan_id) or self.plan(plan_id)
            cur = str(plan.get(C.PLAN_CURRENCY) or C.DEFAULT_CURRENCY)
            if self.learn:
                self.store.set_mapping(conn, KIND_PLAN_CURRENCY, "*", plan_id, cur, "learned")
        self._currency[plan_id] = cur
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
        return PlannedWrite(op="record_payment", base_key=idem_key(f"{self.key_prefix}{key}"), method="POST",
                            path=C.path(C.PATH_PLAN_PAYMENTS, plan_id=plan_id), body=body, plan_id=plan_id,
                            amount=whole)


    # --- plans (the fee lifecycle) ---------------------------------------------------------------
    _dry_currency: dict[str, str] = field(default_factory=dict)
    # a dry run's view of the LMS (sync.dryrun.DryLms): the plans as its planned writes leave them
    dry_lms: Any = None

    def batch_for(self, ev: PlanIssued) -> str:
        if ev.batch_ref and ev.batch_ref in self.settings.batches:
            return self.settings.batches[ev.batch_ref]
        if self.settings.default_batch_id:
            return self.settings.default_batch_id
        raise ConflictError("unknown_batch", f"invoice {ev.doc_id}: batch {ev.batch_ref!r} has no LMS batch; add it "
                            "to mapping.batches", definitive=False)

    def plan_write(self, conn: Connection, ev: PlanIssued) -> PlannedWrite:
        """The create-plan request for an ERP invoice (deterministic: same invoice -> same body)."""
        student = self.student_for(conn, ev.customer, ev.customer_email)
        batch = self.batch_for(ev)
        total = to_lms_amount(ev.total, field=f"total of {ev.doc_id}")
        discount = to_lms_amount(ev.discount, field=f"discount of {ev.doc_id}") if ev.discount else 0
        rows = ev.schedule
        if not rows:
            raise ConflictError("malformed_document", f"invoice {ev.doc_id} has no payment schedule", definitive=False)
        amounts = [to_lms_amount(r.amount, field=f"schedule row {i + 1} of {ev.doc_id}") for i, r in enumerate(rows)]
        if sum(amounts) != total - discount:
            raise ConflictError("schedule_mismatch", f"invoice {ev.doc_id}: schedule sums to {sum(amounts)}, the "
                                f"invoice to {total - discount}", definitive=False)
        body: dict[str, Any] = {
            C.PLAN_STUDENT_ID: _int_or_str(student),
            C.PLAN_BATCH_ID: _int_or_str(batch),
            C.PLAN_TYPE: plan_type([r.due_date for r in rows]),
            C.PLAN_TOTAL_AMOUNT: total,
            C.PLAN_CURRENCY: ev.currency,
            C.PLAN_INSTALLMENTS: [
                {C.INST_SEQUENCE: i + 1, C.INST_AMOUNT_DUE: amounts[i], C.INST_DUE_DATE: r.due_date.isoformat(),
                 C.INST_LABEL: (r.label or r.term or f"Installment {i + 1}")[:100]}
                for i, r in enumerate(rows)],
            C.PLAN_NOTES: plan_marker(self.source, ev.doc_id),
        }
        if discount:
            body[C.PLAN_DISCOUNT_TYPE] = "flat"
            body[C.PLAN_DISCOUNT_VALUE] = discount
        return PlannedWrite(op="create_plan", base_key=idem_key(f"{self.key_prefix}plan:{ev.doc_id}"), method="POST",
                            path=C.PATH_FEE_PLANS, body=body, student_id=student, amount=total - discount)

    def find_created_plan(self, student_id: str, invoice_id: str) -> dict[str, Any] | None:
        """After an uncertain create: the plan already made for this invoice, recognised by its marker."""
        marker = plan_marker(self.source, invoice_id)
        self.forget_student(student_id)
        for p in self.plans_of(student_id):
            if marker in str(p.get(C.PLAN_NOTES) or ""):
                return p
        return None

    def learn_plan(self, conn: Connection, invoice_id: str, plan: dict[str, Any], origin: str) -> None:
        plan_id = str(plan[C.PLAN_ID])
        self.store.set_mapping(conn, KIND_INVOICE, self.source, invoice_id, plan_id, origin)
        if plan.get(C.PLAN_CURRENCY):
            self.store.set_mapping(conn, KIND_PLAN_CURRENCY, "*", plan_id, str(plan[C.PLAN_CURRENCY]), "learned")
        for inst in plan.get(C.PLAN_INSTALLMENTS) or []:
            if inst.get(C.INST_ID) is not None and inst.get(C.INST_SEQUENCE) is not None:
                self.store.set_mapping(conn, KIND_INSTALLMENT, "*", f"{plan_id}#{inst[C.INST_SEQUENCE]}",
                                       str(inst[C.INST_ID]), "learned")

    def dry_plan(self, ev: PlanIssued, body: dict[str, Any] | None = None) -> str:
        placeholder = f"<new plan for {ev.doc_id}>"
        self.dry_plans[ev.doc_id] = placeholder
        self._dry_currency[placeholder] = ev.currency
        # the plan a real run would create, installment by installment, so that the dry run's receipts and
        # credit notes against it plan what the real run then writes (waivers need the unpaid installments)
        if self.dry_lms is not None and body is not None:
            self.dry_lms.add_new_plan(placeholder, body)
        return placeholder

    def cancel_write(self, conn: Connection, ev: PlanCancelled) -> PlannedWrite | None:
        plan_id = self.plan_for_invoice(conn, ev.doc_id, ev.lms_plan_id)
        if plan_id is None:
            return None
        return PlannedWrite(op="cancel_plan", base_key=idem_key(f"{self.key_prefix}cancel:{ev.doc_id}"), method="POST",
                            path=C.path(C.PATH_PLAN_CANCEL, plan_id=plan_id), plan_id=plan_id,
                            body={C.PLAN_CANCEL_REASON: f"Invoice {ev.doc_id} was cancelled in the ERP"})

    def waive_writes(self, conn: Connection, ev: CreditNoteIssued) -> tuple[list[PlannedWrite], Decimal]:
        """The installments a credit note fully covers (policy order) and the remainder it leaves."""
        plan_id = self.plan_for_invoice(conn, ev.against_invoice, None)
        if plan_id is None:
            if self.plans_from_invoices:
                raise WaitForPlan(ev.against_invoice)
            raise ConflictError("no_plan_for_invoice", f"credit note {ev.doc_id}: invoice {ev.against_invoice} has no "
                                "LMS plan", definitive=False)
        if self.dry_lms is not None and (plan_id in self.dry_plans.values() or self.dry_lms.knows(plan_id)):
            plan = self.dry_lms.plan(plan_id)   # as this dry run's earlier writes left it
        else:
            self._plan_by_id.pop(plan_id, None)
            plan = self.plan(plan_id)
        if str(plan.get(C.PLAN_CURRENCY) or C.DEFAULT_CURRENCY) != ev.currency:
            raise ConflictError("currency_mismatch", f"credit note is in {ev.currency}; plan {plan_id} is in "
                                f"{plan.get(C.PLAN_CURRENCY)}", definitive=False)
        unpaid = [i for i in plan.get(C.PLAN_INSTALLMENTS) or []
                  if i.get(C.INST_STATUS) in (C.INST_PENDING, C.INST_OVERDUE) and not i.get(C.INST_AMOUNT_PAID)]
        unpaid.sort(key=lambda i: i[C.INST_SEQUENCE], reverse=self.settings.credit_note_policy == "latest_first")
        remaining = ev.amount
        out = []
        for inst in unpaid:
            due = Decimal(inst[C.INST_AMOUNT_DUE])
            if due > remaining:
                break
            remaining -= due
            out.append(PlannedWrite(
                op="waive_installment", base_key=idem_key(f"{self.key_prefix}waive:{ev.doc_id}:{inst[C.INST_SEQUENCE]}"),
                method="POST", path=C.path(C.PATH_INSTALLMENT_WAIVE, plan_id=plan_id, installment_id=inst[C.INST_ID]),
                body={C.INST_WAIVE_REASON: f"Credit note {ev.doc_id} against {ev.against_invoice}"},
                plan_id=plan_id, amount=int(due)))
        return out, remaining


def plan_type(due_dates: list[Any]) -> str:
    """One row -> one_time; due dates one calendar month apart -> monthly; otherwise installment."""
    if len(due_dates) == 1:
        return "one_time"
    months = [(d.year * 12 + d.month) for d in due_dates]
    if all(b - a == 1 for a, b in zip(months, months[1:], strict=False)) and \
            len({min(d.day, 28) for d in due_dates}) == 1:
        return "monthly"
    return "installment"


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value

