"""Cursor rules over real HTTP: ties across pages, kills midway, rows that appear behind the cursor."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sync.events import PaymentReceived
from tests import scenario


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in the engine catches it."""


def _kill_after(n):
    seen = [0]

    def hook(_source, event):
        if isinstance(event, PaymentReceived):
            seen[0] += 1
        if seen[0] > n:
            raise Killed
    return hook


def _tie_scenario():
    # 9 students x 5 receipts = 45 receipts, all sharing one `modified`
    return scenario.build(n_students=9, receipts_per_student=5, same_modified=45)


def test_45_receipts_sharing_one_modified_are_all_pushed_with_page_size_20(sandboxes, make_app):
    """Keyset paging on (modified, name) walks a tie larger than a page without gap or duplicate."""
    scn = _tie_scenario()
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, page_size=20)
    result = app.engine.run_once("erp")
    assert result.counts["pushed"] == 45
    assert sorted(p["notes"] for p in lms.payments()) == sorted(f"erp:erp:{n}" for n in scn["receipts"])
    # Payment Entry pages 20 + 20 + 5 (the short page ends it) and one Sales Invoice page
    assert erp.stats()["by_path_kind"]["list"] == 4


def test_tie_run_killed_midway_then_restarted_pushes_each_once(sandboxes, make_app, tmp_path):
    """Killed after 27 of 45 tied receipts, the next run pushes the other 18 and nothing twice."""
    scn = _tie_scenario()
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, page_size=20)
    app.engine.on_event = _kill_after(27)
    with pytest.raises(Killed):
        app.engine.run_once("erp")
    assert len(lms.payments()) == 27
    app.engine.on_event = None
    result = app.engine.run_once("erp")
    assert result.counts["pushed"] == 18
    notes = [p["notes"] for p in lms.payments()]
    assert len(notes) == 45 and len(set(notes)) == 45


def test_receipt_visible_late_behind_the_cursor_is_still_pushed(sandboxes, make_app):
    """A row committed late with a `modified` seconds behind the stored cursor is re-read by the lookback."""
    scn = scenario.build(n_students=3, receipts_per_student=4)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp, page_size=5)
    app.engine.run_once("erp")
    cursor = app.store.get_cursor("erp")
    assert cursor is not None and cursor.doc_id == scn["receipts"][-1]
    late = scenario.new_receipt(900, "Student 0", 500, "ACC-SINV-2026-00001", cursor.changed_at - timedelta(seconds=4))
    erp.insert("Payment Entry", late, modified=cursor.changed_at - timedelta(seconds=4))
    result = app.engine.run_once("erp")
    assert result.counts["pushed"] == 1
    assert any(p["notes"] == "erp:erp:ACC-PAY-2026-00900" for p in lms.payments())
    assert len(lms.payments()) == 13


def test_cursor_never_passes_an_undecided_document(sandboxes, make_app):
    """When the LMS keeps failing on a receipt, the cursor stays before it and the next cycle pushes it."""
    scn = scenario.build(n_students=2, receipts_per_student=3)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    # receipts 1..3 go through; then every attempt on the 4th fails with 503
    pushed_first = []

    def hook(_s, ev):
        if not isinstance(ev, PaymentReceived):
            return
        pushed_first.append(ev.doc_id)
        if len(pushed_first) == 4:
            lms.faults.fail(status=503, count=50, method="POST")
    app.engine.on_event = hook
    result = app.engine.run_once("erp")
    assert result.status == "deferred" and result.counts["pushed"] == 3
    cursor = app.store.get_cursor("erp")
    assert cursor.doc_id == scn["receipts"][2]
    lms.faults.clear()
    app.engine.on_event = None
    again = app.engine.run_once("erp")
    assert again.counts["pushed"] == 3
    assert len({p["notes"] for p in lms.payments()}) == 6 and len(lms.payments()) == 6
    assert app.store.get_cursor("erp").doc_id == scn["receipts"][-1]


def test_idle_poll_sends_no_lms_request_and_no_erp_get(sandboxes, make_app):
    """With nothing new, a poll costs ERP list calls only and zero LMS requests."""
    scn = scenario.build(n_students=3, receipts_per_student=3)
    lms, erp = sandboxes(scn)
    app = make_app(lms, erp)
    app.engine.run_once("erp")
    lms_before = lms.stats()["requests"]
    erp_before = erp.stats()["by_path_kind"].get("get", 0)
    result = app.engine.run_once("erp")
    assert result.counts["unchanged"] == 9 + 3 and result.counts.get("pushed", 0) == 0   # 9 receipts, 3 invoices
    assert lms.stats()["requests"] == lms_before
    assert erp.stats()["by_path_kind"].get("get", 0) == erp_before


def test_tie_run_sigkilled_between_pages_then_restarted_pushes_each_once(sandboxes, tmp_path):
    """A real `feesync once` child SIGKILLed while it waits for the second page of a 45-row tie (page size
    20): the restarted run pushes the rest, and the LMS ends with each of the 45 receipts once."""
    import json
    import signal

    from tests import proc
    scn = _tie_scenario()
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp, page_size=20)
    child: list = []
    pe_pages: list[int] = []

    def kill_on_second_page(doctype, rows):
        if doctype == "Payment Entry":
            pe_pages.append(len(rows))
            if len(pe_pages) == 2 and child:
                child[0].send_signal(signal.SIGKILL)
    erp.on_list(kill_on_second_page)
    child.append(proc.feesync("--config", str(cfg), "once"))
    child[0].communicate(timeout=120)
    assert child[0].returncode == -signal.SIGKILL
    erp.on_list(None)
    before = len(lms.payments())
    assert 20 <= before < 45, before          # the first page was pushed, the kill came before the rest
    again = proc.run("--config", str(cfg), "once", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    counts = json.loads(again.stdout)["results"][0]["counts"]
    assert counts["pushed"] - counts.get("writes_replayed", 0) == 45 - before
    assert sorted(p["notes"] for p in lms.payments()) == sorted(f"erp:erp:{n}" for n in scn["receipts"])
