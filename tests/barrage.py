"""Shared pieces of the bad-input barrage: a seed whose plans never fill up, and a watch on the LMS
sandbox that records every request it refused as malformed (the daemon must send none)."""

from __future__ import annotations

from typing import Any

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
