"""Adversarial: a listed receipt whose single GET fails with 404 must not vanish without a trace."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from sync.state import conflicts, documents
from tests import scenario


def test_receipt_404_between_list_and_get_is_not_silently_dropped(sandboxes, make_app):
    """A transient 404 on the GET of a listed receipt must leave it undecided (or a conflict), never lost."""
    scn = scenario.build(n_students=2, receipts_per_student=1)
    first, second = scn["erp_data"]["documents"]["Payment Entry"]
    later = datetime(2026, 11, 1, 9, 40, tzinfo=scenario.KHI)          # 40 minutes after the first receipt
    second["modified"] = second["creation"] = scenario.frappe_ts(later)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, lookback="10m")
    # the list shows the first receipt, its GET answers 404 once (a proxy blip, a replica behind, ...)
    erp.faults.fail(status=404, count=1, method="GET", path_regex=first["name"] + "$")
    app.engine.run_once("erp")
    app.engine.run_once("erp")                                          # the ERP answers normally now
    app.engine.run_once("erp")
    paid = {p["notes"].rsplit(":", 1)[-1] for p in lms.payments()}
    with app.store.engine.connect() as c:
        doc = c.execute(select(documents).where(documents.c.doc_id == first["name"])).mappings().first()
        conf = c.execute(select(conflicts).where(conflicts.c.doc_id == first["name"])).mappings().all()
    assert second["name"] in paid
    assert first["name"] in paid or conf, (
        f"{first['name']} is in the ERP (submitted, 1000 PKR) but is not in the LMS, has ledger row {doc} "
        "and no conflict: the cursor went past it and the lookback no longer reaches it")
