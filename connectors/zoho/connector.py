"""Zoho Books connector: customer payments by a windowed rescan (no modified-since filter exists).

* `GET /customerpayments?sort_column=created_time&sort_order=D&page=&per_page=` newest first,
  paged until `page_context.has_more_page` is false or a page ends before the window
  (`rescan_window` behind the cursor). Both list keys are accepted (`customerpayments`, the
  live answer, and `customer_payments`, the OpenAPI name).
* Every payment in the window is re-examined each run; the version is its
  `last_modified_time` (list) / `updated_time` (detail), so an edit in the window is seen, and a
  row the ledger already decided at that version is `Unchanged` without a detail call.
* Positions are `(updated_time in UTC, payment_id)`; all rows of the window are sorted before
  anything is yielded, so positions ascend within a run.
* Deletions leave no trace in Zoho. The ids of the window are remembered in the state store's
  memo; an id that disappears from a later window is confirmed with a detail GET (404) and
  yielded as `PaymentCancelled` (version `deleted|<last version>`), so a deleted receipt that
  was pushed opens `reversed_in_erp`. `snapshot()` lists the window for the reconcile pass.
* A payment with `status: failure` (a failed gateway charge) is yielded as `PaymentCancelled`.
* The detail `GET /customerpayments/{id}` gives `invoices[]` (applied amounts) → References.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.zoho._http import ZohoHTTP
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
from sync.times import parse_duration

log = get_logger(component="zoho")

PLAN_BUDGETS = {"free": 1000, "standard": 2000, "professional": 5000, "premium": 10000, "elite": 10000,
                "ultimate": 10000}
MODE_NAMES = {"cash": "Cash", "check": "Check", "cheque": "Cheque", "banktransfer": "Bank Transfer",
              "bankremittance": "Bank Remittance", "creditcard": "Credit Card", "autotransaction": "Auto Transaction",
              "others": "Others"}
LIST_KEYS = ("customerpayments", "customer_payments")


class ZohoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_center: str = "com"                 # com, eu, in, com.au, jp, ca, com.cn, sa, uk
    api_base: str | None = None              # overrides https://www.zohoapis.<dc>/books/v3
    accounts_base: str | None = None         # overrides https://accounts.zoho.<dc>
    organization_id: str
    client_id: str
    client_secret: SecretStr
    refresh_token: SecretStr
    page_size: int = Field(200, ge=1, le=200)
    requests_per_minute: int = Field(100, ge=1, le=100)
    plan: str | None = None                  # free, standard, professional, premium, elite, ultimate
    daily_budget: int | None = Field(None, ge=1)   # default: the plan's daily limit, else 1000
    rescan_window: str = "3d"
    sort_column: str = "created_time"        # or "last_modified_time" where the organisation supports it
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(4, ge=1, le=10)
    max_retry_seconds: float = Field(180.0, gt=0, le=86_400)
    rate_limit_backoff_seconds: float = Field(60.0, ge=0)
    token_refresh_margin_seconds: float = Field(300.0, ge=0)
    origin_fields: list[str] = Field(default_factory=lambda: ["cf_zensbot_payment_id"])

    @field_validator("data_center")
    @classmethod
    def _dc(cls, v: str) -> str:
        v = v.strip().lower().lstrip(".")
        if not v or not all(part.isalpha() for part in v.split(".")):
            raise ValueError("must be a Zoho data-centre domain suffix such as com, eu, in, com.au")
        return v

    @field_validator("api_base", "accounts_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else v

    @field_validator("plan")
    @classmethod
    def _plan(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in PLAN_BUDGETS:
            raise ValueError(f"must be one of {', '.join(PLAN_BUDGETS)}")
        return v.lower() if v else v

    @field_validator("rescan_window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("sort_column")
    @classmethod
    def _sort(cls, v: str) -> str:
        if v not in ("created_time", "last_modified_time"):
            raise ValueError('must be "created_time" or "last_modified_time"')
        return v

    def api_url(self) -> str:
        return self.api_base or f"https://www.zohoapis.{self.data_center}/books/v3"

    def accounts_url(self) -> str:
        return self.accounts_base or f"https://accounts.zoho.{self.data_center}"

    def budget(self) -> int:
        return self.daily_budget or PLAN_BUDGETS.get(self.plan or "", 1000)


def parse_zoho_time(text: Any) -> datetime | None:
    """`2016-06-05T02:15:20-0700` (offset without a colon; with one also accepted) → aware UTC."""
    if not isinstance(text, str) or not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(text, fmt).astimezone(UTC)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else None


def _pos_id(pid: str) -> str:
    return pid.rjust(24, "0") if pid.isdigit() else pid


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class ZohoConnector:
    name: ClassVar[str] = "zoho"
    settings_model: ClassVar[type[BaseModel]] = ZohoSettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: ZohoSettings, *, transport: Any = None, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], Any] | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.http = ZohoHTTP(
            api_base=settings.api_url(), accounts_base=settings.accounts_url(),
            organization_id=settings.organization_id, client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            refresh_token=settings.refresh_token.get_secret_value(), timeout=settings.timeout_seconds,
            max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds,
            requests_per_minute=settings.requests_per_minute, daily_budget=settings.budget(),
            backoff_seconds=settings.rate_limit_backoff_seconds,
            refresh_margin=settings.token_refresh_margin_seconds, transport=transport, stop_event=stop_event,
            sleep=sleep, clock=clock)
        self.rescan = parse_duration(settings.rescan_window)
        self._details: dict[str, dict[str, Any] | None] = {}
        self._memo_key = f"zoho:{settings.organization_id}:window"

    # --- contract ----------------------------------------------------------------------------
    def server_now(self) -> datetime | None:
        if self.http.server_now is None:
            self._page(1, 1)
        return self.http.server_now

    def close(self) -> None:
        self.http.close()

    def probe(self) -> list[str]:
        try:
            self._page(1, 1)
        except Exception as exc:  # noqa: BLE001 - `check` reports every failure as text
            return [f"zoho {self.settings.api_url()}: {type(exc).__name__}: {exc}"]
        return []

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        self._details.clear()
        budget_key = f"zoho:{self.settings.organization_id}:calls:{self.http.today().isoformat()}"
        try:
            self.http.preload_usage(budget_key.rsplit(":", 1)[1], int(ctx.recall(budget_key) or 0))
        except ValueError:
            pass
        try:
            yield from self._fetch(since, ctx, until)
        finally:
            ctx.remember(f"zoho:{self.settings.organization_id}:calls:{self.http.day.isoformat()}",
                         str(self.http.used_today))

    def snapshot(self, since: datetime, until: datetime | None = None) -> dict[str, str]:
        """payment_id -> version of every payment listed in the window whose change time is in [since, until).

        With `sort_column = created_time` the listing stops at payments created before `since`,
        so an older payment edited inside the window is not in the snapshot.
        """
        out = {}
        for pid, row in self._list(since).items():
            changed = self._changed(row)
            if changed is None or changed < since or (until is not None and changed >= until):
                continue
            out[pid] = self._version(row)
        return out

    # --- listing -----------------------------------------------------------------------------
    def _page(self, page: int, per_page: int) -> tuple[list[dict[str, Any]], bool]:
        body = self.http.get("/customerpayments", {"page": page, "per_page": per_page,
                                                   "sort_column": self.settings.sort_column, "sort_order": "D"})
        rows = next((body[k] for k in LIST_KEYS if isinstance(body.get(k), list)), None)
        if rows is None:
            raise SourceError("Zoho list answer has neither customerpayments nor customer_payments")
        ctx = body.get("page_context") if isinstance(body.get("page_context"), dict) else {}
        more = ctx.get("has_more_page")
        if not isinstance(more, bool):
            more = len(rows) >= per_page
        return [r for r in rows if isinstance(r, dict) and r.get("payment_id") is not None], more

    def _sort_time(self, row: dict[str, Any]) -> datetime | None:
        if self.settings.sort_column == "last_modified_time":
            return self._changed(row)
        return parse_zoho_time(row.get("created_time"))

    def _list(self, window_start: datetime | None) -> dict[str, dict[str, Any]]:
        """Rows whose sort time is in the window (all rows without a window), deduplicated by id."""
        out: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            rows, more = self._page(page, self.settings.page_size)
            oldest: datetime | None = None
            for row in rows:
                pid = str(row["payment_id"])
                if pid in out:      # a payment created meanwhile shifted the pages: same row again
                    continue
                if self._modified_text(row) is None:
                    self._fill_from_detail(pid, row)
                key = self._sort_time(row)
                if key is not None:
                    oldest = key if oldest is None else min(oldest, key)
                if window_start is not None and key is not None and key < window_start \
                        and (self._changed(row) or key) < window_start:
                    continue
                out[pid] = row
            if not more or not rows or (window_start is not None and oldest is not None and oldest < window_start):
                return out
            page += 1

    @staticmethod
    def _modified_text(row: dict[str, Any]) -> str | None:
        return _text(row.get("last_modified_time")) or _text(row.get("updated_time"))

    def _fill_from_detail(self, pid: str, row: dict[str, Any]) -> None:
        """The list gave no change time: take it from the detail (one more call for this row)."""
        try:
            detail = self._detail(pid)
        except LookupError:
            return
        if detail:
            row["updated_time"] = detail.get("updated_time") or detail.get("last_modified_time")
            row.setdefault("created_time", detail.get("created_time"))

    def _changed(self, row: dict[str, Any]) -> datetime | None:
        return parse_zoho_time(self._modified_text(row)) or parse_zoho_time(row.get("created_time"))

    def _version(self, row: dict[str, Any]) -> str:
        return self._modified_text(row) or str(row.get("created_time") or "")

    def _detail(self, pid: str) -> dict[str, Any] | None:
        if pid not in self._details:
            body = self.http.get(f"/customerpayments/{pid}")
            doc = body.get("payment") if isinstance(body.get("payment"), dict) else None
            self._details[pid] = doc
        return self._details[pid]

    # --- the run -----------------------------------------------------------------------------
    def _fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None) -> Iterator[FeeEvent]:
        window_start = since.changed_at - self.rescan if since is not None else None
        listed = self._list(window_start)
        memo = self._recall(ctx)
        items: list[tuple[Position, str, dict[str, Any]]] = []   # (position, kind, row)
        for pid, row in listed.items():
            changed = self._changed(row)
            if changed is None:
                log.warning("zoho.row_skipped", payment_id=pid, reason="no readable created/updated time")
                continue
            if until is not None and changed >= until:
                continue
            items.append((Position(changed, _pos_id(pid)), "row", row))
        gone: dict[str, dict[str, Any]] = {}
        for pid, entry in memo.items():
            if pid in listed:
                continue
            key = parse_zoho_time(entry.get("k"))
            if window_start is not None and (key is None or key < window_start):
                continue      # out of the window now: not evidence of anything
            if not entry.get("d"):
                try:
                    detail = self._detail(pid)
                except LookupError:
                    detail = None
                if detail is not None:   # still there: the listing shifted under us; take it from the detail
                    row = {"payment_id": pid, "created_time": detail.get("created_time"),
                           "last_modified_time": detail.get("last_modified_time") or detail.get("updated_time")}
                    changed = self._changed(row)
                    if changed is not None and (until is None or changed < until):
                        listed[pid] = row
                        items.append((Position(changed, _pos_id(pid)), "row", row))
                    continue
            gone[pid] = {**entry, "d": True}
            last = parse_zoho_time(entry.get("m")) or key or datetime.min.replace(tzinfo=UTC)
            if until is not None and last >= until:
                continue      # a backfill window ending earlier: the live run reports it
            items.append((Position(last, _pos_id(pid)), "deleted", {"payment_id": pid, "m": entry.get("m")}))
        items.sort(key=lambda item: item[0])
        for pos, kind, row in items:
            pid = str(row["payment_id"])
            if kind == "deleted":
                version = f"deleted|{row.get('m') or ''}"
                if ctx.seen(pid, version):
                    yield Unchanged(doc_id=pid, position=pos, version=version)
                else:
                    yield PaymentCancelled(doc_id=pid, position=pos, version=version)
                continue
            event = self._event_for(pid, row, pos, ctx)
            if isinstance(event, PaymentCancelled) and event.version.startswith("deleted|"):
                gone[pid] = {"k": self._key_text(row), "m": self._modified_text(row), "d": True}
                listed.pop(pid, None)
            yield event
        self._remember(ctx, listed, gone, window_start)

    def _event_for(self, pid: str, row: dict[str, Any], pos: Position, ctx: SourceContext) -> FeeEvent:
        version = self._version(row)
        if ctx.seen(pid, version):
            return Unchanged(doc_id=pid, position=pos, version=version)
        try:
            doc = self._detail(pid)
        except LookupError:
            return PaymentCancelled(doc_id=pid, position=pos, version=f"deleted|{self._modified_text(row) or ''}")
        if not isinstance(doc, dict):
            return Malformed(doc_id=pid, position=pos, version=version, problem="detail GET returned no payment")
        try:
            return self._normalise(pid, doc, pos, version)
        except ConflictError as exc:
            return Malformed(doc_id=pid, position=pos, version=version, problem=exc.detail, raw=doc)
        except (KeyError, TypeError, ValueError) as exc:
            return Malformed(doc_id=pid, position=pos, version=version, problem=f"{type(exc).__name__}: {exc}",
                             raw=doc)

    def _normalise(self, pid: str, doc: dict[str, Any], pos: Position, version: str) -> FeeEvent:
        if str(doc.get("status") or "success").lower() == "failure":
            return PaymentCancelled(doc_id=pid, position=pos, version=version)
        customer = _text(doc.get("customer_name")) or _text(doc.get("customer_id"))
        if not customer:
            raise ConflictError("malformed_document", "customer_name is missing", definitive=False)
        currency = _text(doc.get("currency_code"))
        if not currency:
            raise ConflictError("malformed_document", "currency_code is missing", definitive=False)
        amount = to_decimal(doc.get("amount"), field="amount")
        try:
            posting = date.fromisoformat(str(doc.get("date")))
        except ValueError:
            raise ConflictError("malformed_document", f"date {doc.get('date')!r} is not a date",
                                definitive=False) from None
        origin = None
        for cf in doc.get("custom_fields") or []:
            names = (cf.get("api_name"), cf.get("label")) if isinstance(cf, dict) else ()
            if names and cf.get("value") not in (None, "") and any(n in self.settings.origin_fields for n in names):
                origin = str(cf["value"])
                break
        refs: list[Reference] = []
        invoices = doc.get("invoices") or []
        if not isinstance(invoices, list):
            raise ConflictError("malformed_document", "invoices is not a list", definitive=False)
        if origin is None:
            for inv in invoices:
                if not isinstance(inv, dict):
                    continue
                applied = to_decimal(inv.get("amount_applied"), field="invoices.amount_applied")
                if applied <= 0:
                    continue
                refs.append(Reference(invoice_id=_text(inv.get("invoice_number")) or _text(inv.get("invoice_id")),
                                      amount=applied, doctype="invoice"))
        unallocated = amount - sum((r.amount for r in refs), Decimal(0))
        mode = _text(doc.get("payment_mode"))
        return PaymentReceived(
            doc_id=pid, position=pos, version=version, customer=customer, customer_email=_text(doc.get("email")),
            amount=amount, currency=currency, posting_date=posting,
            method=MODE_NAMES.get(mode.lower().replace(" ", ""), mode) if mode else None,
            reference_number=_text(doc.get("reference_number")) or _text(doc.get("payment_number")),
            references=tuple(refs), unallocated=max(unallocated, Decimal(0)), origin_marker=origin, raw=doc)

    # --- the window memo ---------------------------------------------------------------------
    def _key_text(self, row: dict[str, Any]) -> str | None:
        if self.settings.sort_column == "last_modified_time":
            return self._modified_text(row)
        return _text(row.get("created_time"))

    def _recall(self, ctx: SourceContext) -> dict[str, dict[str, Any]]:
        raw = ctx.recall(self._memo_key)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def _remember(self, ctx: SourceContext, listed: dict[str, dict[str, Any]], gone: dict[str, dict[str, Any]],
                  window_start: datetime | None) -> None:
        """Ids seen in this window (and deletions not yet decided) for the next run's deletion check."""
        keep: dict[str, dict[str, Any]] = {}
        for pid, entry in gone.items():
            if not ctx.seen(pid, f"deleted|{entry.get('m') or ''}"):
                keep[pid] = entry
        for pid, row in listed.items():
            keep[pid] = {"k": self._key_text(row), "m": self._modified_text(row)}
        if window_start is not None:
            horizon = window_start - timedelta(days=1)
            keep = {p: e for p, e in keep.items()
                    if (parse_zoho_time(e.get("k")) or horizon) >= horizon}
        ctx.remember(self._memo_key, json.dumps(keep, sort_keys=True))
