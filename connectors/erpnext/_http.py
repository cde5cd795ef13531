"""HTTP access to a Frappe/ERPNext site: token auth, retries, and Frappe errors translated into ours."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any

import httpx

from sync.errors import SourceError, StopSource, TransientError
from sync.logs import get_logger, redact
from sync.retry import call_with_retry
from sync.times import parse_http_date

log = get_logger(component="erpnext")


def frappe_message(body: Any) -> str:
    """The human message of a Frappe error: `_server_messages` is a JSON string of JSON strings."""
    if not isinstance(body, dict):
        return ""
    out: list[str] = []
    raw = body.get("_server_messages")
    if isinstance(raw, str):
        try:
            for item in json.loads(raw):
                msg = json.loads(item) if isinstance(item, str) else item
                if isinstance(msg, dict) and msg.get("message"):
                    out.append(str(msg["message"]))
        except (ValueError, TypeError):
            out.append(raw[:200])
    if not out and body.get("_error_message"):
        out.append(str(body["_error_message"]))
    if not out and isinstance(body.get("errors"), list):
        out.extend(str(e.get("message", "")) for e in body["errors"] if isinstance(e, dict))
    exc_type = body.get("exc_type")
    text = "; ".join(m for m in out if m)
    if exc_type:
        text = f"{exc_type}: {text}" if text else str(exc_type)
    return redact(text[:400])


class FrappeHTTP:
    """A small Frappe REST client. One instance per source; thread-safe enough for one run at a time."""

    def __init__(self, *, url: str, api_key: str, api_secret: str, timeout: float, max_attempts: int,
                 max_seconds: float, host_header: str | None = None,
                 transport: httpx.BaseTransport | None = None, stop_event: threading.Event | None = None) -> None:
        headers = {"Authorization": f"token {api_key}:{api_secret}", "Accept": "application/json",
                   "User-Agent": "feesync/0.1"}
        if host_header:
            headers["Host"] = host_header
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout),
                                 transport=transport)
        self.max_attempts = max_attempts
        self.max_seconds = max_seconds
        self.stop_event = stop_event or threading.Event()
        self.server_now: datetime | None = None
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def _once(self, method: str, path: str, params: dict[str, Any] | None) -> Any:
        self.requests += 1
        try:
            resp = self.http.request(method, path, params=params)
        except httpx.UnsupportedProtocol as exc:
            raise SourceError(f"ERP URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"ERP {method} {path}: {type(exc).__name__}") from None
        seen = parse_http_date(resp.headers.get("date"))
        if seen is not None:
            self.server_now = seen
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = None
        if status == 200:
            if not isinstance(body, dict):
                raise TransientError(f"ERP {path} answered 200 with a body that is not JSON", status=status)
            return body
        msg = frappe_message(body) or (resp.text[:120] if resp.text else "")
        msg = redact(msg)
        if status in (401, 403):
            raise StopSource(f"ERP refused the credentials ({status}): {msg}", status=status, system="erp")
        if status == 429:
            ra = resp.headers.get("retry-after")
            raise TransientError(f"ERP rate limit (429): {msg}", status=status,
                                 retry_after=float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)
        if status == 404:
            raise LookupError(msg or "not found")
        # MariaDB "server has gone away" (2006) / "lost connection" (2013) are the database blinking, not our query
        detail = " ".join(str(body.get(k, "")) for k in ("exception", "exc")) if isinstance(body, dict) else ""
        db_blip = "OperationalError" in msg + detail and any(
            code in msg + detail for code in ("(2006", "(2013", "(1205", "(1213"))
        if status >= 500 and (db_blip or ("OperationalError" not in msg and "JSONDecodeError" not in msg)):
            raise TransientError(f"ERP server error {status}: {msg}", status=status)
        raise SourceError(f"ERP rejected {method} {path} ({status}): {msg}", status=status)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return call_with_retry(
            lambda: self._once("GET", path, params), max_attempts=self.max_attempts,
            max_seconds=self.max_seconds, retry_after_cap=60.0, sleep=self.stop_event.wait,
            stop_event=self.stop_event, what=f"ERP GET {path}",
            on_retry=lambda n, e: log.warning("erp.retry", path=path, attempt=n, error=str(e)))
