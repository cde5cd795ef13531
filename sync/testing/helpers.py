"""Small building blocks for connector tests (no pytest needed): an in-memory SourceContext, an LMS
seed under which the harnesses' receipts are mappable, and deterministic receipt amounts.

Every harness in `sync.testing.harnesses` writes its receipts for the students of
`standard_lms_seed()`: customer `Student <i>` with the e-mail `student<i>@conformance.test`, whose
LMS student has exactly one active PKR plan large enough for any number of test receipts, so
the engine maps a receipt by e-mail alone (no invoice, no mapping table).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sync.events import FeeEvent

LMS_KEY = "zl_conformance_key_5e6f7a8b9c0d"
N_STUDENTS = 6
CURRENCY = "PKR"


def student_name(i: int) -> str:
    return f"Student {i % N_STUDENTS}"


def student_email(i: int) -> str:
    return f"student{i % N_STUDENTS}@conformance.test"


def receipt_amount(seq: int) -> Decimal:
    """Whole-unit amounts that differ per receipt (so a wrong pairing shows in the sum)."""
    return Decimal(1000 + 10 * seq)


def changed_amount(amount: Decimal) -> Decimal:
    return amount + 7


def base_time() -> datetime:
    """Receipts are stamped a little in the past: the fakes' clocks are real time, and the
    engine caps its cursor at the source's clock."""
    return (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)


def standard_lms_seed(*, key: str = LMS_KEY, n_students: int = N_STUDENTS, currency: str = CURRENCY,
                      plan_total: int = 50_000_000) -> dict[str, Any]:
    """An LMS sandbox seed: one institute, one key, `n_students` students each with one active plan."""
    students, plans = [], []
    for i in range(n_students):
        students.append({"id": 700 + i, "name": student_name(i), "email": student_email(i), "status": "active"})
        half = plan_total // 2
        plans.append({"id": 9700 + i, "student_id": 700 + i, "batch_id": 1, "plan_type": "installment",
                      "total_amount": plan_total, "currency": currency, "status": "active",
                      "installments": [{"sequence": 1, "amount_due": half, "due_date": "2026-11-01"},
                                       {"sequence": 2, "amount_due": plan_total - half, "due_date": "2026-12-01"}]})
    return {"rate_limit_per_minute": 1_000_000, "institutes": [{
        "id": "inst-conformance", "name": "Conformance Institute",
        "api_keys": [{"key": key, "name": "feesync-conformance",
                      "scopes": ["fees:read", "fees:write", "students:read"]}],
        "batches": [{"id": 1, "name": "Conformance Batch"}],
        "students": students, "fee_plans": plans, "payments": []}]}


def seed_key(seed: dict[str, Any]) -> str:
    """The first API key of the first institute of an LMS seed."""
    return str(seed["institutes"][0]["api_keys"][0]["key"])


class MemoryContext:
    """A `SourceContext` in memory: what the engine would have decided, plus the memo."""

    def __init__(self, seen: Iterable[tuple[str, str]] = ()) -> None:
        self.decided: dict[str, str] = dict(seen)
        self.memo: dict[str, str] = {}

    def seen(self, doc_id: str, version: str) -> bool:
        return self.decided.get(doc_id) == version

    def recall(self, key: str) -> str | None:
        return self.memo.get(key)

    def remember(self, key: str, value: str) -> None:
        self.memo[key] = value

    def run(self, events: Iterable[FeeEvent]) -> list[FeeEvent]:
        """Consume a fetch as the engine does: each event is decided before the next is read."""
        out = []
        for e in events:
            self.decided[e.doc_id] = e.version
            out.append(e)
        return out
