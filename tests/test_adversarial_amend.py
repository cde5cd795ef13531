"""Adversarial: an amendment must wait while the original's LMS payment may exist (rule 14)."""

from __future__ import annotations

from sqlalchemy import select

from sync.state import conflicts, documents
from tests import scenario


def test_amendment_waits_while_original_outcome_is_unknown_and_reversal_open(sandboxes, make_app):
    """Original applied-but-unanswered (pending), then cancelled and amended: the amendment must be held, not pushed."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    name = scn["receipts"][0]
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, lms_overrides={"max_attempts": 1})
    lms.faults.drop_after_apply(count=1, method="POST", path_regex=r"/payments$")   # applied, answer lost
    first = app.engine.run_once("erp")
    assert first.status == "deferred" and len(lms.payments()) == 1                  # the money IS in the LMS
    erp.cancel("Payment Entry", name)
    amended = erp.amend("Payment Entry", name)
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        amend_doc = c.execute(select(documents).where(documents.c.doc_id == amended["name"])).mappings().first()
        open_kinds = {(r.doc_id, r.kind) for r in c.execute(select(conflicts).where(conflicts.c.status == "open"))}
    assert (name, "reversed_in_erp") in open_kinds
    assert len(lms.payments()) == 1, (
        f"amendment {amended['name']} was {amend_doc and amend_doc['status']}: the LMS now holds "
        f"{len(lms.payments())} payments for one ERP receipt while the original's reversal is still open")


def test_second_amendment_waits_while_first_original_reversal_is_open(sandboxes, make_app):
    """Pushed PE, cancelled and amended (held), the amendment cancelled and amended again: still held."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    name = scn["receipts"][0]
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    app.engine.run_once("erp")
    assert len(lms.payments()) == 1
    erp.cancel("Payment Entry", name)
    first_amend = erp.amend("Payment Entry", name)
    app.engine.run_once("erp")                       # reversed_in_erp on the original; amendment held
    assert len(lms.payments()) == 1
    erp.cancel("Payment Entry", first_amend["name"])
    second_amend = erp.amend("Payment Entry", first_amend["name"])
    assert second_amend["amended_from"] == first_amend["name"]
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        open_kinds = {(r.doc_id, r.kind) for r in c.execute(select(conflicts).where(conflicts.c.status == "open"))}
        doc = c.execute(select(documents).where(documents.c.doc_id == second_amend["name"])).mappings().first()
    assert (name, "reversed_in_erp") in open_kinds
    assert len(lms.payments()) == 1, (
        f"{second_amend['name']} (amends {first_amend['name']}, which amends pushed {name}) was "
        f"{doc and doc['status']}: the LMS holds {len(lms.payments())} payments while {name}'s reversal is open")
