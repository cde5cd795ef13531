"""Odoo connector: inbound customer `account.payment` records by a `(write_date, id)` keyset cursor.

* Query: `payment_type = inbound`, `partner_type = customer`, `state != draft`, ordered
  `write_date asc, id asc` (the model's default order is `date desc, name desc`), an explicit
  `limit`, keyset `(write_date >= m+1s) OR (write_date >= m AND id > n)` until a short page.
* `write_date` is naive UTC. The database keeps microseconds (the transaction's `NOW()`) but
  the ORM answers whole seconds, so rows that *read* alike are ordered by a fraction we cannot
  see. Positions are therefore whole seconds, and the last second of each full page is read
  again on its own, by `id` (`m <= write_date < m+1s AND id > n`, ordered `id asc`), before
  moving to `write_date >= m+1s`. Every yielded position is ascending and no row of a second
  that spans a page boundary is skipped.
* States by version: 16/17 `posted` → received, `cancel` → cancelled; 18/19 `in_process`/`paid`
  → received, `canceled`/`rejected` → cancelled; `draft` is never yielded. The version string
  is `"<write_date>|<state>|<digest of the listed fields>"` (`write_date` has whole seconds, so
  an edit within the same second as the synced version changes only the digest); a row the
  ledger already decided at that version is `Unchanged` and costs nothing more.
* Partner e-mails (`res.partner`) and invoices (`account.move`: name, per-payment applied
  amount from `invoice_payments_widget`, optional LMS plan field) are read in one batch per page
  and cached for the run.
* Deletion is `unlink` with no tombstone: `snapshot()` lists the ids (and versions) in a window
  for the reconcile pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.odoo._rpc import OdooRPC
from sync.connector import SourceContext
from sync.errors import ConflictError, SourceError
from sync.events import (
    FeeEvent,
    Malformed,
    PaymentCancelled,
    PaymentReceived,
    Position,
    Reference,
    Unchanged,
)
from sync.logs import get_logger
from sync.money import to_decimal
from sync.times import parse_duration, parse_naive_local, zone

log = get_logger(component="odoo")

PAYMENT = "account.payment"
RECEIVED = {16: {"posted"}, 17: {"posted"}, 18: {"in_process", "paid"}, 19: {"in_process", "paid"}}
CANCELLED = {16: {"cancel"}, 17: {"cancel"}, 18: {"canceled", "rejected"}, 19: {"canceled", "rejected"}}
ONE_SECOND = timedelta(seconds=1)
_UTC_ZONE = zone("UTC")


class OdooSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    database: str
    login: str | None = None                 # JSON-RPC `authenticate` needs it; JSON-2 does not
    api_key: SecretStr
    version: int = 17                        # 16, 17, 18 or 19
    protocol: str = "jsonrpc"                # "jsonrpc" (16-19) or "json2" (19+)
    page_size: int = Field(100, ge=1, le=1000)
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(4, ge=1, le=10)
    max_retry_seconds: float = Field(60.0, gt=0, le=86_400)
    reconcile_window: str = "7d"
    method_field: str = "journal_id"         # or "payment_method_line_id": whose name is the mode of payment
    origin_fields: list[str] = Field(default_factory=list)   # custom fields marking LMS-originated payments
    plan_id_field: str | None = None         # custom field on account.move holding the LMS fee plan id

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v not in RECEIVED:
            raise ValueError("must be 16, 17, 18 or 19")
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v not in ("jsonrpc", "json2"):
            raise ValueError('must be "jsonrpc" or "json2"')
        return v

    @field_validator("method_field")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in ("journal_id", "payment_method_line_id"):
            raise ValueError('must be "journal_id" or "payment_method_line_id"')
        return v

    @field_validator("reconcile_window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _combination(self) -> OdooSettings:
        if self.protocol == "json2" and self.version < 19:
            raise ValueError("protocol json2 needs Odoo 19 or later (use jsonrpc for 16-18)")
        if self.protocol == "jsonrpc" and not self.login:
            raise ValueError("login is required with protocol jsonrpc")
        return self

    def reconcile_window_td(self) -> timedelta:
        return parse_duration(self.reconcile_window)


def _fmt(moment: datetime) -> str:
    """Aware UTC -> the naive `YYYY-MM-DD HH:MM:SS` Odoo compares `write_date` against (whole seconds)."""
    return moment.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")


def _floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _pos_id(pid: int) -> str:
    return f"{pid:012d}"   # string order == numeric order, as the server's `id asc`


def _id_of(doc_id: str) -> int:
    return int(doc_id) if doc_id and doc_id.isdigit() else 0


def _pair_name(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
        return value[1]
    return None


def _pair_id(value: Any) -> int | None:
    if isinstance(value, list) and value and isinstance(value[0], int) and not isinstance(value[0], bool):
        return value[0]
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class OdooConnector:
    name: ClassVar[str] = "odoo"
    settings_model: ClassVar[type[BaseModel]] = OdooSettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: OdooSettings, *, transport: Any = None, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.settings = settings
        self.rpc = OdooRPC(url=settings.url, database=settings.database, login=settings.login,
                           api_key=settings.api_key.get_secret_value(), protocol=settings.protocol,
                           version=settings.version, timeout=settings.timeout_seconds,
                           max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds,
                           transport=transport, stop_event=stop_event, sleep=sleep)
        self._received = RECEIVED[settings.version]
        self._cancelled = CANCELLED[settings.version]
        self._invoice_field = "reconciled_invoice_ids" if settings.version < 18 else "invoice_ids"
        self._memo_field = "ref" if settings.version < 18 else "memo"
        self._partners: dict[int, dict[str, Any]] = {}
        self._moves: dict[int, dict[str, Any] | None] = {}

    # --- contract ----------------------------------------------------------------------------
    def server_now(self) -> datetime | None:
        if self.rpc.server_now is None:
            self.rpc.ping()
        return self.rpc.server_now

    def close(self) -> None:
        self.rpc.close()

    def probe(self) -> list[str]:
        """Authenticate and run one list call of the real query shape; returns problems."""
        try:
            self.rpc.authenticate()
            self._search(self._base_domain(None), order="write_date asc, id asc", limit=1)
        except Exception as exc:  # noqa: BLE001 - `check` reports every failure as text
            return [f"odoo {self.settings.url}: {type(exc).__name__}: {exc}"]
        return []

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        self._partners.clear()
        self._moves.clear()
        base = self._base_domain(until)
        page = self.settings.page_size
        cur_sec = _floor(since.changed_at) if since is not None else None
        cur_id = _id_of(since.doc_id) if since is not None else 0
        while True:
            rows = self._search(base + self._keyset(cur_sec, cur_id), order="write_date asc, id asc", limit=page)
            if len(rows) < page:
                yield from self._events(sorted(rows, key=self._row_key), ctx)
                return
            last = self._second(rows[-1])
            if last is None:
                raise SourceError(f"Odoo returned account.payment {rows[-1].get('id')} without a readable write_date")
            complete = [r for r in rows if (self._second(r) or last) < last]
            yield from self._events(sorted(complete, key=self._row_key), ctx)
            yield from self._second_by_id(last, cur_id if last == cur_sec else 0, base, ctx)
            cur_sec, cur_id = last + ONE_SECOND, 0

    def snapshot(self, since: datetime, until: datetime | None = None) -> dict[str, str]:
        """doc_id -> version of every non-draft inbound customer payment whose write_date is in [since, until).

        The window is rounded down to whole seconds at both ends. A payment missing here that the
        ledger holds was deleted (unlink) or reset to draft.
        """
        domain = self._base_domain(until) + [("write_date", ">=", _fmt(_floor(since)))]
        out: dict[str, str] = {}
        after = 0
        while True:
            rows = self.rpc.call(PAYMENT, "search_read", {
                "domain": domain + ([("id", ">", after)] if after else []), "fields": self._fields(),
                "order": "id asc", "limit": self.settings.page_size})
            if not isinstance(rows, list):
                raise SourceError("Odoo search_read answered something that is not a list")
            for r in rows:
                if isinstance(r, dict) and isinstance(r.get("id"), int):
                    out[str(r["id"])] = _version(r)
            if len(rows) < self.settings.page_size:
                return out
            after = rows[-1]["id"]

    # --- querying ----------------------------------------------------------------------------
    def _base_domain(self, until: datetime | None) -> list[Any]:
        domain: list[Any] = [("payment_type", "=", "inbound"), ("partner_type", "=", "customer"),
                             ("state", "!=", "draft")]
        if until is not None:
            domain.append(("write_date", "<", _fmt(_floor(until))))
        return domain

    @staticmethod
    def _keyset(sec: datetime | None, after_id: int) -> list[Any]:
        if sec is None:
            return []
        if not after_id:
            return [("write_date", ">=", _fmt(sec))]
        return ["|", ("write_date", ">=", _fmt(sec + ONE_SECOND)),
                "&", ("write_date", ">=", _fmt(sec)), ("id", ">", after_id)]

    def _fields(self) -> list[str]:
        fields = ["id", "name", "write_date", "state", "payment_type", "partner_type", "amount", "currency_id",
                  "partner_id", "date", self.settings.method_field, "payment_reference", self._memo_field,
                  self._invoice_field]
        return fields + [f for f in self.settings.origin_fields if f not in fields]

    def _search(self, domain: list[Any], *, order: str, limit: int) -> list[dict[str, Any]]:
        rows = self.rpc.call(PAYMENT, "search_read", {"domain": domain, "fields": self._fields(), "order": order,
                                                      "limit": limit})
        if not isinstance(rows, list):
            raise SourceError("Odoo search_read answered something that is not a list")
        return [r for r in rows if isinstance(r, dict)]

    def _second_by_id(self, sec: datetime, after_id: int, base: list[Any], ctx: SourceContext) -> Iterator[FeeEvent]:
        """Every row whose write_date reads as `sec`, by id (their database order depends on hidden fractions)."""
        page = self.settings.page_size
        while True:
            domain = base + [("write_date", ">=", _fmt(sec)), ("write_date", "<", _fmt(sec + ONE_SECOND))]
            if after_id:
                domain.append(("id", ">", after_id))
            rows = self._search(domain, order="id asc", limit=page)
            yield from self._events(sorted(rows, key=self._row_key), ctx)
            if len(rows) < page:
                return
            after_id = rows[-1]["id"]

    @staticmethod
    def _second(row: dict[str, Any]) -> datetime | None:
        text = row.get("write_date")
        if not isinstance(text, str):
            return None
        try:
            return _floor(parse_naive_local(text, _UTC_ZONE))
        except ValueError:
            return None

    def _row_key(self, row: dict[str, Any]) -> tuple[datetime, int]:
        return (self._second(row) or datetime.min.replace(tzinfo=UTC), int(row.get("id") or 0))

    # --- events ------------------------------------------------------------------------------
    def _events(self, rows: list[dict[str, Any]], ctx: SourceContext) -> Iterator[FeeEvent]:
        todo: list[tuple[dict[str, Any], Position, str]] = []
        out: list[FeeEvent | tuple[dict[str, Any], Position, str]] = []
        for row in rows:
            pid = row.get("id")
            sec = self._second(row)
            if not isinstance(pid, int) or isinstance(pid, bool) or sec is None:
                log.warning("odoo.row_skipped", reason="no id or unreadable write_date", row_id=str(pid))
                continue
            state = row.get("state")
            if state == "draft":
                continue   # filtered by the query too; never trust that alone
            pos = Position(sec, _pos_id(pid))
            version = _version(row)
            doc_id = str(pid)
            if ctx.seen(doc_id, version):
                out.append(Unchanged(doc_id=doc_id, position=pos, version=version))
            elif state in self._cancelled:
                out.append(PaymentCancelled(doc_id=doc_id, position=pos, version=version))
            else:
                todo.append((row, pos, version))
                out.append((row, pos, version))
        self._prefetch([t[0] for t in todo])
        for item in out:
            if isinstance(item, tuple):
                yield self._received_event(*item)
            else:
                yield item

    def _prefetch(self, rows: list[dict[str, Any]]) -> None:
        """Read the partners and invoices of a page's new rows in one call each (cached for the run)."""
        partners = {i for r in rows if (i := _pair_id(r.get("partner_id"))) and i not in self._partners}
        if partners:
            found = self.rpc.call("res.partner", "read", {"ids": sorted(partners), "fields": ["id", "name", "email"]})
            for p in found if isinstance(found, list) else []:
                if isinstance(p, dict) and isinstance(p.get("id"), int):
                    self._partners[p["id"]] = p
            for i in partners:
                self._partners.setdefault(i, {})
        invoices: set[int] = set()
        for r in rows:
            ids = r.get(self._invoice_field)
            if isinstance(ids, list):
                invoices.update(i for i in ids if isinstance(i, int) and i not in self._moves)
        if invoices:
            fields = ["id", "name", "amount_total", "invoice_payments_widget"]
            if self.settings.plan_id_field:
                fields.append(self.settings.plan_id_field)
            found = self.rpc.call("account.move", "read", {"ids": sorted(invoices), "fields": fields})
            for m in found if isinstance(found, list) else []:
                if isinstance(m, dict) and isinstance(m.get("id"), int):
                    self._moves[m["id"]] = m
            for i in invoices:
                self._moves.setdefault(i, None)

    def _received_event(self, row: dict[str, Any], pos: Position, version: str) -> FeeEvent:
        doc_id = str(row["id"])
        state = row.get("state")
        if state not in self._received:
            return Malformed(doc_id=doc_id, position=pos, version=version,
                             problem=f"unexpected account.payment state {state!r} for Odoo {self.settings.version}",
                             raw=row)
        try:
            return self._normalise(row, pos, version)
        except ConflictError as exc:
            return Malformed(doc_id=doc_id, position=pos, version=version, problem=exc.detail, raw=row)
        except (KeyError, TypeError, ValueError) as exc:
            return Malformed(doc_id=doc_id, position=pos, version=version, problem=f"{type(exc).__name__}: {exc}",
                             raw=row)

    def _normalise(self, row: dict[str, Any], pos: Position, version: str) -> PaymentReceived:
        doc_id = str(row["id"])
        if row.get("payment_type") != "inbound" or row.get("partner_type") != "customer":
            raise ConflictError("malformed_document", "not an inbound customer payment", definitive=False)
        partner = _pair_name(row.get("partner_id"))
        if not partner:
            raise ConflictError("malformed_document", "partner_id (customer) is missing", definitive=False)
        currency = _pair_name(row.get("currency_id"))
        if not currency:
            raise ConflictError("malformed_document", "currency_id is missing", definitive=False)
        amount = to_decimal(row.get("amount"), field="amount")
        try:
            posting = date.fromisoformat(str(row.get("date")))
        except ValueError:
            raise ConflictError("malformed_document", f"date {row.get('date')!r} is not a date",
                                definitive=False) from None
        origin = next((str(row[f]) for f in self.settings.origin_fields if row.get(f)), None)
        refs: tuple[Reference, ...] = ()
        email = None
        if origin is None:
            refs = self._references(row, amount)
            pid = _pair_id(row.get("partner_id"))
            email = _text(self._partners.get(pid or 0, {}).get("email"))
        unallocated = amount - sum((r.amount for r in refs), Decimal(0))
        name = _text(row.get("name"))
        return PaymentReceived(
            doc_id=doc_id, position=pos, version=version, customer=partner, customer_email=email, amount=amount,
            currency=currency, posting_date=posting, method=_pair_name(row.get(self.settings.method_field)),
            reference_number=_text(row.get("payment_reference")) or (name if name != "/" else None),
            references=refs, unallocated=max(unallocated, Decimal(0)), origin_marker=origin, raw=row)

    def _references(self, row: dict[str, Any], amount: Decimal) -> tuple[Reference, ...]:
        ids = [i for i in (row.get(self._invoice_field) or []) if isinstance(i, int)]
        moves = [(i, self._moves.get(i)) for i in ids]
        applied: list[Decimal | None] = [self._applied(m, row["id"]) for _, m in moves]
        if len(moves) == 1 and applied[0] is None:
            applied = [amount]
        elif any(a is None for a in applied):
            # The widget did not say: allocate in invoice order, capped by each invoice's total.
            left, applied = amount, []
            for _, m in moves:
                total = to_decimal((m or {}).get("amount_total") or 0, field="amount_total")
                take = min(left, total) if total > 0 else Decimal(0)
                applied.append(take)
                left -= take
        refs = []
        for (iid, move), part in zip(moves, applied, strict=True):
            if part is None or part <= 0:
                continue
            name = _text((move or {}).get("name"))
            plan = (move or {}).get(self.settings.plan_id_field) if self.settings.plan_id_field else None
            refs.append(Reference(invoice_id=name if name and name != "/" else str(iid), amount=part,
                                  doctype="account.move", lms_plan_id=str(plan) if plan else None))
        return tuple(refs)

    @staticmethod
    def _applied(move: dict[str, Any] | None, payment_id: int) -> Decimal | None:
        widget = (move or {}).get("invoice_payments_widget")
        if not isinstance(widget, dict) or not isinstance(widget.get("content"), list):
            return None
        parts = [c.get("amount") for c in widget["content"]
                 if isinstance(c, dict) and c.get("account_payment_id") == payment_id]
        if not parts:
            return None
        return sum((to_decimal(p, field="invoice_payments_widget.amount") for p in parts), Decimal(0))


def _version(row: dict[str, Any]) -> str:
    """`<write_date>|<state>|<digest>`: the digest covers every listed field, so an edit in the same
    whole second as the version the ledger holds still reads as a change."""
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{row.get('write_date')}|{row.get('state')}|{digest}"
