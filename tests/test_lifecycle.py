"""The whole fee lifecycle from ERPNext over real loopback HTTP: plans, payments, cancellations, waivers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from sync.state import conflicts
from tests import scenario

ROWS = [("2026-11-01", 18000), ("2026-12-01", 13500), ("2027-01-01", 13500)]


def _open_kinds(app):
    with app.store.engine.connect() as c:
        return sorted(c.execute(select(conflicts.c.kind).where(conflicts.c.status == "open")).scalars())


def _setup(sandboxes, make_app, docs, n_students=1):
    scn = scenario.lifecycle(n_students)
    for doctype, doc in docs(scn["base"]):
        scn["erp_data"]["documents"][doctype].append(doc)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, mapping=scenario.LIFECYCLE_MAPPING)
    return scn, lms, erp, app


def test_invoice_with_3_installments_becomes_one_plan_paid_to_completion(sandboxes, make_app):
    """Same due dates and amounts in the LMS; paying each installment in the ERP marks it paid; the plan completes."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b))])
    app.engine.run_once("erp")
    plans = lms.plans()
    assert len(plans) == 1
    plan = plans[0]
    assert plan["plan_type"] == "monthly" and plan["student_id"] == 300 and plan["batch_id"] == 1
    assert [(i["due_date"], i["amount_due"]) for i in plan["installments"]] == ROWS
    assert plan["notes"] == "erp:erp:ACC-SINV-2026-00001"

    base = scn["base"]
    for n, (term, amount) in enumerate([("Installment 1", 18000), ("Installment 2", 13500), ("Installment 3", 13500)]):
        erp.insert("Payment Entry", scenario.receipt_for_terms(10 + n, "Learner 0", "ACC-SINV-2026-00001",
                                                               [(term, amount)], base + timedelta(hours=n + 1)),
                   modified=base + timedelta(days=1, hours=n))
        app.engine.run_once("erp")
        plan = lms.plans()[0]
        assert [i["status"] for i in plan["installments"]][: n + 1] == ["paid"] * (n + 1)
    assert plan["status"] == "completed"
    pays = lms.payments()
    assert [p["amount"] for p in pays] == [18000, 13500, 13500]
    assert [p["fee_installment_id"] for p in pays] == [i["id"] for i in plan["installments"]]
    assert _open_kinds(app) == []
    # /metrics counts receipts, not the invoice whose plan was created
    from prometheus_client.parser import text_string_to_metric_families

    from sync.metrics import app_collector, render
    samples = {s.name: s.value for f in text_string_to_metric_families(render(app_collector(app)).decode())
               for s in f.samples if s.labels.get("source") == "erp"}
    assert samples["feesync_receipts_pushed_total"] == 3


def test_cancelled_invoice_cancels_its_plan(sandboxes, make_app):
    """Cancelling the invoice in the ERP cancels the plan feesync created for it, once."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b))])
    app.engine.run_once("erp")
    assert lms.plans()[0]["status"] == "active"
    erp.cancel("Sales Invoice", "ACC-SINV-2026-00001")
    result = app.engine.run_once("erp")
    assert lms.plans()[0]["status"] == "cancelled"
    assert result.counts["cancel_plan_done"] == 1
    again = app.engine.run_once("erp")
    assert again.counts.get("cancel_plan_done", 0) == 0 and len(lms.plans()) == 1


def test_full_credit_note_waives_installments_and_partial_opens_a_conflict(sandboxes, make_app):
    """A note covering the two unpaid installments waives both; a note for half an installment is a conflict."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b)),
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00002", "Learner 0", [("2026-11-15", 5000)], b,
                                           item="DS-201"))], n_students=1)
    app.engine.run_once("erp")
    base = scn["base"]
    erp.insert("Sales Invoice", scenario.credit_note("ACC-SINV-2026-00003", "ACC-SINV-2026-00001", "Learner 0",
                                                     27000, base + timedelta(days=2)), modified=base + timedelta(days=2))
    erp.insert("Sales Invoice", scenario.credit_note("ACC-SINV-2026-00004", "ACC-SINV-2026-00002", "Learner 0",
                                                     2500, base + timedelta(days=2, hours=1)),
               modified=base + timedelta(days=2, hours=1))
    app.engine.run_once("erp")
    by_note = {p["notes"]: p for p in lms.plans()}
    full = by_note["erp:erp:ACC-SINV-2026-00001"]
    assert [i["status"] for i in full["installments"]] == ["pending", "waived", "waived"]
    partial = by_note["erp:erp:ACC-SINV-2026-00002"]
    assert [i["status"] for i in partial["installments"]] == ["pending"]
    assert _open_kinds(app) == ["partial_credit_note"]


def test_receipt_before_its_invoice_in_the_same_page_is_pushed_after_the_plan(sandboxes, make_app):
    """The receipt's modified is older than its invoice's: it waits, the plan is created, then it is pushed."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b)),
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b + timedelta(minutes=5)))])
    result = app.engine.run_once("erp")
    assert result.counts["pushed"] == 1 and result.counts["create_plan_done"] == 1
    pays = lms.payments()
    assert len(pays) == 1 and pays[0]["amount"] == 18000
    assert lms.plans()[0]["installments"][0]["status"] == "paid"
    assert app.store.get_cursor("erp").doc_id == "ACC-SINV-2026-00001"
    assert _open_kinds(app) == []


def test_receipt_paying_two_installments_writes_two_payments_and_a_retry_adds_none(sandboxes, make_app):
    """One LMS payment per installment, keys derived from the document and the reference; a dropped answer replays."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b)),
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000), ("Installment 2", 13500)],
                                                     b + timedelta(minutes=1)))])
    app.engine.run_once("erp")     # creates the plan
    assert len(lms.payments()) == 2
    # now the same shape again with a dropped answer on the second payment
    erp.insert("Payment Entry", scenario.receipt_for_terms(2, "Learner 0", "ACC-SINV-2026-00001",
                                                           [("Installment 3", 13500)],
                                                           scn["base"] + timedelta(days=1)),
               modified=scn["base"] + timedelta(days=1))
    lms.faults.drop_after_apply(count=1, method="POST", path_regex="/payments$")
    result = app.engine.run_once("erp")
    pays = lms.payments()
    assert len(pays) == 3
    assert result.counts["writes_replayed"] == 1
    plan = lms.plans()[0]
    first = [p for p in pays if p["reference_number"] == "ACC-PAY-2026-00001"]
    assert sorted(p["fee_installment_id"] for p in first) == sorted(i["id"] for i in plan["installments"][:2])
    assert plan["status"] == "completed"


def test_two_installment_receipt_whose_answers_are_both_dropped_still_makes_two_payments(sandboxes, make_app):
    """The LMS applies both payments of a two-installment receipt and drops both answers: each retry replays
    its own key, the LMS holds two payments (one per installment), and a later run adds no third."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b)),
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000), ("Installment 2", 13500)],
                                                     b + timedelta(minutes=1)))])
    # drop the first write's answer; once its retry was answered (a replay), drop the second write's answer too
    lms.faults.drop_after_apply(count=1, method="POST", path_regex="/payments$")
    payment_answers = []

    def arm_second_drop(method: str, path: str, status: int) -> None:
        if method == "POST" and path.endswith("/payments"):
            payment_answers.append(status)
            if len(payment_answers) == 2:
                lms.faults.drop_after_apply(count=1, method="POST", path_regex="/payments$")
    lms.on_response = arm_second_drop
    result = app.engine.run_once("erp")
    lms.on_response = None
    assert payment_answers == [201, 201, 201, 201]   # applied+dropped, replay, applied+dropped, replay
    assert result.counts["writes_replayed"] == 2
    plan = lms.plans()[0]
    pays = lms.payments()
    assert sorted((p["fee_installment_id"], p["amount"]) for p in pays) == [
        (plan["installments"][0]["id"], 18000), (plan["installments"][1]["id"], 13500)]
    again = app.engine.run_once("erp")
    assert again.counts.get("writes_done", 0) == 0
    assert len(lms.payments()) == 2


def test_create_plan_lost_response_yields_exactly_one_plan(sandboxes, make_app):
    """The sandbox creates the plan and drops the answer; feesync recognises it and creates no second one."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b))])
    lms.faults.drop_after_apply(count=1, method="POST", path_regex="/fee-plans$")
    app.engine.run_once("erp")
    assert len(lms.plans()) == 1
    app.engine.run_once("erp")
    assert len(lms.plans()) == 1


def test_create_plan_lost_response_with_key_ignored_still_one_plan(sandboxes, make_app):
    """Even when the LMS ignores Idempotency-Key on create, a lost answer never yields two plans."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b))])
    lms.faults.ignore_idempotency_on_create_plan = True
    lms.faults.drop_after_apply(count=1, method="POST", path_regex="/fee-plans$")
    result = app.engine.run_once("erp")
    assert len(lms.plans()) == 1
    assert result.counts["create_plan_done"] == 1
    with app.store.engine.connect() as c:
        from sync.state import writes
        row = c.execute(select(writes.c.lms_id, writes.c.status).where(writes.c.op == "create_plan")).one()
    assert row.status == "done" and row.lms_id == str(lms.plans()[0]["id"])


def test_cancelled_pushed_receipt_and_its_amendment(sandboxes, make_app):
    """Cancel after push opens reversed_in_erp; the amendment waits until that is resolved, then is pushed once."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    app.engine.run_once("erp")
    name = scn["receipts"][0]
    erp.cancel("Payment Entry", name)
    erp.amend("Payment Entry", name, {"paid_amount": 900.0, "received_amount": 900.0,
                                      "references": [{"reference_doctype": "Sales Invoice",
                                                      "reference_name": "ACC-SINV-2026-00001",
                                                      "allocated_amount": 900.0}]})
    app.engine.run_once("erp")
    assert sorted(_open_kinds(app)) == ["amended_after_sync", "reversed_in_erp"]
    assert len(lms.payments()) == 1
    receipt = lms.payments()[0]["receipt_number"]
    with app.store.engine.connect() as c:
        detail = c.execute(select(conflicts.c.detail).where(conflicts.c.kind == "reversed_in_erp")).scalar()
        cid = c.execute(select(conflicts.c.id).where(conflicts.c.kind == "reversed_in_erp")).scalar()
        money = c.execute(select(conflicts.c.amount, conflicts.c.currency).where(conflicts.c.id == cid)).one()
    assert receipt in detail
    assert (Decimal(money[0]), money[1]) == (Decimal(1000), "PKR")   # the money the LMS still holds
    app.engine.run_once("erp")
    assert len(lms.payments()) == 1, "not pushed while the original's conflict is open"
    from sync import ops
    ops.set_status(app.store, [cid], "resolved", actor="finance", note="reversed RCP by hand")
    app.engine.run_once("erp")
    pays = lms.payments()
    assert len(pays) == 2 and pays[1]["amount"] == 900
    app.engine.run_once("erp")
    assert len(lms.payments()) == 2
    assert _open_kinds(app) == []


def test_dry_run_writes_nothing_and_lists_what_a_real_run_does(sandboxes, make_app):
    """Zero LMS writes and an unmoved cursor; the listed writes equal those a real run then makes."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b)),
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b + timedelta(minutes=5))),
        ("Payment Entry", scenario.receipt_for_terms(2, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 2", 13500), ("Installment 3", 13500)],
                                                     b + timedelta(minutes=9)))])
    dry = app.engine.run_once("erp", dry_run=True)
    assert lms.stats()["writes_received"] == 0
    assert app.store.get_cursor("erp") is None
    listed = sorted((w["op"], w["key"]) for w in dry.planned)
    real = app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        from sync.state import writes
        made = sorted((r.op, r.idem_key) for r in c.execute(select(writes.c.op, writes.c.idem_key)))
    assert listed == made
    assert real.counts["writes_done"] == len(made) == 4


def test_a_receipt_whose_invoice_the_erp_cannot_show_waits_alone_and_never_stalls_the_source(sandboxes, make_app):
    """Its invoice answers 404: the receipt waits for that plan (then `plan_not_created`), while the
    documents after it sync in the same run (they used to be stuck behind it, run after run)."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Payment Entry", scenario.receipt_for_terms(9, "Learner 0", "ACC-SINV-2026-00009",
                                                     [("Installment 1", 4000)], b)),   # that invoice is missing
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b + timedelta(minutes=1))),
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b + timedelta(minutes=2)))])
    first = app.engine.run_once("erp")
    assert first.status in ("ok", "conflicts"), first.error
    assert first.counts["create_plan_done"] == 1 and first.counts["pushed"] == 1
    assert [p["amount"] for p in lms.payments()] == [18000]
    with app.store.engine.connect() as c:
        from sync.state import documents
        waiting = c.execute(select(documents.c.status).where(documents.c.doc_id == "ACC-PAY-2026-00009")).scalar()
    assert waiting == "waiting" and _open_kinds(app) == []

    later = make_app(lms, erp, mapping={**scenario.LIFECYCLE_MAPPING, "plan_wait_limit": "0s"})
    second = later.engine.run_once("erp")
    assert second.status in ("ok", "conflicts") and _open_kinds(later) == ["plan_not_created"]
    assert len(lms.payments()) == 1 and later.store.get_cursor("erp").doc_id == "ACC-PAY-2026-00001"


def test_dry_run_of_a_first_sync_plans_waivers_and_conflicts_as_the_real_run_does(sandboxes, make_app):
    """From an empty state: plans created in the same (dry) run get their receipts and credit notes planned
    as a real run makes them (the dry run used to call a full credit note partial), and a receipt on a
    cancelled invoice is `plan_not_created` in both (the dry run used to leave it waiting)."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b)),
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b + timedelta(minutes=1))),
        ("Sales Invoice", scenario.credit_note("ACC-SINV-2026-00003", "ACC-SINV-2026-00001", "Learner 0", 27000,
                                               b + timedelta(minutes=2))),
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00005", "Learner 0", [("2026-11-15", 5000)], b,
                                           item="DS-201", docstatus=2)),
        ("Payment Entry", scenario.receipt_for_terms(2, "Learner 0", "ACC-SINV-2026-00005",
                                                     [("Installment 1", 5000)], b + timedelta(minutes=3)))])
    dry = app.engine.run_once("erp", dry_run=True)
    assert lms.stats()["writes_received"] == 0
    listed = sorted((w["op"], w["key"]) for w in dry.planned)
    real = app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        from sync.state import writes
        made = sorted((r.op, r.idem_key) for r in c.execute(select(writes.c.op, writes.c.idem_key)))
    assert listed == made
    assert [op for op, _ in made].count("waive_installment") == 2
    assert dict(dry.conflicts) == dict(real.conflicts) == {"plan_not_created": 1}
    assert _open_kinds(app) == ["plan_not_created"]


def test_dry_run_predicts_the_lms_refusals_of_a_real_run_from_the_balances_its_own_writes_leave(sandboxes, make_app):
    """Receipts of one run against one plan: the dry run keeps the balance each one leaves, so a second payment of a
    paid installment and a receipt beyond the plan's balance are the conflicts the real run gets from the LMS
    (installment_closed, overpayment), and a later credit note waives what is really still unpaid. It used to
    list them all as writes (961 payments predicted where the real run made 958 and 3 overpayments)."""
    scn, lms, erp, app = _setup(sandboxes, make_app, lambda b: [
        ("Sales Invoice", scenario.invoice("ACC-SINV-2026-00001", "Learner 0", ROWS, b)),
        ("Payment Entry", scenario.receipt_for_terms(1, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b + timedelta(minutes=1))),
        ("Payment Entry", scenario.receipt_for_terms(2, "Learner 0", "ACC-SINV-2026-00001",
                                                     [("Installment 1", 18000)], b + timedelta(minutes=2))),
        ("Payment Entry", scenario.receipt_for_terms(3, "Learner 0", "ACC-SINV-2026-00001",
                                                     [(None, 13500)], b + timedelta(minutes=3))),
        ("Payment Entry", scenario.receipt_for_terms(4, "Learner 0", "ACC-SINV-2026-00001",
                                                     [(None, 20000)], b + timedelta(minutes=4))),
        ("Sales Invoice", scenario.credit_note("ACC-SINV-2026-00003", "ACC-SINV-2026-00001", "Learner 0", 13500,
                                               b + timedelta(minutes=5))),
        ("Payment Entry", scenario.receipt_for_terms(5, "Learner 0", "ACC-SINV-2026-00001",
                                                     [(None, 100)], b + timedelta(minutes=6)))])
    dry = app.engine.run_once("erp", dry_run=True)
    assert lms.stats()["writes_received"] == 0
    listed = sorted((w["op"], w["key"]) for w in dry.planned)
    real = app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        from sync.state import writes
        made = sorted((r.op, r.idem_key) for r in c.execute(
            select(writes.c.op, writes.c.idem_key).where(writes.c.status == "done")))
    assert listed == made, (listed, made)
    assert dict(dry.conflicts) == dict(real.conflicts) == {"installment_closed": 1, "overpayment": 1,
                                                           "plan_completed": 1}, (dry.conflicts, real.conflicts)
    assert [op for op, _ in made] == ["create_plan", "record_payment", "record_payment", "waive_installment"]
    assert lms.plans()[0]["status"] == "completed"
