"""Zenslearn LMS client: paced, retried, and every answer classified once (lms-contract.md §4).

Layers, each testable alone:  build (engine) -> `send` with retry -> `_send_once` -> `classify`.
Paths and fields come from `sync.contract` only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pyrate_limiter import Duration, Limiter, Rate, SQLiteBucket

from sync import contract as C
from sync.config import LmsSettings
from sync.errors import ConflictError, StopSource, TransientError
from sync.logs import get_logger, redact
from sync.retry import call_with_retry

MAX_BODY_BYTES = 5_000_000
log = get_logger(component="lms")


@dataclass
class Answer:
    status: int
    body: Any
    replayed: bool = False


def detail_text(body: Any) -> str:
    """`detail` as one readable string, whether the server sent a string or FastAPI's list."""
    if not isinstance(body, dict):
        return redact(str(body)[:300]) if body is not None else ""
    detail = body.get(C.ERR_DETAIL)
    if isinstance(detail, str):
        return redact(detail[:500])
    if isinstance(detail, list):
        parts = []
        for item in detail[:10]:
            if isinstance(item, dict):
                raw_loc = item.get("loc")
                loc = ".".join(str(x) for x in raw_loc if x != "body") if isinstance(raw_loc, list) else (
                    "" if raw_loc is None else str(raw_loc))
                msg = item.get("msg")
                parts.append(f"{loc}: {'' if msg is None else msg}".strip(": "))
            else:
                parts.append(str(item))
        return redact("; ".join(parts)[:500])
    return redact(json.dumps(body, default=str)[:300])


def classify(status: int, body: Any, retry_after: float | None = None, *, want_object: bool = False) -> Any:
    """Map one LMS answer to an outcome: return the body (done) or raise the error class that says what's next.

    A 2xx is done only when its body is JSON (for writes, `want_object`, the object written, with its id):
    anything else is an answer we cannot read, so the outcome is unknown and the same request is retried
    with the same key and body (rule 10)."""
    detail = detail_text(body)
    if 200 <= status < 300:
        if not isinstance(body, dict | list):
            raise TransientError(f"LMS answered {status} with a body that is not JSON; outcome unknown",
                                 status=status)
        if want_object and (not isinstance(body, dict) or body.get(C.WRITE_RESULT_ID) is None):
            raise TransientError(f"LMS answered {status} to a write without the object it wrote (no "
                                 f"{C.WRITE_RESULT_ID!r}); outcome unknown", status=status)
        return body
    if status in (401, 403):
        raise StopSource(f"LMS refused the API key ({status}): {detail or 'no detail'}", status=status)
    if status == 429:
        raise TransientError("LMS rate limit (429)", status=status, retry_after=retry_after)
    if status >= 500:
        raise TransientError(f"LMS server error {status}: {detail}", status=status)
    if status == 400:
        raise ConflictError("rejected", detail or "bad request", status=status, response=body)
    if status == 404:
        raise ConflictError("mapping_stale", detail or "not found", status=status, response=body)
    if status == 409:
        low = detail.lower()
        for phrase, kind in C.CONFLICT_409_PHRASES:
            if phrase in low:
                raise ConflictError(kind, detail, status=status, response=body)
        raise ConflictError("lms_conflict", detail or "conflict", status=status, response=body)
    if status == 422:
        if isinstance(body, dict) and C.ERR_REMAINING_BALANCE in body:
            raise ConflictError("overpayment", detail, status=status, response=body,
                                extra={"remaining_balance": body.get(C.ERR_REMAINING_BALANCE)})
        raise ConflictError("validation", detail or "unprocessable", status=status, response=body)
    if 400 <= status < 500:
        raise ConflictError("unexpected_status", f"LMS answered {status}: {detail}", status=status, response=body)
    raise TransientError(f"LMS answered unexpected status {status}", status=status)


def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _parse_body(raw: bytes, content_type: str) -> Any:
    """The answer's JSON, or None when it is empty, too large, not labelled JSON, or does not parse
    (a body labelled text/html that happens to hold JSON is a proxy's page, not the LMS's answer)."""
    if not raw or len(raw) > MAX_BODY_BYTES or not _is_json_type(content_type):
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: absurdly nested JSON
        return None


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds else None


def make_limiter(settings: LmsSettings, default_dir: str | Path | None, *, pg_url: str | None = None) -> Limiter:
    """Client-side pacing under the LMS limit, shared by every process using the same key (rule 16).

    On one machine the budget lives in a SQLite file beside the state store (daemon and backfill
    share it); with a PostgreSQL state (replicas) it lives in that database, so the per-key limit
    holds across every replica.
    """
    per_minute = max(1, int(settings.rate_limit_per_minute * settings.rate_safety))
    rates = [Rate(per_minute, Duration.MINUTE)]
    if pg_url is not None:
        from psycopg_pool import ConnectionPool
        from pyrate_limiter import PostgresBucket
        dsn = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
        pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        return Limiter(PostgresBucket(pool, "feesync_lms_pacing", rates), buffer_ms=20)
    path = settings.limiter_path or (str(Path(default_dir) / "feesync-pacing.db") if default_dir else None)
    bucket = SQLiteBucket.init_from_file(rates, db_path=path, table="lms_pacing",
                                         create_new_table=True, use_file_lock=path is not None)
    return Limiter(bucket, buffer_ms=20)


class LmsClient:
    """One LMS institute's API, seen through one key."""

    def __init__(self, settings: LmsSettings, *, transport: httpx.BaseTransport | None = None,
                 limiter: Limiter | None = None, sleep: Callable[[float], None] | None = None,
                 stop_event: threading.Event | None = None) -> None:
        if settings.api_key is None:
            raise ValueError("LMS api_key is required")
        self.settings = settings
        self._key = settings.api_key.get_secret_value()
        self._bucket_name = "lms:" + hashlib.sha256(self._key.encode()).hexdigest()[:16]
        self.http = httpx.Client(
            base_url=settings.base_url,
            headers={C.HDR_API_KEY: self._key, "User-Agent": "feesync/0.1", "Accept": "application/json"},
            timeout=httpx.Timeout(settings.timeout_seconds),
            transport=transport,
        )
        self.limiter = limiter
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep or (lambda s: self.stop_event.wait(s))
        self.requests: Counter[str] = Counter()   # by status ("200", "429", "error")
        self.writes_sent = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # --- the bottom layer: one HTTP exchange ----------------------------------------------
    def _send_once(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                   json_body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        if self.limiter is not None:
            # wait for a slot in short steps, so a stop (SIGTERM) is honoured within a second even when the
            # budget is spent for a while; nothing has been sent, so the document simply stays pending
            while not self.limiter.try_acquire(self._bucket_name, blocking=True, timeout=1):
                if self.stop_event.is_set():
                    raise TransientError(f"LMS {method} {path}: not sent, stopping while waiting for the rate "
                                         "budget")
        try:
            with self.http.stream(method, path, params=params, json=json_body, headers=headers) as resp:
                raw = b""
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_BODY_BYTES:
                        break
        except httpx.UnsupportedProtocol as exc:
            raise StopSource(f"LMS base URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            with self._lock:
                self.requests["error"] += 1
            raise TransientError(f"LMS {method} {path}: {type(exc).__name__} ({redact(str(exc))[:120]})") from None
        with self._lock:
            self.requests[str(resp.status_code)] += 1
        content_type = resp.headers.get("content-type", "")
        body = _parse_body(raw, content_type)
        if body is None and raw and resp.status_code < 500:
            body = {"detail": f"non-JSON answer ({redact(content_type[:60]) or '?'}, {len(raw)} bytes)"}
            if 200 <= resp.status_code < 300:
                body = None   # a 2xx we cannot read: outcome unknown
        retry_after = _parse_retry_after(resp.headers.get(C.HDR_RETRY_AFTER))
        result = classify(resp.status_code, body, retry_after, want_object=method != "GET")
        replayed = resp.headers.get(C.HDR_REPLAYED, "").lower() == "true"
        return Answer(resp.status_code, result, replayed)

    # --- the retry layer --------------------------------------------------------------------
    def send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json_body: Any = None,
             idem_key: str | None = None, max_attempts: int | None = None) -> Answer:
        """Send with bounded retries (same key, same body). Raises DeferredError when the budget is spent."""
        headers = {C.HDR_IDEMPOTENCY_KEY: idem_key} if idem_key else None

        def once() -> Answer:
            if method != "GET":
                with self._lock:
                    self.writes_sent += 1
            return self._send_once(method, path, params=params, json_body=json_body, headers=headers)

        return call_with_retry(
            once, max_attempts=max_attempts or self.settings.max_attempts, max_seconds=self.settings.max_retry_seconds,
            retry_after_cap=self.settings.retry_after_cap_seconds, sleep=self._sleep, stop_event=self.stop_event,
            on_retry=lambda n, e: log.warning("lms.retry", method=method, path=path, attempt=n, error=str(e)),
            what=f"LMS {method} {path}")

    # --- reads ------------------------------------------------------------------------------
    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            ans = self.send("GET", path, params={**params, C.Q_PAGE: page, C.Q_PER_PAGE: C.PER_PAGE_MAX})
            body = ans.body if isinstance(ans.body, dict) else {}
            rows = body.get(C.PAGE_DATA)
            if not isinstance(rows, list):
                raise TransientError(f"LMS list {path} answered without a data list")
            yield from (r for r in rows if isinstance(r, dict))
            total_pages = body.get(C.PAGE_TOTAL_PAGES)
            if not rows or (isinstance(total_pages, int) and page >= total_pages) or len(rows) < C.PER_PAGE_MAX:
                return
            page += 1

    def find_students(self, search: str) -> list[dict[str, Any]]:
        return list(self._pages(C.PATH_STUDENTS, {C.Q_SEARCH: search}))

    def get_student(self, student_id: str) -> dict[str, Any]:
        return self.send("GET", C.path(C.PATH_STUDENT, student_id=student_id)).body

    def list_plans(self, student_id: str, status: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {C.Q_STUDENT_ID: student_id}
        if status:
            params[C.Q_STATUS] = status
        return list(self._pages(C.PATH_FEE_PLANS, params))

    def get_plan(self, plan_id: str) -> dict[str, Any]:
        return self.send("GET", C.path(C.PATH_FEE_PLAN, plan_id=plan_id)).body

    def list_payments(self, **filters: Any) -> list[dict[str, Any]]:
        return list(self._pages(C.PATH_PAYMENTS, {k: v for k, v in filters.items() if v is not None}))

    def fee_summary(self, student_id: str) -> dict[str, Any]:
        return self.send("GET", C.path(C.PATH_STUDENT_FEE_SUMMARY, student_id=student_id)).body

    def probe(self) -> list[str]:
        """Reach the LMS and check the key's scopes without writing: returns the problems found."""
        problems = []
        for op, path in (("list_students", C.PATH_STUDENTS), ("list_fee_plans", C.PATH_FEE_PLANS),
                         ("list_payments", C.PATH_PAYMENTS)):
            try:
                self._send_once("GET", path, params={C.Q_PAGE: 1, C.Q_PER_PAGE: 1})
            except StopSource as exc:
                if exc.status == 401:
                    problems.append(f"lms: the API key was refused: {exc}")
                    break
                problems.append(f"lms: {op} refused: {exc} (needs scope {C.OPERATION_SCOPES[op]})")
            except (TransientError, ConflictError) as exc:
                problems.append(f"lms: {op} failed: {exc}")
                break
        if problems:
            return problems
        # fees:write without writing: a record-payment on a plan that cannot exist, without a key or
        # body. A key lacking the scope is refused (403) before anything is validated.
        try:
            self._send_once("POST", C.path(C.PATH_PLAN_PAYMENTS, plan_id=0), json_body={})
        except StopSource as exc:
            problems.append(f"lms: record_payment refused: {exc} (needs scope {C.SCOPE_FEES_WRITE})")
        except ConflictError:
            pass   # 400/404/422: the scope check passed
        except TransientError as exc:
            problems.append(f"lms: write probe failed: {exc}")
        return problems
