"""Every LMS answer is classified once, per lms-contract.md §4."""

from __future__ import annotations

import pytest

from sync.errors import ConflictError, StopSource, TransientError
from sync.lms import classify, detail_text


@pytest.mark.parametrize(("status", "body", "expected"), [
    (201, {"id": 1}, "done"),
    (200, {"id": 1}, "done"),
    (400, {"detail": "Idempotency-Key header is required"}, "conflict:rejected"),
    (401, {"detail": "Invalid API key"}, "stop"),
    (403, {"detail": "Missing scope fees:write"}, "stop"),
    (404, {"detail": "Fee plan not found"}, "conflict:mapping_stale"),
    (409, {"detail": "Idempotency-Key reused with a different request body"}, "conflict:idempotency_key_reused"),
    (409, {"detail": "Fee plan is cancelled"}, "conflict:plan_cancelled"),
    (409, {"detail": "Fee plan is completed"}, "conflict:plan_completed"),
    (409, {"detail": "Installment is already paid"}, "conflict:installment_closed"),
    (409, {"detail": "Something else"}, "conflict:lms_conflict"),
    (422, {"detail": "Payment exceeds remaining balance", "remaining_balance": 500}, "conflict:overpayment"),
    (422, {"detail": [{"loc": ["body", "amount"], "msg": "must be an integer", "type": "int"}]}, "conflict:validation"),
    (429, {"detail": "Rate limit exceeded"}, "retry"),
    (500, {"detail": "boom"}, "retry"),
    (502, None, "retry"),
    (503, None, "retry"),
    (200, None, "retry"),          # 2xx we cannot read: outcome unknown, re-send with the same key
    (418, {"detail": "teapot"}, "conflict:unexpected_status"),
])
def test_status_table(status, body, expected):
    """Each status maps to exactly one next step."""
    try:
        classify(status, body, retry_after=3)
        got = "done"
    except ConflictError as exc:
        got = f"conflict:{exc.kind}"
    except StopSource:
        got = "stop"
    except TransientError:
        got = "retry"
    assert got == expected


def test_overpayment_keeps_remaining_balance():
    """The overpayment conflict carries remaining_balance from the body."""
    with pytest.raises(ConflictError) as err:
        classify(422, {"detail": "Payment exceeds remaining balance", "remaining_balance": 1234})
    assert err.value.extra["remaining_balance"] == 1234


def test_detail_is_read_as_string_or_list():
    """`detail` reads as text whether a string or FastAPI's list of {loc,msg,type}."""
    assert detail_text({"detail": "plain"}) == "plain"
    assert detail_text({"detail": [{"loc": ["body", "amount"], "msg": "bad"},
                                   {"loc": ["body", "payment_date"], "msg": "needs offset"}]}) == \
        "amount: bad; payment_date: needs offset"


def test_429_carries_retry_after():
    """A 429 becomes a retry that remembers Retry-After."""
    with pytest.raises(TransientError) as err:
        classify(429, {"detail": "x"}, retry_after=7)
    assert err.value.retry_after == 7
