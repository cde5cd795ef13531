"""Fault injection for the ERPNext fake: failures, delays, dropped connections, list hooks."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._erpnext_api import Api, Response, html_response, json_response
from ._erpnext_errors import FrappeError

ListHook = Callable[[str, list], Any]
_GATEWAY_HTML = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_FAIL_TYPES = {
    401: "AuthenticationError",
    403: "PermissionError",
    404: "DoesNotExistError",
    409: "DuplicateEntryError",
    417: "ValidationError",
}


@dataclass
class Fault:
    kind: str  # fail | slow | drop
    remaining: int | None  # None = until cleared
    pattern: re.Pattern[str]
    method: str | None = None
    status: int = 500
    seconds: float = 0.0
    body: Any = None
    headers: dict[str, str] | None = None

    def matches(self, method: str, path: str, target: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return bool(self.pattern.search(path) or self.pattern.search(target))

    def describe(self) -> dict[str, Any]:
        return {
            "action": self.kind,
            "count": self.remaining,
            "path_regex": self.pattern.pattern,
            "method": self.method,
            "status": self.status,
            "seconds": self.seconds,
        }


class Faults:
    """Injected failures, consumed as they fire (thread-safe), plus list-page hooks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._hooks: list[ListHook] = []

    def _add(self, fault: Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("count must be >= 1 (or None for 'until cleared')")
        with self._lock:
            self._faults.append(fault)

    def fail(
        self,
        status: int = 500,
        count: int | None = 1,
        path_regex: str = ".*",
        *,
        method: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer matching requests with `status` and a Frappe-like body (or `body`)."""
        self._add(
            Fault(
                "fail",
                count,
                re.compile(path_regex),
                method,
                status=int(status),
                body=body,
                headers=headers,
            )
        )

    def slow(
        self,
        seconds: float,
        count: int | None = 1,
        path_regex: str = ".*",
        *,
        method: str | None = None,
    ) -> None:
        """Sleep `seconds` before answering matching requests (to provoke client timeouts)."""
        self._add(Fault("slow", count, re.compile(path_regex), method, seconds=float(seconds)))

    def drop(
        self, count: int | None = 1, path_regex: str = ".*", *, method: str | None = None
    ) -> None:
        """Close the connection of matching requests without answering."""
        self._add(Fault("drop", count, re.compile(path_regex), method))

    def on_list(self, callback: ListHook | None) -> None:
        """Call `callback(doctype, rows)` after each list page is computed, before it is sent.
        The rows are the page's dicts (or lists); `None` removes every hook."""
        with self._lock:
            if callback is None:
                self._hooks.clear()
            else:
                self._hooks.append(callback)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._hooks.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def list_hooks(self) -> list[ListHook]:
        with self._lock:
            return list(self._hooks)

    def take(self, method: str, path: str, target: str) -> tuple[float, Fault | None]:
        """(seconds to sleep, the fail/drop fault to apply) for one request; consumes them."""
        with self._lock:
            chosen: dict[str, Fault] = {}
            for fault in self._faults:
                if fault.kind not in chosen and fault.matches(method, path, target):
                    chosen[fault.kind] = fault
            applied = [chosen[k] for k in ("slow", "drop", "fail") if k in chosen]
            if "drop" in chosen and "fail" in chosen:
                applied.remove(chosen["fail"])
            for fault in applied:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
        sleep = chosen["slow"].seconds if "slow" in chosen else 0.0
        final = chosen.get("drop") or chosen.get("fail")
        return sleep, final

    def configure(self, spec: dict[str, Any]) -> None:
        """One `/_fake/faults` item: {"action": "fail"|"slow"|"drop"|"clear", ...}."""
        action = spec.get("action")
        common = {
            "count": spec.get("count", 1),
            "path_regex": spec.get("path_regex", ".*"),
            "method": spec.get("method"),
        }
        if action == "fail":
            self.fail(
                spec.get("status", 500),
                body=spec.get("body"),
                headers=spec.get("headers"),
                **common,
            )
        elif action == "slow":
            self.slow(spec["seconds"], **common)
        elif action == "drop":
            self.drop(**common)
        elif action == "clear":
            self.clear()
        else:
            raise ValueError(f"unknown fault action {action!r}")


def fault_response(fault: Fault, api: Api, path: str) -> Response:
    """The answer an armed `fail` gives: Frappe-like JSON, nginx HTML for 502-504, 429 text."""
    extra = list((fault.headers or {}).items())
    if fault.body is not None:
        if isinstance(fault.body, dict | list):
            response = json_response(fault.status, fault.body)
        else:
            raw = fault.body.encode() if isinstance(fault.body, str) else bytes(fault.body)
            response = Response(fault.status, raw, "text/plain; charset=utf-8")
    elif fault.status == 429:
        response = Response(
            429, b"Too Many Requests", "text/plain; charset=utf-8", [("Retry-After", "1")]
        )
    elif fault.status in (502, 503, 504):
        reason = {
            502: "Bad Gateway",
            503: "Service Temporarily Unavailable",
            504: "Gateway Time-out",
        }
        response = html_response(
            fault.status, _GATEWAY_HTML.format(status=fault.status, reason=reason[fault.status])
        )
    else:
        if fault.status >= 500:
            error = FrappeError(
                "OperationalError",
                "(2013, 'Lost connection to MySQL server during query')",
                status=fault.status,
                module="pymysql.err",
                msg_style="none",
            )
        else:
            error = FrappeError(
                _FAIL_TYPES.get(fault.status, "ValidationError"),
                "Failure injected by the ERPNext fake",
                status=fault.status,
            )
        response = api.error_response(error, v2=path.startswith("/api/v2/"))
    response.headers.extend(extra)
    return response
