"""HTTP access to TallyPrime's XML port: one POST per request, retries, and Tally's answers classified.

* connect errors, timeouts, 5xx and unparseable XML are `TransientError` (retried with backoff,
  then deferred to the next cycle);
* an **empty** body is what Tally answers when no company is open: `StopSource`, never
  "nothing new";
* Tally's own error answers (`<RESPONSE>`, `LINEERROR`, `STATUS` 0) and other statuses are
  `SourceError` (the request or the company name is wrong).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET  # noqa: S405 - parsing happens in _xml.parse_answer
from collections.abc import Callable
from typing import Any

import httpx

from connectors.tally import _xml
from sync.errors import SourceError, StopSource, TransientError
from sync.logs import get_logger
from sync.retry import call_with_retry

log = get_logger(component="tally")


class TallyHTTP:
    """Posts XML envelopes to one TallyPrime instance. One per source, one run at a time."""

    def __init__(self, *, url: str, encoding: str, timeout: float, max_attempts: int, max_seconds: float,
                 transport: httpx.BaseTransport | None = None, stop_event: threading.Event | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.url = url
        self.encoding = encoding
        self.http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport,
                                 headers={"User-Agent": "feesync/0.1", "Accept": "text/xml"})
        self.max_attempts = max_attempts
        self.max_seconds = max_seconds
        self.stop_event = stop_event or threading.Event()
        self.sleep = sleep or self.stop_event.wait
        self.requests = 0

    def close(self) -> None:
        self.http.close()

    def _once(self, body: bytes, content_type: str, what: str) -> ET.Element:
        self.requests += 1
        try:
            resp = self.http.post(self.url, content=body, headers={"Content-Type": content_type})
        except httpx.UnsupportedProtocol as exc:
            raise SourceError(f"TallyPrime URL is not usable: {exc}") from None
        except httpx.TransportError as exc:
            raise TransientError(f"TallyPrime {what}: {type(exc).__name__} reaching {self.url}") from None
        status = resp.status_code
        if status >= 500:
            raise TransientError(f"TallyPrime {what}: server error {status}", status=status)
        if status != 200:
            raise SourceError(f"TallyPrime {what}: HTTP {status}", status=status)
        raw = resp.content
        text = _xml.decode_answer(raw, resp.headers.get("content-type")) if raw else ""
        if not text.strip().strip("\ufeff"):
            raise StopSource(f"TallyPrime at {self.url} answered {what} with an empty body: no company is open. "
                             "Open the company in TallyPrime (Gateway of Tally > Select Company); the cursor "
                             "was kept", system="erp")
        return _xml.parse_answer(text)

    def post(self, xml_text: str, what: str) -> ET.Element:
        body, content_type = _xml.encode_request(xml_text, self.encoding)
        return call_with_retry(
            lambda: self._once(body, content_type, what), max_attempts=self.max_attempts,
            max_seconds=self.max_seconds, retry_after_cap=60.0, sleep=self.sleep, stop_event=self.stop_event,
            what="TallyPrime request",
            on_retry=lambda n, e: log.warning("erp.retry", request=what, attempt=n, error=str(e)))
