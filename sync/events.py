"""Normalised fee events: what every connector yields and the engine maps and writes.

Connectors never call the LMS. They turn ERP documents into these typed, immutable events
with `Decimal` money and aware UTC times, and the engine does the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any


MAX_DOC_ID = 255   # longer ERP document ids are malformed: each becomes an LMS payment's notes and its key


def _plain_value(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, tuple | list):
        return [_plain_value(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


@dataclass(frozen=True, order=True)
class Position:
    """A cursor value: `(changed_at, doc_id)`, never a bare timestamp (rule 1)."""

    changed_at: datetime
    doc_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {"changed_at": self.changed_at.isoformat(), "doc_id": self.doc_id}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Position:
        return cls(datetime.fromisoformat(data["changed_at"]), data.get("doc_id", ""))


@dataclass(frozen=True)
class Reference:
    """One allocation of a receipt to an ERP invoice (and maybe one of its installments)."""

    invoice_id: str | None
    amount: Decimal
    installment_term: str | None = None   # the ERP's own installment key (ERPNext: payment_term)
    installment_index: int | None = None  # 1-based position in the invoice's schedule, when known
    doctype: str = "Sales Invoice"
    lms_plan_id: str | None = None        # the invoice was created by the LMS for this plan


@dataclass(frozen=True)
class ScheduleRow:
    due_date: date
    amount: Decimal
    label: str | None = None
    term: str | None = None


@dataclass(frozen=True, kw_only=True)
class FeeEvent:
    """Common envelope: which ERP document, its cursor position and its change marker."""

    source_kind: str = "payment"
    doc_id: str
    position: Position
    version: str                      # cheap change marker, e.g. modified + docstatus
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def _plain(self, exclude: frozenset[str]) -> dict[str, Any]:
        """The fields as plain data, as `asdict` gives them, without deep-copying the excluded ones (`raw`
        can be a whole ERP document)."""
        return {f.name: _plain_value(getattr(self, f.name)) for f in fields(self) if f.name not in exclude}

    def fingerprint(self) -> str:
        """Hash of the money-relevant content (what, if it changed after a push, is a conflict)."""
        cached = self.__dict__.get("_fingerprint")   # events are immutable: computed once
        if cached is None:
            payload = self._plain(frozenset({"raw", "position", "version"}))
            cached = hashlib.sha256(json.dumps(payload, sort_keys=True, default=_canonical).encode()).hexdigest()[:32]
            self.__dict__["_fingerprint"] = cached
        return cached

    def summary_json(self) -> str:
        """`summary()` as the JSON text the ledger stores (computed once per event)."""
        cached = self.__dict__.get("_summary_json")
        if cached is None:
            cached = json.dumps(self._plain(frozenset({"raw"})), default=str)
            self.__dict__["_summary_json"] = cached
        return cached

    def summary(self) -> dict[str, Any]:
        """JSON-safe view for the ledger and conflict reports (no raw ERP payload)."""
        return json.loads(self.summary_json())


@dataclass(frozen=True, kw_only=True)
class PaymentReceived(FeeEvent):
    customer: str
    customer_email: str | None = None
    amount: Decimal
    currency: str
    posting_date: date
    method: str | None = None
    reference_number: str | None = None
    references: tuple[Reference, ...] = ()
    unallocated: Decimal = Decimal(0)
    amended_from: str | None = None
    origin_marker: str | None = None     # set when the document came FROM the LMS (rule 15)


@dataclass(frozen=True, kw_only=True)
class PaymentCancelled(FeeEvent):
    amended_from: str | None = None


@dataclass(frozen=True, kw_only=True)
class PlanIssued(FeeEvent):
    customer: str
    customer_email: str | None = None
    batch_ref: str | None = None
    total: Decimal
    discount: Decimal = Decimal(0)
    currency: str
    posting_date: date
    schedule: tuple[ScheduleRow, ...] = ()
    lms_plan_id: str | None = None       # the LMS created this invoice (custom_zensbot_fee_plan_id)


@dataclass(frozen=True, kw_only=True)
class PlanCancelled(FeeEvent):
    lms_plan_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class CreditNoteIssued(FeeEvent):
    """A credit note against an invoice: waives the unpaid installments its amount covers."""

    against_invoice: str
    amount: Decimal                      # positive amount credited
    currency: str
    posting_date: date


@dataclass(frozen=True, kw_only=True)
class Unchanged(FeeEvent):
    """The connector saw a document the ledger already decided at this version; nothing to do."""


@dataclass(frozen=True, kw_only=True)
class Malformed(FeeEvent):
    """A document the connector could not normalise; becomes a conflict naming what is wrong."""

    problem: str
    location: str = ""


def _reference_from(data: dict[str, Any]) -> Reference:
    return Reference(invoice_id=data.get("invoice_id"), amount=Decimal(str(data["amount"])),
                     installment_term=data.get("installment_term"), installment_index=data.get("installment_index"),
                     doctype=data.get("doctype", "Sales Invoice"), lms_plan_id=data.get("lms_plan_id"))


def from_summary(kind: str, data: dict[str, Any]) -> FeeEvent:
    """Rebuild an event from the JSON the ledger stored (for retries of parked documents)."""
    common = {"doc_id": data["doc_id"], "position": Position(datetime.fromisoformat(data["position"]["changed_at"]),
                                                             data["position"]["doc_id"]),
              "version": data["version"]}
    if kind == "PaymentReceived":
        return PaymentReceived(
            **common, customer=data["customer"], customer_email=data.get("customer_email"),
            amount=Decimal(str(data["amount"])), currency=data["currency"],
            posting_date=date.fromisoformat(data["posting_date"]), method=data.get("method"),
            reference_number=data.get("reference_number"),
            references=tuple(_reference_from(r) for r in data.get("references", [])),
            unallocated=Decimal(str(data.get("unallocated", "0"))), amended_from=data.get("amended_from"),
            origin_marker=data.get("origin_marker"))
    if kind == "PlanIssued":
        return PlanIssued(
            **common, customer=data["customer"], customer_email=data.get("customer_email"),
            batch_ref=data.get("batch_ref"), total=Decimal(str(data["total"])),
            discount=Decimal(str(data.get("discount", "0"))), currency=data["currency"],
            posting_date=date.fromisoformat(data["posting_date"]),
            schedule=tuple(ScheduleRow(date.fromisoformat(r["due_date"]), Decimal(str(r["amount"])), r.get("label"),
                                       r.get("term")) for r in data.get("schedule", [])),
            lms_plan_id=data.get("lms_plan_id"))
    if kind == "CreditNoteIssued":
        return CreditNoteIssued(**common, against_invoice=data["against_invoice"], amount=Decimal(str(data["amount"])),
                                currency=data["currency"], posting_date=date.fromisoformat(data["posting_date"]))
    if kind == "PlanCancelled":
        return PlanCancelled(**common, lms_plan_id=data.get("lms_plan_id"))
    if kind == "PaymentCancelled":
        return PaymentCancelled(**common, amended_from=data.get("amended_from"))
    raise ValueError(f"cannot rebuild event kind {kind!r}")
