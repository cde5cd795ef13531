"""Adversarial: a receipt left pending (intent, outcome unknown) and then cancelled in the ERP."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from sync.state import conflicts, documents
from tests import scenario


def test_revisit_of_pending_receipt_cancelled_in_erp_keeps_the_reversal_conflict_open(sandboxes, make_app):
    """Re-sending a stored intent behind the window must not close the open reversed_in_erp conflict."""
    scn = scenario.build(n_students=2, receipts_per_student=1)
    name, other = scn["receipts"]
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, lms_overrides={"max_attempts": 1})
    lms.faults.fail(status=503, count=1, method="POST", path_regex=r"/fee-plans/5000/payments$")
    assert app.engine.run_once("erp").status == "deferred"           # intent stored, outcome unknown
    # cancelled in the ERP 30 minutes after it was made
    erp.cancel("Payment Entry", name, modified=datetime(2026, 11, 1, 9, 30, tzinfo=scenario.KHI))
    # another receipt, an hour later, is written in the next run: the cursor moves past the cancellation
    erp.update("Payment Entry", other, {}, modified=datetime(2026, 11, 1, 10, 30, tzinfo=scenario.KHI))
    app.engine.run_once("erp")                                        # opens reversed_in_erp
    with app.store.engine.connect() as c:
        assert c.execute(select(conflicts.c.kind).where(conflicts.c.doc_id == name,
                                                        conflicts.c.status == "open")).scalars().all() == \
            ["reversed_in_erp"]
    app.engine.run_once("erp")                                        # the pending doc is now behind the window
    with app.store.engine.connect() as c:
        rows = c.execute(select(conflicts).where(conflicts.c.doc_id == name)).mappings().all()
        doc = c.execute(select(documents).where(documents.c.doc_id == name)).mappings().one()
    pays = [p for p in lms.payments() if p["reference_number"] == name]
    assert any(r["kind"] == "reversed_in_erp" and r["status"] == "open" for r in rows), (
        f"doc {doc['status']}; LMS holds {len(pays)} payment(s) for a receipt cancelled in the ERP and its "
        f"reversed_in_erp conflict was closed: {[(r['kind'], r['status'], r['note']) for r in rows]}")
