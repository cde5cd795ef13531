"""Zoho Books over HTTP: OAuth refresh, pacing (per minute and per day), and Zoho errors translated into ours.

* OAuth: `POST {accounts}/oauth/v2/token` with `refresh_token`, `client_id`, `client_secret` and
  `grant_type=refresh_token` in the form body (never in the URL, which gets logged) answers
  `{"access_token", "expires_in", ...}`, or HTTP 200 with `{"error": "invalid_code"}` for a
  bad refresh token (→ StopSource). The access token is refreshed `refresh_margin` before it
  expires, and once more when a call answers 401 / code 57; a second 401 stops the source.
* Every API call carries `organization_id` and `Authorization: Zoho-oauthtoken <token>`.
* Pacing: at most `requests_per_minute` calls per rolling minute (pyrate-limiter, in memory,
  this process) and `daily_budget` calls per UTC day (then `DeferredError`: the run stops and
  the next one resumes). Token calls go to the accounts server and count for neither.
* 429 (code 45) comes without `Retry-After`: it is retried after `backoff_seconds` (Zoho's
  window is a minute), bounded by attempts and time, then deferred. 5xx, timeouts and connect
  errors are retried with backoff; 404 → LookupError; other 4xx → SourceError; 403 → StopSource.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

from sync.errors import DeferredError, SourceError, StopSource, TransientError
from sync.logs import get_logger, redact, register_secret
from sync.retry import call_with_retry
from sync.times import parse_http_date, utcnow

log = get_logger(component="zoho")

_AUTH_CODES = {14, 57}            # invalid auth token / not authorized (invalid or expired OAuth token)
_RATE_CODES = {44, 45}            # too many requests (per minute; per day)
_OAUTH_STOP = {"invalid_code", "invalid_client", "invalid_client_secret", "unauthorized_client", "invalid_grant",
               "invalid_redirect_uri", "unsupported_grant_type", "invalid_scope"}


def zoho_message(body: Any) -> str:
    if isinstance(body, dict):
        code, msg = body.get("code"), body.get("message")
        if msg is not None or code is not None:
            return redact(f"code {code}: {msg}"[:300])
    return ""


class ZohoHTTP:
    """One Zoho Books organisation through one OAuth client. One instance per source."""

    def __init__(self, *, api_base: str, accounts_base: str, organization_id: str, client_id: str,
                 client_secret: str, refresh_token: str, timeout: float, max_attempts: int, max_seconds: float,
                 requests_per_minute: int, daily_budget: int, backoff_seconds: float, refresh_margin: float,
                 transport: httpx.BaseTransport | None = None, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], Any] | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.api_base, self.accounts_base = api_base.rstrip("/"), accounts_base.rstrip("/")
        self.organization_id = organization_id
        self._client_id, self._client_secret, self._refresh_token = client_id, client_secret, refresh_token
        for secret in (client_secret, refresh_token):
            register_secret(secret)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport,
                                 headers={"Accept": "application/json", "User-Agent": "feesync/0.1"})
        self.max_attempts, self.max_seconds = max_attempts, max_seconds
        self.backoff_seconds, self.refresh_margin = backoff_seconds, refresh_margin
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self._clock = clock or utcnow
        self.limiter = Limiter(InMemoryBucket([Rate(requests_per_minute, Duration.MINUTE)]))
        self._bucket = f"zoho:{organization_id}"
        self.daily_budget = daily_budget
        self.used_today = 0
        self.day = self._clock().astimezone(UTC).date()
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self.server_now: datetime | None = None
        self.requests = 0          # API calls sent (retries included)
        self.token_refreshes = 0

    def close(self) -> None:
        self.http.close()

    # --- budget and pacing -------------------------------------------------------------------
    def today(self) -> Any:
        today = self._clock().astimezone(UTC).date()
        if today != self.day:
            self.day, self.used_today = today, 0
        return today

    def preload_usage(self, day: str, used: int) -> None:
        """Carry the day's spent calls over from the state store (another process or an earlier run)."""
        if day == self.today().isoformat():
            self.used_today = max(self.used_today, used)

    def _pace(self) -> None:
        self.today()
        if self.used_today >= self.daily_budget:
            raise DeferredError(f"Zoho daily budget of {self.daily_budget} API calls is spent for {self.day} (UTC); "
                                "the next run after midnight UTC resumes")
        waited = 0.0
        while not self.limiter.try_acquire(self._bucket, blocking=False):
            if self.stop_event.is_set() or waited > 65:
                raise DeferredError("Zoho pacing: no request slot within a minute; deferred")
            self._sleep(0.5)
            waited += 0.5
        self.used_today += 1
        self.requests += 1

    # --- OAuth -------------------------------------------------------------------------------
    def _access_token(self, *, force: bool = False) -> str:
        now = self._clock()
        if (force or self._token is None or self._expires_at is None
                or now >= self._expires_at - timedelta(seconds=self.refresh_margin)):
            self._refresh()
        assert self._token is not None
        return self._token

    def _refresh(self) -> None:
        self.token_refreshes += 1
        params = {"refresh_token": self._refresh_token, "client_id": self._client_id,
                  "client_secret": self._client_secret, "grant_type": "refresh_token"}
        try:
            # in the form body, never the query string: URLs end up in httpx's INFO log lines and in
            # proxy / access logs, with the client secret and refresh token in them
            resp = self.http.post(f"{self.accounts_base}/oauth/v2/token", data=params)
        except httpx.UnsupportedProtocol as exc:
            raise SourceError(f"Zoho accounts URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"Zoho token refresh: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 500:
            raise TransientError(f"Zoho token refresh: server error {resp.status_code}", status=resp.status_code)
        if isinstance(body, dict) and isinstance(body.get("access_token"), str) and body["access_token"]:
            token = body["access_token"]   # never logged or put in a message; not registered (it rotates hourly)
            try:
                ttl = float(body.get("expires_in") or body.get("expires_in_sec") or 3600)
            except (TypeError, ValueError):
                ttl = 3600.0
            self._token = token
            self._expires_at = self._clock() + timedelta(seconds=ttl)
            log.info("zoho.token_refreshed", expires_in=ttl)
            return
        error = str(body.get("error")) if isinstance(body, dict) and body.get("error") else f"HTTP {resp.status_code}"
        if error in _OAUTH_STOP or resp.status_code in (401, 403):
            raise StopSource(f"Zoho refused the OAuth refresh ({redact(error)}); re-authorise the client and set a "
                             "new refresh_token", status=resp.status_code, system="erp")
        if "denied" in error.lower() or resp.status_code == 429 or resp.status_code == 400:
            raise TransientError(f"Zoho token refresh refused for now ({redact(error)[:120]})",
                                 status=resp.status_code, retry_after=self.backoff_seconds)
        raise SourceError(f"Zoho token refresh answered {redact(error)[:120]}", status=resp.status_code)

    # --- one call ----------------------------------------------------------------------------
    def _send(self, method: str, path: str, params: dict[str, Any], token: str) -> httpx.Response:
        self._pace()
        try:
            resp = self.http.request(method, f"{self.api_base}{path}",
                                     params={**params, "organization_id": self.organization_id},
                                     headers={"Authorization": f"Zoho-oauthtoken {token}"})
        except httpx.UnsupportedProtocol as exc:
            raise SourceError(f"Zoho API URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"Zoho {method} {path}: {type(exc).__name__}") from None
        seen = parse_http_date(resp.headers.get("date"))
        if seen is not None:
            self.server_now = seen
        return resp

    @staticmethod
    def _body(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            return None

    def _auth_failed(self, resp: httpx.Response, body: Any) -> bool:
        return resp.status_code == 401 or (isinstance(body, dict) and body.get("code") in _AUTH_CODES)

    def _once(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        resp = self._send(method, path, params, self._access_token())
        body = self._body(resp)
        if self._auth_failed(resp, body):
            log.info("zoho.token_rejected", path=path, detail=zoho_message(body))
            resp = self._send(method, path, params, self._access_token(force=True))
            body = self._body(resp)
            if self._auth_failed(resp, body):
                raise StopSource(f"Zoho refused a freshly refreshed token ({zoho_message(body) or resp.status_code}); "
                                 "check the client's scopes (ZohoBooks.customerpayments.READ) and organisation",
                                 status=resp.status_code, system="erp")
        status = resp.status_code
        code = body.get("code") if isinstance(body, dict) else None
        msg = zoho_message(body) or (redact(resp.text[:120]) if resp.text else "")
        if status == 429 or code in _RATE_CODES:
            ra = resp.headers.get("retry-after")
            wait = float(ra) if ra and ra.replace(".", "", 1).isdigit() else self.backoff_seconds
            raise TransientError(f"Zoho rate limit ({status}, {msg})", status=status, retry_after=wait)
        if status >= 500:
            raise TransientError(f"Zoho server error {status}: {msg}", status=status)
        if status == 404:
            raise LookupError(msg or "not found")
        if status == 403:
            raise StopSource(f"Zoho refused access ({status}: {msg})", status=status, system="erp")
        if status >= 400:
            if "organization" in msg.lower():
                raise StopSource(f"Zoho rejected the organisation ({msg}); check organization_id", status=status,
                                 system="erp")
            raise SourceError(f"Zoho rejected {method} {path} ({status}: {msg})", status=status)
        if not isinstance(body, dict):
            raise TransientError(f"Zoho {path} answered {status} with a body that is not JSON", status=status)
        if code not in (0, None):
            raise SourceError(f"Zoho {method} {path}: {msg}", status=status)
        return body

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return call_with_retry(
            lambda: self._once("GET", path, dict(params or {})), max_attempts=self.max_attempts,
            max_seconds=self.max_seconds, retry_after_cap=self.backoff_seconds + 1, sleep=self._sleep,
            stop_event=self.stop_event, what=f"Zoho GET {path}",
            on_retry=lambda n, e: log.warning("erp.retry", path=path, attempt=n, error=str(e)))
