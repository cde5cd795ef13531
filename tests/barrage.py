"""Shared pieces of the bad-input barrage: a seed whose plans never fill up, a watch on the LMS sandbox
that records every request it refused as malformed (the daemon must send none), and a count of the
examples each property really ran (`max_examples` is only a ceiling)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sync import contract as C
from sync.sandbox import _lms_validate as V
from sync.sandbox._lms_state import ApiError
from sync.sandbox.lms import LmsSandbox


def bottomless_plans(scn: dict[str, Any], amount_due: int) -> dict[str, Any]:
    """Give every installment of the scenario's plans `amount_due`, so no generated receipt is an overpayment."""
    for plan in scn["lms_seed"]["institutes"][0]["fee_plans"]:
        for inst in plan["installments"]:
            inst["amount_due"] = amount_due
        plan["total_amount"] = sum(i["amount_due"] for i in plan["installments"])
    return scn


def watch_malformed(lms: LmsSandbox) -> list[Any]:
    """The requests the sandbox refuses as malformed (422 list detail, 400, key reused with another body)."""
    rejected: list[Any] = []
    dispatch = lms._dispatch

    def counting_dispatch(method: str, path: str, query: Any, headers: Any, raw: bytes) -> Any:
        try:
            return dispatch(method, path, query, headers, raw)
        except ApiError as exc:
            if exc.status == 422 and isinstance(exc.body.get(C.ERR_DETAIL), list) or exc.status == 400 or (
                    exc.status == 409 and exc.body.get(C.ERR_DETAIL) == C.DETAIL_KEY_REUSED):
                rejected.append((method, path, exc.status, exc.body))
            raise
        except V.ValidationFailed as exc:
            rejected.append((method, path, 422, exc.errors))
            raise
    lms._dispatch = counting_dispatch
    return rejected


EXAMPLES_RUN: Counter[str] = Counter()
MIN_EXAMPLES = 500


def counted(test: Callable[..., Any]) -> Callable[..., Any]:
    """Count each example Hypothesis runs through `test` (put it under @given)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        EXAMPLES_RUN[test.__name__] += 1
        return test(*args, **kwargs)
    return run


def assert_examples_ran(*properties: Callable[..., Any]) -> None:
    """Each property (run earlier in this session) ran at least MIN_EXAMPLES examples."""
    names = [p.__name__ for p in properties]
    if not any(EXAMPLES_RUN[n] for n in names):
        pytest.skip("the properties were not run in this session")
    assert {n: EXAMPLES_RUN[n] for n in names} == {n: max(EXAMPLES_RUN[n], MIN_EXAMPLES) for n in names}, (
        f"examples run: {dict(EXAMPLES_RUN)}")


def csv_settings(tmp: Any, lms: LmsSandbox, *, max_attempts: int, max_retry_seconds: float) -> Any:
    """Settings of one CSV drop-folder source (`tmp/drop`, created) syncing into `lms`, logs as JSON."""
    from sync.config import Settings
    from tests import scenario
    drop = tmp / "drop"
    drop.mkdir()
    return Settings(
        state_path=str(tmp / "state.db"), log_format="json",
        lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": 100000,
             "max_attempts": max_attempts, "max_retry_seconds": max_retry_seconds,
             "limiter_path": str(tmp / "pacing.db")},
        sources={"csv": {"connector": "files", "settings": {"folder": str(drop)}}})
