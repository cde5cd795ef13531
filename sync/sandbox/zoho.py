"""A fake Zoho Books (API v3) and Zoho Accounts (OAuth) on loopback, quirks included.

Used by the Zoho connector's tests and for dry runs. A real HTTP server (stdlib
`ThreadingHTTPServer`, HTTP/1.1 keep-alive, Content-Length bodies, a `Date` header from the
fake's clock). See `shared/reference/erp-apis.md` §3. One port serves both hosts:
`fake.accounts_base` (`/oauth/v2/token`) and `fake.api_base` (`/books/v3/...`).

Usage::

    with ZohoFake(data, list_key="customerpayments") as zoho:
        settings = {"api_base": zoho.api_base, "accounts_base": zoho.accounts_base, ...}
        pid = zoho.add_payment(customer_name="Ayesha Khan", amount=18000, invoices=[...])
        zoho.edit_payment(pid, amount=17000)      # bumps updated_time / last_modified_time
        zoho.delete_payment(pid)                  # hard delete, no tombstone
        zoho.expire_tokens()                      # every issued access token now answers 401
        zoho.faults.fail(503); zoho.faults.error(code=45, message="...", status=429)
        zoho.stats()

What it reproduces
------------------
* OAuth: `POST /oauth/v2/token?refresh_token=&client_id=&client_secret=&grant_type=refresh_token`
  (query or form body) → `{"access_token", "api_domain", "token_type": "Bearer", "expires_in": 3600}`.
  A wrong refresh token answers **HTTP 200** `{"error": "invalid_code"}`, a wrong client
  `{"error": "invalid_client"}`, another grant `{"error": "unsupported_grant_type"}`. Access tokens
  expire after `token_ttl_seconds` of the fake's clock.
* API calls need `Authorization: Zoho-oauthtoken <token>` (else 401 `{"code": 57, ...}`) and an
  `organization_id` query parameter (else 400 `{"code": 2, ...}` (U: the live code)).
* Limits per organisation: `per_minute_limit` (default 100) calls per clock minute and
  `daily_limit` (default 1000) per UTC day; past either, **429 without Retry-After** and
  `{"code": 45, "message": ...}`. Refused calls do not count.
* `GET /books/v3/customerpayments`: `page` (default 1), `per_page` (default 200, capped at 200),
  `sort_column` (`created_time` default, `last_modified_time`, `date`, `payment_number`, `amount`,
  `customer_name`), `sort_order` `D` (default) or `A`, `customer_id`, `date`. The array is named
  `list_key` (`customerpayments`, as live clients read it, or `customer_payments`, as the OpenAPI
  says), with `page_context` (`page`, `per_page`, `has_more_page`, `report_name`, `applied_filter`,
  `sort_column`, `sort_order`). Rows are summaries: no `invoices[]`, no `email`; they carry
  `created_time` and `last_modified_time` (set `list_modified_field=None` to leave the latter out).
* `GET /books/v3/customerpayments/{id}` → `{"code": 0, "message": "success", "payment": {...}}` with
  `invoices[]` (`invoice_id`, `invoice_number`, `date`, `invoice_amount`, `amount_applied`,
  `balance_amount`), `email`, `custom_fields[]`, `created_time`, `updated_time`; 404
  `{"code": 1002, ...}` (U: the live code) once deleted. `DELETE` of the same path deletes.
* Times are `2016-06-05T02:15:20-0700`: the organisation's offset, **without a colon**.
  Amounts are JSON floats.

Data file (JSON; every key optional)::

    {"organizations": [{"organization_id": "10234695", "name": "Zensbot Academy", "utc_offset": "+0500",
                        "per_minute_limit": 100, "daily_limit": 1000}],
     "clients": [{"client_id": "1000.CLIENT", "client_secret": "…", "refresh_tokens": ["1000.r…"]}],
     "token_ttl_seconds": 3600,
     "payments": [{"organization_id": "10234695", "payment_id": "460000000040001",
                   "payment_number": "1", "customer_id": "460000000030001", "customer_name": "Ayesha Khan",
                   "email": "ayesha.khan@example.pk", "amount": 18000.0, "currency_code": "PKR",
                   "date": "2026-11-02", "payment_mode": "cash", "status": "success",
                   "reference_number": "", "custom_fields": [],
                   "invoices": [{"invoice_id": "460000000050001", "invoice_number": "INV-000001",
                                 "invoice_amount": 45000.0, "amount_applied": 18000.0}],
                   "created_time": "2026-11-02T09:00:01+0500",
                   "updated_time": "2026-11-02T09:00:01+0500"}]}

Defaults: one organisation `10234695` (+0500), ids assigned upwards from 460000000040001, times from
the clock, `status` success, `currency_code` PKR, `payment_mode` cash.

What it does not model: other modules (invoices, contacts), refunds, the concurrency limit,
per-user refresh-token caps and the token endpoint's own rate limit, multiple data centres,
`search_text`/`filter_by` and most list filters, and `created_time` sort ties (broken by id here).

Test controls: `faults.fail(status, count, match)`, `faults.error(code=, message=, status=, count=,
match=)` (a Zoho `{code, message}` body), `faults.slow(seconds, ...)`, `faults.drop(...)`, where
`match` is a substring of the label (`token`, `GET /customerpayments`, `GET /customerpayments/{id}`);
`expire_tokens()`, `revoke_refresh_token(token)`, `stats()`.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sync.sandbox._odoo_http import FaultBox, LoopbackServer, Reply, json_reply

__all__ = ["ZohoFake"]

Clock = Callable[[], datetime]
API_PREFIX = "/books/v3"
SORTABLE = ("created_time", "last_modified_time", "date", "payment_number", "amount", "customer_name")
_MINUTE_MSG = "You have made too many requests continuously. Please try again after some time."
_DAILY_MSG = "You have reached the maximum number of API calls allowed for a day. Please try again tomorrow."


def _offset(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0)))


def _parse_time(text: Any) -> datetime | None:
    if text in (None, ""):
        return None
    if isinstance(text, datetime):
        return text.astimezone(UTC) if text.tzinfo else text.replace(tzinfo=UTC)
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(str(text), fmt).astimezone(UTC)
        except ValueError:
            continue
    parsed = datetime.fromisoformat(str(text))
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ZohoFake:
    """A fake Zoho Books + Accounts; `start()` it, use `api_base` / `accounts_base`, `stop()` it."""

    def __init__(self, data: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 list_key: str = "customerpayments", clock: Clock | None = None,
                 list_modified_field: str | None = "last_modified_time") -> None:
        if list_key not in ("customerpayments", "customer_payments"):
            raise ValueError("list_key must be customerpayments or customer_payments")
        data = data or {}
        self.list_key = list_key
        self.list_modified_field = list_modified_field
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self.orgs: dict[str, dict[str, Any]] = {}
        for org in data.get("organizations") or [{"organization_id": "10234695", "name": "Zensbot Academy"}]:
            oid = str(org["organization_id"])
            self.orgs[oid] = {"organization_id": oid, "name": org.get("name", oid),
                              "tz": _offset(str(org.get("utc_offset", "+0500"))),
                              "per_minute_limit": int(org.get("per_minute_limit", 100)),
                              "daily_limit": int(org.get("daily_limit", 1000))}
        self.clients = {str(c["client_id"]): {"secret": str(c["client_secret"]),
                                              "refresh_tokens": set(map(str, c.get("refresh_tokens") or []))}
                        for c in data.get("clients") or []}
        self.token_ttl = float(data.get("token_ttl_seconds", 3600))
        self._tokens: dict[str, datetime] = {}
        self._ids = itertools.count(460000000040001)
        self._invoice_ids = itertools.count(460000000050001)
        self.payments: dict[str, dict[str, Any]] = {}
        for p in data.get("payments") or []:
            self.add_payment(**p)
        self._minute: dict[tuple[str, int], int] = Counter()
        self._daily: dict[tuple[str, str], int] = Counter()
        self.faults = FaultBox()
        self._stats: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._stopping = threading.Event()
        self._server = LoopbackServer(self._handle, self._now, host=host, port=port, server_header="ZGS",
                                      name="zoho-fake")

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ZohoFake:
        self._stopping.clear()
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> ZohoFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + API_PREFIX

    @property
    def accounts_base(self) -> str:
        return self.url

    # --- data helpers (thread-safe) ------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)

    def add_payment(self, customer_name: str, amount: Any, *, organization_id: str | None = None,
                    payment_id: str | None = None, **fields: Any) -> str:
        """Create a customer payment (see the data format); returns its payment_id."""
        with self._lock:
            oid = str(organization_id or next(iter(self.orgs)))
            if oid not in self.orgs:
                raise KeyError(f"unknown organization {oid}")
            pid = str(payment_id or next(self._ids))
            if pid in self.payments:
                raise ValueError(f"duplicate payment_id {pid}")
            now = self._now()
            created = _parse_time(fields.pop("created_time", None)) or now
            updated = _parse_time(fields.pop("updated_time", None) or fields.pop("last_modified_time", None)) or created
            invoices = []
            for inv in fields.pop("invoices", None) or []:
                applied = float(inv.get("amount_applied", amount))
                invoices.append({"invoice_id": str(inv.get("invoice_id") or next(self._invoice_ids)),
                                 "invoice_number": inv.get("invoice_number", ""),
                                 "date": inv.get("date", created.date().isoformat()),
                                 "invoice_amount": float(inv.get("invoice_amount", applied)),
                                 "amount_applied": applied,
                                 "balance_amount": float(inv.get("balance_amount", 0.0))})
            number = str(fields.pop("payment_number", sum(1 for p in self.payments.values() if p["_org"] == oid) + 1))
            self.payments[pid] = {
                "_org": oid, "payment_id": pid, "payment_number": number,
                "customer_id": str(fields.pop("customer_id", None)
                                   or f"46000000003{zlib.crc32(customer_name.encode()) % 10000:04d}"),
                "customer_name": customer_name, "email": fields.pop("email", ""), "amount": float(amount),
                "currency_code": fields.pop("currency_code", "PKR"),
                "currency_symbol": fields.pop("currency_symbol", "Rs."),
                "exchange_rate": float(fields.pop("exchange_rate", 1.0)),
                "date": fields.pop("date", created.astimezone(self.orgs[oid]["tz"]).date().isoformat()),
                "payment_mode": fields.pop("payment_mode", "cash"), "status": fields.pop("status", "success"),
                "reference_number": fields.pop("reference_number", ""), "description": fields.pop("description", ""),
                "bank_charges": float(fields.pop("bank_charges", 0.0)),
                "custom_fields": fields.pop("custom_fields", []), "invoices": invoices,
                "_created": created, "_updated": updated, **fields}
            return pid

    def edit_payment(self, pid: str, *, at: Any = None, **changes: Any) -> None:
        """Change a payment; its updated_time becomes `at` or the clock's now."""
        with self._lock:
            pay = self.payments[str(pid)]
            for key, value in changes.items():
                if key == "invoices":
                    pay["invoices"] = [{"invoice_id": str(i.get("invoice_id")),
                                        "invoice_number": i.get("invoice_number", ""),
                                        "date": i.get("date", ""), "invoice_amount": float(i.get("invoice_amount", 0)),
                                        "amount_applied": float(i.get("amount_applied", 0)),
                                        "balance_amount": float(i.get("balance_amount", 0))} for i in value]
                elif key == "amount":
                    pay["amount"] = float(value)
                else:
                    pay[key] = value
            pay["_updated"] = _parse_time(at) or self._now()

    def delete_payment(self, pid: str) -> None:
        with self._lock:
            del self.payments[str(pid)]

    def expire_tokens(self) -> None:
        """Every access token issued so far answers 401 from now on (as after its hour)."""
        with self._lock:
            self._tokens.clear()

    def revoke_refresh_token(self, token: str) -> None:
        with self._lock:
            for c in self.clients.values():
                c["refresh_tokens"].discard(token)

    def stats(self) -> dict[str, Any]:
        """{"requests", "by_label", "by_status", "tokens_issued", "rate_limited"}."""
        with self._lock:
            return {"requests": sum(v for k, v in self._stats.items() if not k.startswith("_")),
                    "by_label": {k: v for k, v in self._stats.items() if not k.startswith("_")},
                    "by_status": dict(self._by_status), "tokens_issued": self._stats["_tokens"],
                    "rate_limited": self._stats["_429"]}

    def _fmt(self, moment: datetime, oid: str) -> str:
        return moment.astimezone(self.orgs[oid]["tz"]).strftime("%Y-%m-%dT%H:%M:%S%z")

    # --- request path ------------------------------------------------------------------------
    def _count(self, label: str, status: int | None) -> None:
        with self._lock:
            self._stats[label] += 1
            if status is not None:
                self._by_status[status] += 1
            if status == 429:
                self._stats["_429"] += 1

    def _handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply | None:
        split = urlsplit(target)
        path = split.path.rstrip("/")
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if path == "/oauth/v2/token":
            label = "token"
        elif path.startswith(API_PREFIX + "/customerpayments/"):
            label = f"{method} /customerpayments/{{id}}"
        else:
            label = f"{method} {path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path}"
        sleep, fault = self.faults.take(label)
        if sleep:
            self._stopping.wait(sleep)
        if fault is not None:
            if fault["kind"] == "drop":
                self._count(label, None)
                return None
            if fault["kind"] == "error":
                reply = json_reply(fault.get("status") or 400, {"code": fault.get("code") or 1,
                                                                "message": fault["message"]})
            else:
                reply = Reply(fault["status"], fault["body"].encode() if isinstance(fault["body"], str) else
                              (fault["body"] or f"<html><body>{fault['status']}</body></html>".encode()),
                              "text/html; charset=UTF-8")
            self._count(label, reply.status)
            return reply
        if label == "token":
            if method != "POST":
                reply = json_reply(405, {"error": "method not allowed"})
            else:
                form = dict(parse_qsl(body.decode("utf-8", "replace"))) if body else {}
                reply = self._token({**form, **query})
        elif path.startswith(API_PREFIX):
            reply = self._api(method, path[len(API_PREFIX):], query, headers)
        else:
            reply = json_reply(404, {"code": 5, "message": "Invalid URL Passed"})
        self._count(label, reply.status)
        return reply

    def _token(self, q: dict[str, str]) -> Reply:
        with self._lock:
            if q.get("grant_type") != "refresh_token":
                return json_reply(200, {"error": "unsupported_grant_type"})
            client = self.clients.get(q.get("client_id", ""))
            if client is None or not secrets.compare_digest(client["secret"], q.get("client_secret", "")):
                return json_reply(200, {"error": "invalid_client"})
            if q.get("refresh_token", "") not in client["refresh_tokens"]:
                return json_reply(200, {"error": "invalid_code"})
            token = "1000." + secrets.token_hex(16)
            self._tokens[token] = self._now() + timedelta(seconds=self.token_ttl)
            self._stats["_tokens"] += 1
        return json_reply(200, {"access_token": token, "scope": "ZohoBooks.customerpayments.READ",
                                "api_domain": "https://www.zohoapis.com", "token_type": "Bearer",
                                "expires_in": int(self.token_ttl)})

    def _api(self, method: str, path: str, query: dict[str, str], headers: Any) -> Reply:
        with self._lock:
            scheme, _, token = (headers.get("Authorization") or "").partition(" ")
            expires = self._tokens.get(token.strip()) if scheme == "Zoho-oauthtoken" else None
            if expires is None or self._now() >= expires:
                return json_reply(401, {"code": 57, "message": "You are not authorized to perform this operation"})
            oid = query.get("organization_id", "")
            if oid not in self.orgs:
                return json_reply(400, {"code": 2, "message": "Invalid value passed for organization_id"})
            org = self.orgs[oid]
            now = self._now()
            minute, day = (oid, int(now.timestamp() // 60)), (oid, now.date().isoformat())
            if self._daily[day] >= org["daily_limit"]:
                return json_reply(429, {"code": 45, "message": _DAILY_MSG})
            if self._minute[minute] >= org["per_minute_limit"]:
                return json_reply(429, {"code": 45, "message": _MINUTE_MSG})
            self._daily[day] += 1
            self._minute[minute] += 1
            if path == "/customerpayments" and method == "GET":
                return self._list(oid, query)
            if path.startswith("/customerpayments/"):
                pid = path.rsplit("/", 1)[1]
                pay = self.payments.get(pid)
                if pay is None or pay["_org"] != oid:
                    return json_reply(404, {"code": 1002, "message": "The payment does not exist."})
                if method == "GET":
                    return json_reply(200, {"code": 0, "message": "success", "payment": self._detail(pay)})
                if method == "DELETE":
                    del self.payments[pid]
                    return json_reply(200, {"code": 0, "message": "The payment has been deleted."})
            return json_reply(405 if path.startswith("/customerpayments") else 404,
                              {"code": 5, "message": "Invalid URL Passed"})

    def _list(self, oid: str, q: dict[str, str]) -> Reply:
        try:
            page = max(1, int(q.get("page", "1") or 1))
            per_page = max(1, min(200, int(q.get("per_page", "200") or 200)))
        except ValueError:
            return json_reply(400, {"code": 2, "message": "Invalid value passed for page"})
        column = q.get("sort_column") or "created_time"
        if column not in SORTABLE:
            return json_reply(400, {"code": 2, "message": "Invalid value passed for sort_column"})
        order = (q.get("sort_order") or "D").upper()
        rows = [p for p in self.payments.values() if p["_org"] == oid]
        if q.get("customer_id"):
            rows = [p for p in rows if p["customer_id"] == q["customer_id"]]
        if q.get("date"):
            rows = [p for p in rows if p["date"] == q["date"]]
        key = {"created_time": lambda p: p["_created"], "last_modified_time": lambda p: p["_updated"]}.get(
            column, lambda p: p[column])
        rows.sort(key=lambda p: (key(p), int(p["payment_id"]) if p["payment_id"].isdigit() else 0),
                  reverse=order == "D")
        chunk = rows[(page - 1) * per_page: page * per_page]
        more = len(rows) > page * per_page
        out = []
        for p in chunk:
            row = {"payment_id": p["payment_id"], "payment_number": p["payment_number"],
                   "customer_id": p["customer_id"], "customer_name": p["customer_name"], "date": p["date"],
                   "payment_mode": p["payment_mode"], "amount": p["amount"],
                   "bcy_amount": round(p["amount"] * p["exchange_rate"], 2), "reference_number": p["reference_number"],
                   "description": p["description"], "invoice_numbers": ", ".join(
                       i["invoice_number"] for i in p["invoices"] if i["invoice_number"]),
                   "created_time": self._fmt(p["_created"], oid)}
            if self.list_modified_field:
                row[self.list_modified_field] = self._fmt(p["_updated"], oid)
            out.append(row)
        return json_reply(200, {"code": 0, "message": "success", self.list_key: out,
                                "page_context": {"page": page, "per_page": per_page, "has_more_page": more,
                                                 "report_name": "Customer Payments", "applied_filter": "Status.All",
                                                 "sort_column": column, "sort_order": order,
                                                 "search_criteria": []}})

    def _detail(self, pay: dict[str, Any]) -> dict[str, Any]:
        oid = pay["_org"]
        doc = {k: copy.deepcopy(v) for k, v in pay.items() if not k.startswith("_")}
        doc["created_time"] = self._fmt(pay["_created"], oid)
        doc["updated_time"] = self._fmt(pay["_updated"], oid)
        doc["unused_amount"] = round(pay["amount"] - sum(i["amount_applied"] for i in pay["invoices"]), 2)
        return doc

    def dump(self) -> str:
        with self._lock:
            return json.dumps({pid: self._detail(p) for pid, p in self.payments.items()}, indent=1)
