"""Adversarial: a receipt that pays several installments is written as several LMS payments.

Every one of them must reach the LMS exactly once, whatever fails in between, and a cancellation in
the ERP of a partly written receipt must stay visible.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from sync.state import conflicts, documents
from tests import scenario


def _two_term_scenario(waive_second: bool = False):
    """One student, one LMS-created plan (invoice carries the plan id), one receipt paying both terms."""
    scn = scenario.build(n_students=1, receipts_per_student=1)   # installments of 1000 each
    inst = scn["lms_seed"]["institutes"][0]
    if waive_second:
        second = inst["fee_plans"][0]["installments"][1]
        second["status"] = "waived"
    inv = scn["erp_data"]["documents"]["Sales Invoice"][0]["name"]
    ts = datetime(2026, 11, 1, 10, 0, tzinfo=scenario.KHI)
    pe = scenario.receipt_for_terms(1, "Student 0", inv, [("Installment 1", 1000), ("Installment 2", 1000)], ts)
    scn["erp_data"]["documents"]["Payment Entry"] = [pe]
    return scn, pe["name"]


def test_multi_reference_receipt_deferred_on_first_write_still_writes_every_target(sandboxes, make_app):
    """A 5xx outage on the first of two writes must not make the next run send only that one and call it pushed."""
    scn, name = _two_term_scenario()
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    # the first payment POST fails for the whole retry budget (max_attempts = 4): nothing applied
    lms.faults.fail(status=503, count=4, method="POST", path_regex=r"/payments$")
    first = app.engine.run_once("erp")
    assert first.status == "deferred"
    assert lms.payments() == []
    second = app.engine.run_once("erp")
    pays = lms.payments()
    with app.store.engine.connect() as c:
        doc = c.execute(select(documents).where(documents.c.doc_id == name)).mappings().one()
    assert sorted(p["amount"] for p in pays) == [1000, 1000], (
        f"run 2 status={second.status} doc status={doc['status']}: LMS holds {[p['amount'] for p in pays]}, "
        "one of the two installments of the receipt was never written")


def test_cancelled_partly_written_receipt_keeps_a_visible_conflict(sandboxes, make_app):
    """A receipt with one LMS payment done and one refused, then cancelled in the ERP, must open reversed_in_erp."""
    scn, name = _two_term_scenario(waive_second=True)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    app.engine.run_once("erp")
    pays = lms.payments()
    assert len(pays) == 1 and pays[0]["amount"] == 1000          # installment 1 written
    with app.store.engine.connect() as c:
        kinds = [r.kind for r in c.execute(select(conflicts).where(conflicts.c.status == "open"))]
    assert kinds, "the refused second write should be a conflict"
    # the ERP cancels the receipt: LMS receipt of installment 1 must now be reversed by a person
    erp.cancel("Payment Entry", name, modified=datetime(2026, 11, 1, 10, 5, tzinfo=scenario.KHI))
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        open_rows = c.execute(select(conflicts).where(conflicts.c.status == "open",
                                                      conflicts.c.doc_id == name)).mappings().all()
        doc = c.execute(select(documents).where(documents.c.doc_id == name)).mappings().one()
    assert len(lms.payments()) == 1
    assert any(r["kind"] == "reversed_in_erp" and pays[0]["receipt_number"] in (r["lms_receipt"] or r["detail"])
               for r in open_rows), (
        f"doc is {doc['status']}/{doc['reason']}; open conflicts {[r['kind'] for r in open_rows]}: LMS receipt "
        f"{pays[0]['receipt_number']} stands for a receipt cancelled in the ERP and nobody is told")


def test_a_cancelled_partly_written_receipt_is_never_sent_again_and_shows_only_the_money_the_lms_holds(
        sandboxes, make_app):
    """One part written, one refused; then the ERP cancels the receipt. The refused part's conflict closes (nothing
    is left to write), reversed_in_erp carries the written part's amount and the customer, and a retry of the
    cancelled receipt sends nothing (it replayed the stored receipt and recorded the refused part's money)."""
    scn, name = _two_term_scenario(waive_second=True)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        (refused,) = c.execute(select(conflicts).where(conflicts.c.status == "open")).mappings().all()
    assert refused["amount"] == "1000" and refused["customer"] == "Student 0"   # the part, not the 2000 receipt
    erp.cancel("Payment Entry", name, modified=datetime(2026, 11, 1, 10, 5, tzinfo=scenario.KHI))
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        rows = {r["kind"]: r for r in c.execute(select(conflicts).where(conflicts.c.doc_id == name)).mappings()}
    assert rows[refused["kind"]]["status"] == "resolved"
    assert "cancelled in the ERP" in rows[refused["kind"]]["note"]
    rev = rows["reversed_in_erp"]
    assert (rev["status"], rev["amount"], rev["currency"], rev["customer"]) == ("open", "1000", "PKR", "Student 0")
    try:
        app.engine.retry_document("erp", name)
    except ValueError as exc:
        assert "cancelled this receipt" in str(exc)
    else:
        raise AssertionError("a retry of a cancelled receipt was accepted")
    from sync import ops
    outcomes = {o["id"]: o["outcome"] for o in ops.retry_conflicts(app, [rev["id"], refused["id"]])}
    assert outcomes[rev["id"]].startswith("not retried"), outcomes
    assert "resolved" in outcomes[refused["id"]] or "not open" in outcomes[refused["id"]], outcomes
    app.engine.run_once("erp")
    assert [p["amount"] for p in lms.payments()] == [1000]
    totals = ops.totals(ops.list_conflicts(app.store))
    assert totals["money_at_stake"] == {"PKR": "1000"}, totals
