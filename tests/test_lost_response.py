"""A write the LMS applied but whose answer was lost is retried with the same key and body: one payment."""

from __future__ import annotations

import json

from sqlalchemy import select

from sync.state import writes
from tests import scenario


def test_applied_then_dropped_payment_is_recorded_once(sandboxes, make_app):
    """The sandbox applies the first POST then drops the connection; the retry replays, not duplicates."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    lms.faults.drop_after_apply(count=1, method="POST")
    result = app.engine.run_once("erp")
    assert result.counts["pushed"] == 1 and result.counts["writes_replayed"] == 1
    pays = lms.payments()
    assert len(pays) == 1 and pays[0]["amount"] == 1000
    stats = lms.stats()
    assert stats["writes_applied"] == 1 and stats["replays"] == 1 and stats["writes_received"] == 2
    with app.store.engine.connect() as c:
        row = c.execute(select(writes)).mappings().one()
    assert row["idem_key"] == scn["receipts"][0] and row["attempts"] == 1
    assert row["receipt_number"] == pays[0]["receipt_number"]


def test_retry_carries_the_same_key_and_body(sandboxes, make_app):
    """Both attempts reach the LMS with one Idempotency-Key and byte-identical bodies (sandbox log)."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    seen = []
    app.lms.http.event_hooks["request"].append(
        lambda req: seen.append((req.headers.get("Idempotency-Key"), req.read())) if req.method == "POST" else None)
    lms.faults.drop_after_apply(count=1, method="POST")
    app.engine.run_once("erp")
    assert len(seen) == 2
    assert seen[0] == seen[1] and seen[0][0] == scn["receipts"][0]
    body = json.loads(seen[0][1])
    assert body["amount"] == 1000 and body["payment_date"].endswith("+05:00")
