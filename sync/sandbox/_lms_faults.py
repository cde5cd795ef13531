"""Fault injection for the LMS sandbox (private; see `sync.sandbox.lms`).

Every fault is armed with a `count` and is consumed each time it fires. The first armed
fault of a kind whose method and `path_regex` match the request fires. `path_regex` is
matched with `re.search` against the request path without its query string, for example
`/api/v1/public/fee-plans/5001/payments`, so a fragment such as `/payments$` works.
"""

from __future__ import annotations

import re
import threading
from typing import Any

GARBAGE_KINDS = ("html", "not_json", "truncated", "wrong_content_type", "empty_200", "short_body")
FAULT_TYPES = ("drop_after_apply", "fail", "slow", "garbage")


def _check_count(count: object) -> int:
    if type(count) is not int or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    return count


def _check_method(method: object) -> str | None:
    if method is None:
        return None
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be an HTTP method name or None, got {method!r}")
    return method.upper()


def _check_regex(path_regex: object) -> re.Pattern[str]:
    if not isinstance(path_regex, str):
        raise ValueError(f"path_regex must be a string, got {path_regex!r}")
    try:
        return re.compile(path_regex)
    except re.error as exc:
        raise ValueError(f"path_regex is not a valid regular expression: {exc}") from None


def _check_status(status: object) -> int:
    if type(status) is not int or not 100 <= status <= 599:
        raise ValueError(f"status must be an integer HTTP status, got {status!r}")
    return status


class Faults:
    """Thread-safe set of armed faults. Reached as `LmsSandbox.faults`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._ignore_idem_create_plan = False

    # --- arming ---------------------------------------------------------------------------
    def drop_after_apply(self, count: int = 1, method: str | None = "POST", path_regex: str = ".*") -> None:
        """Process the next `count` matching requests fully, then close the connection without answering."""
        self._add({"type": "drop_after_apply", "count": _check_count(count), "method": _check_method(method),
                   "path_regex": _check_regex(path_regex)})

    def fail(self, status: int = 500, count: int = 1, method: str | None = None, path_regex: str = ".*",
             retry_after: int | float | None = None) -> None:
        """Answer `status` to the next `count` matching requests before applying anything."""
        if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, (int, float))):
            raise ValueError(f"retry_after must be a number or None, got {retry_after!r}")
        self._add({"type": "fail", "count": _check_count(count), "method": _check_method(method),
                   "path_regex": _check_regex(path_regex), "status": _check_status(status),
                   "retry_after": retry_after})

    def slow(self, seconds: float, count: int = 1, path_regex: str = ".*", method: str | None = None) -> None:
        """Sleep `seconds` before handling the next `count` matching requests (which are then handled normally)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        self._add({"type": "slow", "count": _check_count(count), "method": _check_method(method),
                   "path_regex": _check_regex(path_regex), "seconds": float(seconds)})

    def garbage(self, count: int = 1, kind: str = "html", path_regex: str = ".*", method: str | None = None,
                status: int = 200) -> None:
        """Answer the next `count` matching requests with a hostile body, before applying anything.

        kinds: `html` (an HTML page, text/html), `not_json` (application/json that does not parse),
        `truncated` (the first half of a JSON document, honest Content-Length), `wrong_content_type`
        (a JSON body labelled text/plain), `empty_200` (status 200, empty body, no content type; `status`
        ignored), `short_body` (Content-Length promises more bytes than are sent, then the connection closes).
        """
        if kind not in GARBAGE_KINDS:
            raise ValueError(f"kind must be one of {GARBAGE_KINDS}, got {kind!r}")
        self._add({"type": "garbage", "count": _check_count(count), "method": _check_method(method),
                   "path_regex": _check_regex(path_regex), "kind": kind,
                   "status": 200 if kind == "empty_200" else _check_status(status)})

    @property
    def ignore_idempotency_on_create_plan(self) -> bool:
        """When True, `POST /fee-plans` ignores `Idempotency-Key` (a retry creates a second plan)."""
        with self._lock:
            return self._ignore_idem_create_plan

    @ignore_idempotency_on_create_plan.setter
    def ignore_idempotency_on_create_plan(self, value: bool) -> None:
        with self._lock:
            self._ignore_idem_create_plan = bool(value)

    def clear(self) -> None:
        """Disarm every fault and reset `ignore_idempotency_on_create_plan` to False."""
        with self._lock:
            self._items.clear()
            self._ignore_idem_create_plan = False

    def pending(self) -> list[dict[str, Any]]:
        """The armed faults (a copy, regexes as strings)."""
        with self._lock:
            return [{k: (v.pattern if isinstance(v, re.Pattern) else v) for k, v in item.items()}
                    for item in self._items]

    def arm(self, spec: dict[str, Any]) -> None:
        """Arm a fault from a JSON spec `{"type": ..., **arguments}` (the admin endpoint uses this)."""
        if not isinstance(spec, dict):
            raise ValueError("fault spec must be a JSON object")
        args = dict(spec)
        ftype = args.pop("type", None)
        if ftype not in FAULT_TYPES:
            raise ValueError(f"type must be one of {FAULT_TYPES}, got {ftype!r}")
        try:
            getattr(self, ftype)(**args)
        except TypeError as exc:
            raise ValueError(f"bad arguments for {ftype}: {exc}") from None

    # --- firing ---------------------------------------------------------------------------
    def _add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(item)

    def take(self, ftype: str, method: str, path: str) -> dict[str, Any] | None:
        """Consume one firing of the first armed fault of `ftype` matching the request, if any."""
        with self._lock:
            if not self._items:
                return None
            for item in self._items:
                if item["type"] != ftype:
                    continue
                if item["method"] is not None and item["method"] != method:
                    continue
                if not item["path_regex"].search(path):
                    continue
                item["count"] -= 1
                if item["count"] <= 0:
                    self._items.remove(item)
                return dict(item)
            return None
