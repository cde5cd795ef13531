"""Odoo's external API behind one interface: JSON-RPC (`/jsonrpc`, 16–19) or JSON-2 (`/json/2`, 19+).

Errors are translated once, here:

* JSON-RPC answers application errors with **HTTP 200** and an `error` object whose
  `data.name` is the Python exception's dotted name; JSON-2 uses HTTP statuses with the same
  `{name, message}` body.
* AccessDenied / AccessError / Unauthorized, `authenticate` returning `false`, or an unknown
  database → `StopSource` (credentials or configuration; the cursor is kept).
* Connect errors, timeouts, 429, 5xx and PostgreSQL serialization/operational hiccups →
  `TransientError`, retried with backoff by `call_with_retry`, then `DeferredError`.
* MissingError → `LookupError` (the caller decides); anything else → `SourceError`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from sync.errors import SourceError, StopSource, TransientError
from sync.logs import get_logger, redact
from sync.retry import call_with_retry
from sync.times import parse_http_date

log = get_logger(component="odoo")

_STOP = ("odoo.exceptions.AccessDenied", "odoo.exceptions.AccessError", "werkzeug.exceptions.Unauthorized",
         "werkzeug.exceptions.Forbidden", "odoo.http.SessionExpiredException")
_TRANSIENT_HINTS = ("SerializationFailure", "TransactionRollbackError", "InterfaceError", "LockNotAvailable",
                    "DeadlockDetected", "ConcurrencyError", "psycopg2.OperationalError", "psycopg.OperationalError")


def _classify(name: str, message: str, status: int | None) -> Exception:
    text = redact(f"{name}: {message}"[:400])
    if name in _STOP:
        return StopSource(f"Odoo refused access ({text})", status=status, system="erp")
    if "OperationalError" in name and "does not exist" in message:
        return StopSource(f"Odoo database is not usable ({text}); check `database`", status=status, system="erp")
    if name == "odoo.exceptions.MissingError":
        return LookupError(text)
    if any(h in name for h in _TRANSIENT_HINTS):
        return TransientError(f"Odoo database busy ({text})", status=status)
    return SourceError(f"Odoo rejected the call ({text})", status=status)


class OdooRPC:
    """One Odoo database seen through one API key. Thread-safe enough for one run at a time."""

    def __init__(self, *, url: str, database: str, login: str | None, api_key: str, protocol: str, version: int,
                 timeout: float, max_attempts: int, max_seconds: float, transport: httpx.BaseTransport | None = None,
                 stop_event: threading.Event | None = None, sleep: Callable[[float], Any] | None = None) -> None:
        self.database, self.login, self._key = database, login, api_key
        self.protocol, self.version = protocol, version
        headers = {"Accept": "application/json", "User-Agent": "feesync/0.1"}
        if protocol == "json2":
            headers["Authorization"] = f"bearer {api_key}"
            if database:
                headers["X-Odoo-Database"] = database
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout),
                                 transport=transport)
        self.max_attempts, self.max_seconds = max_attempts, max_seconds
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self.uid: int | None = None
        self.server_now: datetime | None = None
        self.requests = 0
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    # --- one exchange ------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any], what: str) -> tuple[int, Any]:
        self.requests += 1
        try:
            resp = self.http.post(path, json=payload)
        except httpx.UnsupportedProtocol as exc:
            raise SourceError(f"Odoo URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"Odoo {what}: {type(exc).__name__}") from None
        seen = parse_http_date(resp.headers.get("date"))
        if seen is not None:
            self.server_now = seen
        try:
            body = resp.json()
        except ValueError:
            body = None
        status = resp.status_code
        if status == 429:
            ra = resp.headers.get("retry-after")
            raise TransientError(f"Odoo {what}: rate limited (429)", status=429,
                                 retry_after=float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)
        if status >= 500 and not (isinstance(body, dict) and body.get("name")):
            raise TransientError(f"Odoo {what}: server error {status}", status=status)
        return status, body

    def _rpc_once(self, service: str, method: str, args: list[Any]) -> Any:
        payload = {"jsonrpc": "2.0", "method": "call", "params": {"service": service, "method": method, "args": args},
                   "id": next(self._ids)}
        what = f"{service}.{method}" if service != "object" else f"{args[3]}.{args[4]}"
        status, body = self._post("/jsonrpc", payload, what)
        if status == 404:
            raise SourceError("Odoo has no /jsonrpc endpoint at this URL (removed in Odoo 22; use protocol "
                              "\"json2\" on 19+)", status=404)
        if status in (401, 403):
            raise StopSource(f"Odoo (or a proxy) refused {what} ({status})", status=status, system="erp")
        if status != 200:
            raise SourceError(f"Odoo {what}: unexpected HTTP {status}", status=status)
        if not isinstance(body, dict):
            raise TransientError(f"Odoo {what}: answered 200 with a body that is not JSON-RPC", status=status)
        if "error" in body:
            err = body["error"] if isinstance(body["error"], dict) else {}
            data = err.get("data") if isinstance(err.get("data"), dict) else {}
            raise _classify(str(data.get("name") or err.get("message") or "error"),
                            str(data.get("message") or err.get("message") or ""), 200)
        if "result" not in body:
            raise TransientError(f"Odoo {what}: JSON-RPC answer without result", status=status)
        return body["result"]

    def _json2_once(self, model: str, method: str, named: dict[str, Any]) -> Any:
        what = f"{model}.{method}"
        status, body = self._post(f"/json/2/{model}/{method}", named, what)
        if status == 200:
            return body
        if status == 404 and not isinstance(body, dict):
            raise SourceError("Odoo has no /json/2 endpoint at this URL (JSON-2 needs Odoo 19+; use protocol "
                              "\"jsonrpc\")", status=404)
        if isinstance(body, dict) and body.get("name"):
            if status == 401:
                raise StopSource(f"Odoo refused the API key ({body.get('message', '')})", status=401, system="erp")
            raise _classify(str(body["name"]), str(body.get("message", "")), status)
        if status in (401, 403):
            raise StopSource(f"Odoo refused {what} ({status})", status=status, system="erp")
        raise SourceError(f"Odoo {what}: unexpected HTTP {status}", status=status)

    # --- with retries ------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_retry(fn, max_attempts=self.max_attempts, max_seconds=self.max_seconds,
                               retry_after_cap=60.0, sleep=self._sleep, stop_event=self.stop_event,
                               what=f"Odoo {what}",
                               on_retry=lambda n, e: log.warning("erp.retry", call=what, attempt=n, error=str(e)))

    def authenticate(self) -> int:
        """JSON-RPC: check the server's version and get the uid once per connector (False → StopSource)."""
        if self.protocol == "json2":
            return 0
        if self.uid is None:
            info = self._retry(lambda: self._rpc_once("common", "version", []), "common.version")
            major = (info or {}).get("server_version_info", [None])[0] if isinstance(info, dict) else None
            if isinstance(major, int) and major != self.version:
                raise StopSource(f"Odoo server is version {major} but the source is configured for version "
                                 f"{self.version}; fix `version`", system="erp")
            uid = self._retry(lambda: self._rpc_once("common", "authenticate",
                                                     [self.database, self.login, self._key, {}]),
                              "common.authenticate")
            if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
                raise StopSource("Odoo refused the login / API key (authenticate returned false)", system="erp")
            self.uid = uid
        return self.uid

    def call(self, model: str, method: str, named: dict[str, Any]) -> Any:
        """Call an ORM method with named arguments (`domain`, `fields`, `ids`, `offset`, `limit`, `order`)."""
        if self.protocol == "json2":
            return self._retry(lambda: self._json2_once(model, method, named), f"{model}.{method}")
        uid = self.authenticate()
        kwargs = dict(named)
        if method in ("search_read", "search_count", "search"):
            args = [kwargs.pop("domain", [])]
        elif method == "read":
            args = [kwargs.pop("ids", [])]
        else:
            args = []
        return self._retry(lambda: self._rpc_once("object", "execute_kw",
                                                  [self.database, uid, self._key, model, method, args, kwargs]),
                           f"{model}.{method}")

    def ping(self) -> None:
        """A cheap call that refreshes `server_now` (the HTTP Date of the answer)."""
        if self.protocol == "json2":
            self.call("res.users", "context_get", {})
        else:
            self._retry(lambda: self._rpc_once("common", "version", []), "common.version")
