"""The daemon's periodic reconcile pass (rule 9) sees what a cursor cannot: a pushed receipt deleted in the ERP."""

from __future__ import annotations

from sync.daemon import Daemon
from sync.reconcile import latest
from tests import scenario


def test_scheduled_reconcile_reports_a_receipt_cancelled_and_deleted_between_two_polls(sandboxes, make_app):
    """Cancelled and deleted before the next poll, the pushed receipt shows up as a not_in_erp drift."""
    scn = scenario.build(n_students=2, receipts_per_student=2)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    assert app.engine.run_once("erp").counts["pushed"] == 4
    gone = scn["receipts"][1]
    erp.cancel("Payment Entry", gone)
    erp.delete("Payment Entry", gone)
    app.settings.reconcile_window = "60d"   # the scenario's receipts are from early November
    daemon = Daemon(app)
    assert daemon.leases.acquire("erp")
    found = daemon.reconcile_job()
    assert found == {"erp": 1}
    stored = latest(app.store)
    drifts = [d for r in stored for d in r.get("drifts", [])]
    assert [(d["kind"], d["doc_id"]) for d in drifts] == [("not_in_erp", gone)]
    assert len(lms.payments()) == 4, "reconciliation writes nothing to the LMS"
    daemon.leases.stop()
