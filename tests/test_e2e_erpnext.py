"""The main job end to end over real loopback HTTP: ERPNext fake -> feesync -> LMS sandbox."""

from __future__ import annotations

from collections import Counter

import pytest

from sync.demo_data import build_demo
from sync.state import conflicts, documents, writes
from sqlalchemy import select


@pytest.fixture(scope="module")
def demo():
    return build_demo()


def _lms_payments(lms):
    return lms.payments()


def test_every_submitted_receipt_reaches_the_lms_exactly_once(demo, sandboxes, make_app):
    """Count and sum of LMS payments equal the ERP's pushable receipts; a second run writes nothing."""
    from sync.demo_data import build_demo as _b  # noqa: F401
    lms, erp = sandboxes({"lms_seed": demo.lms_seed, "erp_data": demo.erp_data})
    app = make_app(lms, erp, mapping=None,
                   erp_user={"api_key": demo.erp_data["users"][0]["api_key"],
                             "api_secret": demo.erp_data["users"][0]["api_secret"]},
                   lms_key=demo.lms_seed["institutes"][0]["api_keys"][0]["key"])
    first = app.engine.run_once("erp")
    pays = _lms_payments(lms)
    exp = demo.expected
    assert len(pays) == exp["lms_payments_expected"]
    assert sum(p["amount"] for p in pays) == exp["lms_amount_expected"]
    # each LMS payment carries the document it came from, once
    notes = Counter(p["notes"] for p in pays)
    assert max(notes.values()) <= 2   # a multi-reference receipt writes one payment per target
    assert first.counts["pushed"] == exp["receipts_pushable"]

    second = app.engine.run_once("erp")
    assert second.counts.get("pushed", 0) == 0 and second.counts.get("writes_done", 0) == 0
    assert len(_lms_payments(lms)) == exp["lms_payments_expected"]


def test_lms_originated_and_drafts_are_not_pushed(demo, sandboxes, make_app):
    """No LMS payment names an LMS-originated or a draft Payment Entry."""
    lms, erp = sandboxes({"lms_seed": demo.lms_seed, "erp_data": demo.erp_data})
    app = make_app(lms, erp, erp_user={"api_key": demo.erp_data["users"][0]["api_key"],
                                       "api_secret": demo.erp_data["users"][0]["api_secret"]},
                   lms_key=demo.lms_seed["institutes"][0]["api_keys"][0]["key"])
    result = app.engine.run_once("erp")
    pes = demo.erp_data["documents"]["Payment Entry"]
    lms_origin = {p["name"] for p in pes if p.get("custom_zensbot_payment_id")}
    drafts = {p["name"] for p in pes if p["docstatus"] == 0}
    pushed_docs = {p["notes"].split(":", 2)[2] for p in lms.payments()}
    assert lms_origin and drafts
    assert not (pushed_docs & lms_origin) and not (pushed_docs & drafts)
    submitted_origin = {p["name"] for p in pes if p.get("custom_zensbot_payment_id") and p["docstatus"] == 1
                        and p["payment_type"] == "Receive" and p["party_type"] == "Customer"}
    assert result.skipped["lms_originated"] == len(submitted_origin)


def test_each_unmappable_document_has_an_open_conflict_of_the_right_kind(demo, sandboxes, make_app):
    """Every document the answer key calls unmappable has exactly its conflict kind open."""
    lms, erp = sandboxes({"lms_seed": demo.lms_seed, "erp_data": demo.erp_data})
    app = make_app(lms, erp, erp_user={"api_key": demo.erp_data["users"][0]["api_key"],
                                       "api_secret": demo.erp_data["users"][0]["api_secret"]},
                   lms_key=demo.lms_seed["institutes"][0]["api_keys"][0]["key"])
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        open_rows = c.execute(select(conflicts.c.doc_id, conflicts.c.kind).where(conflicts.c.status == "open")).all()
    by_doc = {}
    for doc_id, kind in open_rows:
        by_doc.setdefault(doc_id, set()).add(kind)
    for kind, names in demo.expected["conflicts"].items():
        for name in names:
            assert kind in by_doc.get(name, set()), f"{name} should have an open {kind} conflict"


def test_ledger_agrees_with_the_lms(demo, sandboxes, make_app):
    """Every done write in the ledger is one LMS payment with the same receipt number, and vice versa."""
    lms, erp = sandboxes({"lms_seed": demo.lms_seed, "erp_data": demo.erp_data})
    app = make_app(lms, erp, erp_user={"api_key": demo.erp_data["users"][0]["api_key"],
                                       "api_secret": demo.erp_data["users"][0]["api_secret"]},
                   lms_key=demo.lms_seed["institutes"][0]["api_keys"][0]["key"])
    app.engine.run_once("erp")
    with app.store.engine.connect() as c:
        done = c.execute(select(writes.c.receipt_number).where(writes.c.status == "done")).scalars().all()
        pushed_docs = c.execute(select(documents.c.doc_id).where(documents.c.status == "pushed")).scalars().all()
    assert sorted(done) == sorted(p["receipt_number"] for p in lms.payments())
    assert len(pushed_docs) == demo.expected["receipts_pushable"]
