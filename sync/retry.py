"""Bounded retries (attempts AND total time), exponential backoff with jitter, Retry-After honoured and capped."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from sync.errors import DeferredError, TransientError

T = TypeVar("T")


def call_with_retry(fn: Callable[[], T], *, max_attempts: int, max_seconds: float, retry_after_cap: float,
                    sleep: Callable[[float], Any], stop_event: threading.Event | None = None,
                    on_retry: Callable[[int, BaseException], None] | None = None, what: str = "request") -> T:
    """Run `fn`, retrying TransientError only. Past the budget (or a too-long Retry-After) raise DeferredError."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return exc.retry_after + random.uniform(0, 0.25)
        return min(8.0, 0.2 * (2 ** (state.attempt_number - 1))) * random.uniform(0.5, 1.5)

    def retryable(exc: BaseException) -> bool:
        if stop_event is not None and stop_event.is_set():
            return False
        return isinstance(exc, TransientError) and (exc.retry_after is None or exc.retry_after <= retry_after_cap)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts) | tenacity.stop_after_delay(max_seconds),
        wait=wait, retry=tenacity.retry_if_exception(retryable), sleep=sleep, reraise=True,
        before_sleep=(lambda s: on_retry(s.attempt_number, s.outcome.exception())) if on_retry else None,
    )
    try:
        return retrying(fn)
    except TransientError as exc:
        too_long = exc.retry_after is not None and exc.retry_after > retry_after_cap
        why = "server asked to wait longer than the cap" if too_long else "retry budget spent"
        text = str(exc)
        if not text.startswith(f"{what}:"):   # the error may already name the request
            text = f"{what}: {text}"
        raise DeferredError(f"{text} ({why}); given up for now", last=exc) from None
