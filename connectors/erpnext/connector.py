"""ERPNext connector: lists Payment Entries by `(modified, name)`, GETs each for its references.

* Query: `docstatus in (1, 2)`, `payment_type = Receive`, `party_type = Customer`, ordered
  `modified asc, name asc` (Frappe has NO default order on the REST list), an explicit page
  size, keyset paging `modified >= m AND (modified > m OR name > n)` until a short page.
* `modified` is naive local time in the site's zone with an optional fraction; it is
  normalised to aware UTC here and never compared as text.
* A row the ledger already decided at the same `modified|docstatus` is yielded as
  `Unchanged` without a GET, so an idle poll costs list calls only.
* Documents carrying `custom_zensbot_payment_id` / `zensbot_payment_id` came from the LMS;
  they are yielded with `origin_marker` set and the engine skips them.
"""

from __future__ import annotations

import heapq
import json
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.erpnext._http import FrappeHTTP
from sync.connector import SourceContext
from sync.errors import ConflictError, DeferredError, SourceError
from sync.events import (
    CreditNoteIssued, FeeEvent, Malformed, PaymentCancelled, PaymentReceived, PlanCancelled, PlanIssued, Position,
    Reference, ScheduleRow, Unchanged,
)
from sync.logs import get_logger
from sync.money import to_decimal
from sync.times import dst_margin, format_naive_local, parse_naive_local, zone

log = get_logger(component="erpnext")
PE = "Payment Entry"
SI = "Sales Invoice"


class ERPNextSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    api_key: SecretStr
    api_secret: SecretStr
    site_time_zone: str = "Asia/Karachi"
    host_header: str | None = None
    page_size: int = Field(100, ge=1, le=1000)
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(4, ge=1, le=10)
    max_retry_seconds: float = Field(60.0, gt=0, le=86_400)
    origin_fields: list[str] = Field(default_factory=lambda: ["custom_zensbot_payment_id", "zensbot_payment_id"])
    plan_id_field: str = "custom_zensbot_fee_plan_id"
    sync_invoices: bool = True     # submitted Sales Invoices become LMS fee plans (the fee lifecycle)
    batch_fields: list[str] = Field(default_factory=lambda: ["custom_batch", "fee_schedule"])

    @field_validator("site_time_zone")
    @classmethod
    def _tz(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


def _text(doc: dict[str, Any], field: str, *, numbers: bool = False, limit: int = 200) -> str | None:
    """A text field as a string or None; numbers only where the ERP lets people type them (references).
    Anything else (a list, an object, a boolean) is a malformed document naming the field."""
    value = doc.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value[:limit]
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConflictError("malformed_document", f"{field.replace('_', ' ')} ({field}) should be text, got "
                        f"{type(value).__name__}", definitive=False)


def _resource(doctype: str, name: str | None = None) -> str:
    path = f"/api/resource/{quote(doctype)}"
    return f"{path}/{quote(name, safe='')}" if name is not None else path


class ERPNextConnector:
    name: ClassVar[str] = "erpnext"
    settings_model: ClassVar[type[BaseModel]] = ERPNextSettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: ERPNextSettings, *, transport: Any = None,
                 stop_event: threading.Event | None = None) -> None:
        self.settings = settings
        self.tz = zone(settings.site_time_zone)
        self.http = FrappeHTTP(
            url=settings.url, api_key=settings.api_key.get_secret_value(),
            api_secret=settings.api_secret.get_secret_value(), timeout=settings.timeout_seconds,
            max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds,
            host_header=settings.host_header, transport=transport, stop_event=stop_event)
        self._customers: dict[str, dict[str, Any]] = {}
        self._invoices: dict[str, dict[str, Any] | None] = {}

    # --- contract ----------------------------------------------------------------------------
    def server_now(self) -> datetime | None:
        if self.http.server_now is None:
            self.http.get("/api/method/frappe.auth.get_logged_user")
        return self.http.server_now

    def close(self) -> None:
        self.http.close()

    def probe(self) -> list[str]:
        """Reach the site and run one list call of the real query shape; returns problems."""
        try:
            self.http.get("/api/method/frappe.auth.get_logged_user")
            self.http.get(_resource(PE), self._list_params(None, None, limit=1))
        except Exception as exc:  # noqa: BLE001 - `check` reports every failure as text
            return [f"erpnext {self.settings.url}: {type(exc).__name__}: {exc}"]
        return []

    @property
    def plans_from_invoices(self) -> bool:
        return self.settings.sync_invoices

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        """Payment Entries (and Sales Invoices) merged into one `(modified, name)`-ascending stream."""
        self._customers.clear()
        self._invoices.clear()
        streams = [self._rows(PE, since, until)]
        if self.settings.sync_invoices:
            streams.append(self._rows(SI, since, until))
        for _pos, doctype, row in heapq.merge(*streams, key=lambda item: item[0]):
            event = self._event_for(row, ctx) if doctype == PE else self._invoice_event_for(row, ctx)
            if event is not None:
                yield event

    def _rows(self, doctype: str, since: Position | None, until: datetime | None) -> Iterator[tuple[Position, str, dict]]:
        """One doctype's rows, keyset-paged until a short page, with their parsed positions.

        Pages continue from the last row's own naive `modified` text and name, i.e. in the server's
        ordering: around a DST fall-back naive local time repeats an hour, and converting a UTC
        position back to naive time would skip rows of the repeated hour. The first page starts
        one DST shift earlier for zones that observe DST, for the same reason."""
        start: tuple[str, str] | None = None
        if since is not None:
            start = (format_naive_local(since.changed_at - self._dst_margin(since.changed_at), self.tz), since.doc_id)
        after = start
        while True:
            try:
                body = self.http.get(_resource(doctype), self._list_params(after, until, doctype=doctype))
            except LookupError as exc:
                raise SourceError(f"ERP has no {doctype} list (404): {exc}") from None
            rows = body.get("data")
            if not isinstance(rows, list):
                rows = []
            for row in rows:
                if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                    continue
                raw = row.get("modified")
                if not isinstance(raw, str):
                    continue
                after = (raw, row["name"])
                try:
                    pos = Position(parse_naive_local(raw, self.tz), row["name"])
                except ValueError:
                    continue   # cannot be placed on the cursor
                yield pos, doctype, row
            if len(rows) < self.settings.page_size:
                return

    def _dst_margin(self, moment: datetime) -> timedelta:
        """How far naive local time can run backwards in this zone (0 where there is no DST)."""
        return dst_margin(self.tz, moment)

    # --- listing -----------------------------------------------------------------------------
    def _list_params(self, after: tuple[str, str] | None, until: datetime | None, limit: int | None = None,
                     doctype: str = PE) -> dict[str, str]:
        filters: list[list[Any]] = [["docstatus", "in", [1, 2]]]
        if doctype == PE:
            filters += [["payment_type", "=", "Receive"], ["party_type", "=", "Customer"]]
        or_filters: list[list[Any]] = []
        if after is not None:
            m, name = after
            filters.append(["modified", ">=", m])
            if name:
                or_filters = [["modified", ">", m], ["name", ">", name]]
        if until is not None:
            filters.append(["modified", "<", format_naive_local(until, self.tz)])
        params = {
            "fields": json.dumps(["name", "modified", "docstatus"]),
            "filters": json.dumps(filters),
            "order_by": "modified asc, name asc",
            "limit_start": "0",
            "limit_page_length": str(limit or self.settings.page_size),
        }
        if or_filters:
            params["or_filters"] = json.dumps(or_filters)
        return params

    def _event_for(self, row: Any, ctx: SourceContext) -> FeeEvent | None:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            return None
        name = row["name"]
        try:
            changed = parse_naive_local(str(row.get("modified", "")), self.tz)
        except ValueError:
            return None   # cannot place it on the cursor; a row without a modified is not a document
        docstatus = row.get("docstatus")
        if docstatus == 0:
            return None   # drafts are filtered server-side; never trust that alone
        version = f"{row.get('modified')}|{docstatus}"
        pos = Position(changed, name)
        if ctx.seen(name, version):
            return Unchanged(doc_id=name, position=pos, version=version)
        try:
            doc = self.http.get(_resource(PE, name)).get("data")
        except LookupError:
            if docstatus == 2:   # a cancelled entry may be deleted (submitted ones cannot): still a cancellation
                return PaymentCancelled(doc_id=name, position=pos, version=version)
            raise DeferredError(f"Payment Entry {name} was listed but its GET answered 404; it is read again next "
                                "cycle (the cursor stays before it)") from None
        if not isinstance(doc, dict):
            return Malformed(doc_id=name, position=pos, version=version, problem="single GET returned no document")
        try:
            return self._normalise(doc, pos, version)
        except ConflictError as exc:
            return Malformed(doc_id=name, position=pos, version=version, problem=exc.detail, raw=doc)
        except (KeyError, TypeError, ValueError) as exc:
            return Malformed(doc_id=name, position=pos, version=version,
                             problem=f"{type(exc).__name__}: {exc}", raw=doc)

    # --- normalising -------------------------------------------------------------------------
    def _normalise(self, doc: dict[str, Any], pos: Position, version: str) -> FeeEvent:
        name = doc["name"]
        docstatus = doc.get("docstatus")
        if docstatus == 2:
            amended = doc.get("amended_from")   # only informative on a cancellation: never a reason to refuse it
            return PaymentCancelled(doc_id=name, position=pos, version=version,
                                    amended_from=amended if isinstance(amended, str) else None)
        if docstatus != 1:
            raise ConflictError("malformed_document", f"unexpected docstatus {docstatus!r}", definitive=False)
        origin = next((str(doc[f]) for f in self.settings.origin_fields if doc.get(f)), None)
        party = doc.get("party")
        if not isinstance(party, str) or not party:
            raise ConflictError("malformed_document", "party (customer) is missing", definitive=False)
        currency = _text(doc, "paid_from_account_currency") or _text(doc, "party_account_currency")
        if not currency or len(currency) != 3 or not currency.isalpha():
            raise ConflictError("malformed_document", f"paid_from_account_currency {currency!r} is not a currency code",
                                definitive=False)
        amount = to_decimal(doc.get("paid_amount"), field="paid_amount")
        try:
            posting = date.fromisoformat(str(doc.get("posting_date")))
        except ValueError:
            raise ConflictError("malformed_document", f"posting_date {doc.get('posting_date')!r} is not a date",
                                definitive=False) from None
        refs = []
        raw_refs = doc.get("references") or []
        if not isinstance(raw_refs, list):
            raise ConflictError("malformed_document", "references is not a list", definitive=False)
        if origin is None:
            for r in sorted(raw_refs, key=lambda r: r.get("idx", 0) if isinstance(r, dict) else 0):
                if not isinstance(r, dict):
                    continue
                refs.append(self._reference(r))
        unallocated = to_decimal(doc.get("unallocated_amount", 0) or 0, field="unallocated_amount")
        email = None
        if origin is None:
            email = self._customer(party).get("email_id")
        return PaymentReceived(
            doc_id=name, position=pos, version=version, customer=party, customer_email=email,
            amount=amount, currency=currency, posting_date=posting, method=_text(doc, "mode_of_payment"),
            reference_number=_text(doc, "reference_no", numbers=True, limit=140), references=tuple(refs),
            unallocated=unallocated, amended_from=_text(doc, "amended_from"), origin_marker=origin, raw=doc)

    def _reference(self, r: dict[str, Any]) -> Reference:
        doctype = str(r.get("reference_doctype") or "")
        inv_name = r.get("reference_name")
        amount = to_decimal(r.get("allocated_amount"), field="references.allocated_amount")
        term = r.get("payment_term") or None
        index = None
        plan_id = None
        if doctype == "Sales Invoice" and isinstance(inv_name, str):
            inv = self._invoice(inv_name)
            if inv is None:
                # ERPNext keeps a submitted receipt's invoice, so this is a read permission or a site being
                # restored. Not a reason to stop the whole source (it used to defer every run, forever):
                # the receipt goes on without the invoice's plan id and installment, so it waits for the
                # invoice's plan and becomes `plan_not_created` after mapping.plan_wait_limit, or goes
                # to the student's single active plan when plans do not come from invoices.
                log.warning("erpnext.invoice_missing", invoice=inv_name, answer=404)
            if inv is not None:
                plan_id = inv.get(self.settings.plan_id_field) or None
                if term:
                    terms = [row.get("payment_term") for row in inv.get("payment_schedule") or []
                             if isinstance(row, dict)]
                    if term in terms:
                        index = terms.index(term) + 1
        return Reference(invoice_id=inv_name if isinstance(inv_name, str) else None, amount=amount,
                         installment_term=term, installment_index=index, doctype=doctype,
                         lms_plan_id=str(plan_id) if plan_id else None)

    # --- invoices: plans, cancellations, credit notes -------------------------------------------------
    def _invoice_event_for(self, row: dict[str, Any], ctx: SourceContext) -> FeeEvent | None:
        name = row["name"]
        changed = parse_naive_local(str(row.get("modified", "")), self.tz)
        docstatus = row.get("docstatus")
        if docstatus == 0:
            return None
        version = f"{row.get('modified')}|{docstatus}"
        pos = Position(changed, name)
        if ctx.seen(name, version):
            return Unchanged(doc_id=name, position=pos, version=version)
        self._invoices.pop(name, None)
        doc = self._invoice(name)
        if doc is None:
            if docstatus == 2:
                return PlanCancelled(doc_id=name, position=pos, version=version)
            raise DeferredError(f"Sales Invoice {name} was listed but its GET answered 404; it is read again next "
                                "cycle (the cursor stays before it)")
        try:
            return self._normalise_invoice(doc, pos, version)
        except ConflictError as exc:
            return Malformed(doc_id=name, position=pos, version=version, problem=exc.detail, raw=doc)
        except (KeyError, TypeError, ValueError) as exc:
            return Malformed(doc_id=name, position=pos, version=version, problem=f"{type(exc).__name__}: {exc}",
                             raw=doc)

    def _normalise_invoice(self, doc: dict[str, Any], pos: Position, version: str) -> FeeEvent | None:
        name = doc["name"]
        plan_id = doc.get(self.settings.plan_id_field) or None
        is_return = bool(doc.get("is_return"))
        if doc.get("docstatus") == 2:
            if is_return:
                return None   # a cancelled credit note changes nothing that was written
            return PlanCancelled(doc_id=name, position=pos, version=version,
                                 lms_plan_id=str(plan_id) if plan_id else None)
        currency = _text(doc, "currency")
        if not currency or len(currency) != 3 or not currency.isalpha():
            raise ConflictError("malformed_document", f"currency {currency!r} is not a currency code", definitive=False)
        posting = date.fromisoformat(str(doc.get("posting_date")))
        grand = to_decimal(doc.get("grand_total"), field="grand_total")
        if is_return:
            against = doc.get("return_against")
            if not against:
                raise ConflictError("malformed_document", "credit note without return_against", definitive=False)
            return CreditNoteIssued(doc_id=name, position=pos, version=version, against_invoice=str(against),
                                    amount=-grand, currency=currency, posting_date=posting)
        customer = doc.get("customer")
        if not isinstance(customer, str) or not customer:
            raise ConflictError("malformed_document", "customer is missing", definitive=False)
        discount = to_decimal(doc.get("discount_amount") or 0, field="discount_amount")
        schedule = []
        for i, r in enumerate(doc.get("payment_schedule") or []):
            if not isinstance(r, dict):
                continue
            schedule.append(ScheduleRow(
                due_date=date.fromisoformat(str(r.get("due_date"))),
                amount=to_decimal(r.get("payment_amount"), field=f"payment_schedule[{i}].payment_amount"),
                label=r.get("description") or r.get("payment_term") or None, term=r.get("payment_term") or None))
        if not schedule:   # no schedule rows: one installment due on the invoice's due date
            due = date.fromisoformat(str(doc.get("due_date") or doc.get("posting_date")))
            schedule.append(ScheduleRow(due_date=due, amount=grand, label="Full fee"))
        batch = next((str(doc[f]) for f in self.settings.batch_fields if doc.get(f)), None)
        if batch is None:
            items = [i for i in doc.get("items") or [] if isinstance(i, dict) and i.get("item_code")]
            batch = str(items[0]["item_code"]) if items else None
        return PlanIssued(doc_id=name, position=pos, version=version, customer=customer,
                          customer_email=None if plan_id else self._customer(customer).get("email_id"),
                          batch_ref=batch, total=grand + discount, discount=discount, currency=currency,
                          posting_date=posting, schedule=tuple(schedule),
                          lms_plan_id=str(plan_id) if plan_id else None, raw=doc)

    def _customer(self, name: str) -> dict[str, Any]:
        if name not in self._customers:
            try:
                data = self.http.get(_resource("Customer", name)).get("data")
            except LookupError:
                data = None
            self._customers[name] = data if isinstance(data, dict) else {}
        return self._customers[name]

    def _invoice(self, name: str) -> dict[str, Any] | None:
        if name not in self._invoices:
            try:
                data = self.http.get(_resource("Sales Invoice", name)).get("data")
            except LookupError:
                data = None
            self._invoices[name] = data if isinstance(data, dict) else None
        return self._invoices[name]
