"""A fake Odoo (16, 17, 18, 19) on loopback that answers the external API like the real one, quirks included.

Used by the Odoo connector's tests and for dry runs. A real HTTP server (stdlib
`ThreadingHTTPServer`, HTTP/1.1 keep-alive, Content-Length bodies, `Server: Werkzeug/3.0.1
Python/3.11`, a `Date` header from the fake's clock). See `shared/reference/erp-apis.md` §2.

Usage::

    with OdooFake(data, version=17) as odoo:            # port=0 picks a free port
        odoo.url                                        # http://127.0.0.1:<port>
        pid = odoo.add_payment(partner_id=7, amount=18000, invoices=[31])
        odoo.write(pid, amount=17000)                   # bumps write_date from the clock
        odoo.cancel(pid); odoo.unlink(pid)
        odoo.faults.fail(502, count=2)                  # or .error(name, message), .slow(s), .drop()
        odoo.stats()

    python -m sync.sandbox.odoo DATA.json --port 8069 [--version 18]

What it reproduces
------------------
* `POST /jsonrpc` `{"jsonrpc": "2.0", "method": "call", "params": {"service", "method", "args"}, "id"}`:
  `common.version`, `common.authenticate(db, login, key, {})` (→ uid, or `false` for a bad login or
  key, never an error), `object.execute_kw(db, uid, key, model, method, args, kwargs)` with
  `search_read` (args `[domain]` or `[domain, fields]`; kwargs `fields`, `offset`, `limit`,
  `order`, `context`), `search`, `search_count`, `read(ids, fields)` and `fields_get` on
  `account.payment`, `account.move`, `res.partner`, `res.currency`, `account.journal`.
* **Errors come back as HTTP 200** with an `error` object:
  `{"jsonrpc": "2.0", "id": n, "error": {"code": 200, "message": "Odoo Server Error",
  "data": {"name": "odoo.exceptions.AccessDenied", "message": "Access Denied", "arguments": [...],
  "context": {}, "debug": "Traceback ..."}}}`. AccessDenied for a bad uid/key in `execute_kw`;
  AccessError for a model the user may not read; `builtins.ValueError` for an unknown field (in
  `fields`, a domain leaf or `order`), a bad operator or a malformed domain/order; MissingError
  for `read` of a deleted id; `psycopg2.OperationalError` for an unknown database.
* JSON-2 (version 19 only; 16–18 answer 404): `POST /json/2/<model>/<method>` with
  `Authorization: bearer <api key>` and optional `X-Odoo-Database`; the body holds named
  arguments (`domain`, `fields`, `offset`, `limit`, `order`, `ids`, `context`). Success is 200 with
  the bare result; errors use HTTP statuses (401 bad key, 403 AccessError, 404 unknown model or
  MissingError, 422 ValueError/UserError, 500 others) and the body `{name, message, arguments,
  context, debug}`. `res.users/context_get` answers `{"lang", "tz", "uid"}`.
* Domains in prefix notation: leaves `[field, op, value]` with `= != <> > >= < <= in, not in, like,
  not like, ilike, not ilike, =like, =ilike`, operators `&`, `|` (two terms) and `!` (one), implicit
  AND at the top level; many2one leaves compare ids (or the display name for a string value),
  x2many leaves test membership; datetimes compare as datetimes with their microseconds (as
  PostgreSQL does), not as text; comparisons with an empty value are false (SQL NULL).
* `order` parsing (`field [asc|desc]`, comma separated, unknown field → ValueError); without
  `order` the model default applies (`account.payment`: `date desc, name desc`), so an unordered
  read is NOT in `write_date` order. `offset` then `limit` (0/None/False = all).
* Values as the ORM reads them: many2one `[id, "name"]`, empty values `false` (never null), x2many
  lists of ids, `write_date` / `create_date` naive UTC `"YYYY-MM-DD HH:MM:SS"`: the stored value
  keeps microseconds (it comes from the transaction's `NOW()`), the answer drops them, like
  `fields.Datetime.to_string` (pass `micro_output=True` to answer them too).
* Versions: 16/17 `account.payment` has `ref` and the move's `state` (`draft|posted|cancel`),
  `reconciled_invoice_ids` (computed); 18/19 has `memo`, `state` in
  `draft|in_process|paid|canceled|rejected`, stored `invoice_ids` and the computed
  `reconciled_invoice_ids`, and `move_id` may be `false`. Asking 17 for `memo` or 18 for `ref` is a
  ValueError, as on the real servers.
* `account.move` (customer invoices) has `amount_total`, `amount_residual`, `payment_state` and
  `invoice_payments_widget` (`{"content": [{"account_payment_id", "amount", ...}]}`) computed from
  the live payments' allocations.

Data file (JSON; every key optional)::

    {"database": "feesync",
     "users": [{"login": "admin", "api_key": "…", "uid": 2,
                "models": null}],                          # or a list of readable models
     "currencies": ["PKR", "USD"],
     "journals": [{"id": 1, "name": "Cash", "type": "cash", "code": "CSH1"},
                  {"id": 2, "name": "Bank", "type": "bank", "code": "BNK1"}],
     "partners": [{"id": 7, "name": "Ayesha Khan", "email": "ayesha.khan@example.pk"}],
     "invoices": [{"id": 31, "name": "INV/2026/00001", "partner_id": 7, "amount_total": 45000,
                   "currency": "PKR", "date": "2026-10-01", "x_zensbot_fee_plan_id": "5001"}],
     "payments": [{"id": 1, "partner_id": 7, "amount": 18000.0, "currency": "PKR",
                   "date": "2026-11-02", "journal": "Cash", "state": "posted",
                   "payment_type": "inbound", "partner_type": "customer",
                   "ref": "Fee Nov", "payment_reference": "CHQ-1",
                   "write_date": "2026-11-02 04:00:01.123456",
                   "invoices": {"31": 18000.0}}]}               # or a list of invoice ids (whole amount)

Payment defaults: `name` `P<journal code>/<year>/<id>` (`/` for drafts), `state` `posted` (16/17),
`paid` when allocated else `in_process` (18/19); `write_date` the clock's now; `x_*` keys become
custom fields. A state that does not exist in the fake's version is refused at load.

What it does not model: the web session routes (`/web/session/authenticate`), XML-RPC, record
rules beyond per-model read access, multi-company, currency rates, the `account.move` side of 16/17
payments (payments are not listed as moves), `write_date` moving on the move instead of the
payment in 16/17 (every mutation helper here bumps the payment's own `write_date`), and
recomputation of stored computed fields without `write()` (open question 3 in erp-apis.md).
Pass `at=` to `write`/`cancel` to stamp an earlier time (a long transaction's start).

Test controls: `faults.fail(status, count, match)`, `faults.error(name, message, count, match)`,
`faults.slow(seconds, count, match)`, `faults.drop(count, match)` where `match` is a substring of
the request label (`common.authenticate`, `account.payment.search_read`, ...); `stats()`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sync.sandbox._odoo_http import FaultBox, LoopbackServer, Reply, json_reply
from sync.sandbox._odoo_store import STATES, OdooError, OdooStore, access_denied

__all__ = ["OdooFake", "load_data", "main"]

Clock = Callable[[], datetime]
_JSON2_STATUS = {"odoo.exceptions.AccessDenied": 401, "werkzeug.exceptions.Unauthorized": 401,
                 "odoo.exceptions.AccessError": 403, "odoo.exceptions.MissingError": 404,
                 "werkzeug.exceptions.NotFound": 404, "builtins.KeyError": 404,
                 "builtins.ValueError": 422, "odoo.exceptions.UserError": 422,
                 "odoo.exceptions.ValidationError": 422, "builtins.AttributeError": 422, "builtins.TypeError": 422}
_NOT_FOUND_HTML = (b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
                   b"<p>The requested URL was not found on the server. If you entered the URL manually please "
                   b"check your spelling and try again.</p>\n")


def load_data(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _traceback(err: OdooError) -> str:
    return ("Traceback (most recent call last):\n  File \"/usr/lib/python3/dist-packages/odoo/http.py\", line 1788, "
            "in _serve_db\n    return service_model.retrying(self._serve_ir_http, self.env)\n"
            f"{err.name}: {err.message}\n")


class OdooFake:
    """A fake Odoo server; `start()` it, point a client at `url`, `stop()` it (or use `with`)."""

    def __init__(self, data: dict[str, Any] | None = None, *, version: int = 17, host: str = "127.0.0.1",
                 port: int = 0, clock: Clock | None = None, micro_output: bool = False) -> None:
        if version not in STATES:
            raise ValueError(f"unsupported Odoo version {version!r}")
        self.version = version
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._store = OdooStore(data or {}, version=version, clock=self._clock, micro_output=micro_output)
        self.faults = FaultBox()
        self._stats_lock = threading.Lock()
        self._by_label: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._requests = 0
        self._stopping = threading.Event()
        self._server = LoopbackServer(self._handle, self._now_utc, host=host, port=port,
                                      server_header="Werkzeug/3.0.1 Python/3.11.2", name="odoo-fake")

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> OdooFake:
        self._stopping.clear()
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> OdooFake:
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
    def database(self) -> str:
        return self._store.database

    # --- mutation helpers (thread-safe) ------------------------------------------------------
    def add_partner(self, name: str, email: Any = False, **extra: Any) -> int:
        with self._store.lock:
            return self._store.add_partner(name, email, **extra)

    def add_invoice(self, name: str, partner_id: int, amount_total: Any, **extra: Any) -> int:
        with self._store.lock:
            return self._store.add_invoice(name, partner_id, amount_total, **extra)

    def add_payment(self, partner_id: int | None, amount: Any, **fields: Any) -> int:
        """Create an `account.payment` (see the data format); returns its id."""
        with self._store.lock:
            return self._store.add_payment(partner_id, amount, **fields)

    def write(self, pid: int, *, at: Any = None, **vals: Any) -> None:
        """Change a payment; `write_date` becomes `at` (a transaction's start) or the clock's now."""
        with self._store.lock:
            self._store.write_payment(pid, at=at, **vals)

    def post(self, pid: int, *, at: Any = None) -> None:
        with self._store.lock:
            rec = self._store._payment(pid)
            state = "posted" if self.version < 18 else ("paid" if rec["allocations"] else "in_process")
            if rec["name"] == "/":
                code = self._store.journals[rec["journal_id"]]["code"]
                rec["name"] = f"P{code}/{self._store.now().year}/{pid:05d}"
            self._store.write_payment(pid, at=at, state=state)

    def cancel(self, pid: int, *, at: Any = None, bump: bool = True) -> None:
        """Cancel a payment (`cancel` in 16/17, `canceled` in 18/19); `bump=False` leaves write_date alone."""
        with self._store.lock:
            state = "cancel" if self.version < 18 else "canceled"
            if bump:
                self._store.write_payment(pid, at=at, state=state)
            else:
                self._store._payment(pid)["state"] = state

    def unlink(self, pid: int) -> None:
        """Delete a payment: no tombstone, the id simply stops existing."""
        with self._store.lock:
            del self._store.payments[int(pid)]

    def payment(self, pid: int) -> dict[str, Any]:
        with self._store.lock:
            return self._store.snapshot_payment(pid)

    def payment_ids(self) -> list[int]:
        with self._store.lock:
            return sorted(self._store.payments)

    def revoke(self, login: str) -> None:
        """Revoke the user's API key (its next call gets AccessDenied)."""
        with self._store.lock:
            for u in self._store.users:
                if u["login"] == login:
                    u["api_key"] = ""

    def stats(self) -> dict[str, Any]:
        """{"requests", "by_label": {"account.payment.search_read": n, ...}, "by_status": {200: n}}."""
        with self._stats_lock:
            return {"requests": self._requests, "by_label": dict(self._by_label), "by_status": dict(self._by_status)}

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._requests = 0
            self._by_label.clear()
            self._by_status.clear()

    # --- request path ------------------------------------------------------------------------
    def _now_utc(self) -> datetime:
        now = self._clock()
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)

    def _count(self, label: str, status: int | None) -> None:
        with self._stats_lock:
            self._requests += 1
            self._by_label[label] += 1
            if status is not None:
                self._by_status[status] += 1

    def _handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply | None:
        path = unquote(urlsplit(target).path)
        if method != "POST":
            reply = Reply(404 if path not in ("/jsonrpc",) else 405, _NOT_FOUND_HTML, "text/html; charset=utf-8")
            self._count(f"{method} {path}", reply.status)
            return reply
        if path == "/jsonrpc":
            return self._jsonrpc(body)
        if path.startswith("/json/2/"):
            return self._json2(path, headers, body)
        self._count(f"POST {path}", 404)
        return Reply(404, _NOT_FOUND_HTML, "text/html; charset=utf-8")

    def _faulted(self, label: str, error_reply: Callable[[OdooError], Reply]) -> tuple[bool, Reply | None]:
        """(handled, reply): an armed fault answers instead of the API (drop → (True, None))."""
        sleep, fault = self.faults.take(label)
        if sleep:
            self._stopping.wait(sleep)
        if fault is None:
            return False, None
        if fault["kind"] == "drop":
            self._count(label, None)
            return True, None
        if fault["kind"] == "error":
            reply = error_reply(OdooError(fault["name"], fault["message"]))
        elif fault["body"] is not None:
            raw = fault["body"] if isinstance(fault["body"], bytes) else str(fault["body"]).encode()
            reply = Reply(fault["status"], raw, "text/html; charset=utf-8")
        else:
            status = fault["status"]
            text = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Time-out"}.get(status, "Error")
            reply = Reply(status, f"<html><body><h1>{status} {text}</h1></body></html>".encode(),
                          "text/html; charset=utf-8")
        self._count(label, reply.status)
        return True, reply

    # JSON-RPC ------------------------------------------------------------------------------------
    def _jsonrpc(self, body: bytes) -> Reply | None:
        req_id: Any = None
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
            err = OdooError("werkzeug.exceptions.BadRequest", "400 Bad Request: Invalid JSON data")
            reply = self._rpc_error(None, err)
            self._count("jsonrpc.invalid", reply.status)
            return reply
        req_id = payload.get("id")
        params = payload["params"]
        service, fn, args = params.get("service"), params.get("method"), params.get("args") or []
        label = f"{service}.{fn}"
        if service == "object" and fn in ("execute_kw", "execute") and len(args) >= 5:
            label = f"{args[3]}.{args[4]}"
        handled, reply = self._faulted(label, lambda e: self._rpc_error(req_id, e))
        if handled:
            return reply
        try:
            with self._store.lock:
                result = self._dispatch(service, fn, args)
            reply = json_reply(200, {"jsonrpc": "2.0", "id": req_id, "result": result})
        except OdooError as err:
            reply = self._rpc_error(req_id, err)
        except Exception as exc:  # noqa: BLE001 - the server boundary answers like Odoo would
            reply = self._rpc_error(req_id, OdooError(f"builtins.{type(exc).__name__}", str(exc)))
        self._count(label, reply.status)
        return reply

    def _dispatch(self, service: Any, fn: Any, args: list[Any]) -> Any:
        store = self._store
        if service == "common":
            if fn == "version":
                return {"server_version": f"{self.version}.0",
                        "server_version_info": [self.version, 0, 0, "final", 0, ""],
                        "server_serie": f"{self.version}.0", "protocol_version": 1}
            if fn in ("authenticate", "login"):
                if len(args) < 3:
                    raise OdooError("builtins.TypeError", f"{fn}() missing required positional arguments")
                return store.authenticate(args[0], args[1], args[2])
            raise OdooError("builtins.AttributeError", f"module 'odoo.service.common' has no attribute 'exp_{fn}'")
        if service == "object" and fn in ("execute_kw", "execute"):
            if len(args) < 5:
                raise OdooError("builtins.TypeError", "execute_kw() missing required positional arguments")
            db, uid, secret, model, method = args[:5]
            call_args = args[5] if len(args) > 5 else []
            kwargs = args[6] if len(args) > 6 and fn == "execute_kw" else {}
            user = store.user_by_uid(db, uid, secret)
            if not isinstance(call_args, list) or not isinstance(kwargs, dict):
                raise OdooError("builtins.TypeError", "execute_kw: args must be a list and kwargs an object")
            return store.execute(user, str(model), str(method), call_args, kwargs)
        if service == "db" and fn == "list":
            raise access_denied()
        known = service in ("common", "object", "db")
        raise OdooError("builtins.Exception", f"No such method {fn!r}" if known else f"No such service {service!r}")

    @staticmethod
    def _rpc_error(req_id: Any, err: OdooError) -> Reply:
        return json_reply(200, {"jsonrpc": "2.0", "id": req_id, "error": {
            "code": 200, "message": "Odoo Server Error",
            "data": {"name": err.name, "debug": _traceback(err), "message": err.message,
                     "arguments": [err.message], "context": {}}}})

    # JSON-2 --------------------------------------------------------------------------------------
    def _json2(self, path: str, headers: Any, body: bytes) -> Reply | None:
        parts = path.split("/")
        label = ".".join(parts[3:5]) if len(parts) >= 5 else path
        if self.version < 19 or len(parts) != 5:
            self._count(f"POST {path}", 404)
            return Reply(404, _NOT_FOUND_HTML, "text/html; charset=utf-8")
        model, method = parts[3], parts[4]
        handled, reply = self._faulted(label, self._json2_error)
        if handled:
            return reply
        try:
            auth = headers.get("Authorization") or ""
            scheme, _, key = auth.partition(" ")
            user = self._store.user_by_key(key.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise OdooError("werkzeug.exceptions.Unauthorized", "Invalid apikey")
            db = headers.get("X-Odoo-Database")
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                raise OdooError("werkzeug.exceptions.BadRequest", "Invalid JSON data") from None
            if not isinstance(payload, dict):
                raise OdooError("werkzeug.exceptions.BadRequest", "The body must be a JSON object")
            with self._store.lock:
                if db is not None:
                    self._store.check_db(db)
                kwargs = {k: v for k, v in payload.items() if k != "ids"}
                args = [payload["ids"]] if "ids" in payload else []
                result = self._store.execute(user, model, method, args, kwargs)
            reply = json_reply(200, result)
        except OdooError as err:
            reply = self._json2_error(err)
        except Exception as exc:  # noqa: BLE001 - the server boundary
            reply = self._json2_error(OdooError(f"builtins.{type(exc).__name__}", str(exc)))
        self._count(label, reply.status)
        return reply

    @staticmethod
    def _json2_error(err: OdooError) -> Reply:
        status = _JSON2_STATUS.get(err.name, 400 if err.name.endswith("BadRequest") else 500)
        return json_reply(status, {"name": err.name, "message": err.message, "arguments": [err.message, status]
                                   if status == 401 else [err.message], "context": {}, "debug": _traceback(err)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync.sandbox.odoo", description="Run the Odoo fake.")
    parser.add_argument("data", help="data file (JSON, see the module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8069)
    parser.add_argument("--version", type=int, default=17, choices=sorted(STATES))
    opts = parser.parse_args(argv)
    fake = OdooFake(load_data(opts.data), version=opts.version, host=opts.host, port=opts.port).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"Odoo {opts.version} fake on {fake.url} (database {fake.database!r})", file=sys.stderr)  # noqa: T201
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
