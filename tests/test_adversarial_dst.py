"""Adversarial: Frappe stores naive local `modified`; in the autumn DST fold local time runs backwards."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from tests import scenario


def test_receipt_stamped_in_the_repeated_dst_hour_is_not_skipped(sandboxes, make_app):
    """A receipt made after the clocks went back (naive `modified` earlier than the cursor's) must still be pushed."""
    scn = scenario.build(n_students=2, receipts_per_student=1)
    data = scn["erp_data"]
    data["site_time_zone"] = "Europe/London"
    for inv in data["documents"]["Sales Invoice"]:
        inv["modified"] = inv["creation"] = "2026-10-20 10:00:00"
    first, second = data["documents"]["Payment Entry"]
    data["documents"]["Payment Entry"] = [first]
    # 2026-10-25: BST ends at 01:00 UTC; local 01:00-02:00 happens twice
    first["modified"] = first["creation"] = "2026-10-25 01:50:00"        # 00:50 UTC (BST, first pass)
    first["posting_date"] = second["posting_date"] = "2026-10-25"
    clock = [datetime(2026, 10, 25, 0, 55, tzinfo=UTC)]
    lms, erp = sandboxes(scn, erp_clock=lambda: clock[0])
    app = make_app(lms, erp, lookback="10m",
                   erp_user={"api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET,
                             "site_time_zone": "Europe/London"})
    app.engine.run_once("erp")
    assert [p["reference_number"] for p in lms.payments()] == [first["name"]]
    # twenty minutes later, after the clocks went back, the second receipt is made: naive 01:10 (GMT)
    clock[0] = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)
    doc = copy.deepcopy(second)
    doc.pop("modified"), doc.pop("creation")
    erp.insert("Payment Entry", doc, modified=datetime(2026, 10, 25, 1, 10, tzinfo=UTC))
    assert erp.get("Payment Entry", second["name"])["modified"].startswith("2026-10-25 01:10")
    app.engine.run_once("erp")
    clock[0] = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    app.engine.run_once("erp")
    refs = sorted(p["reference_number"] for p in lms.payments())
    assert refs == sorted([first["name"], second["name"]]), (
        f"LMS holds {refs}: {second['name']} (naive 01:10 GMT, after {first['name']} at naive 01:50 BST) "
        "was never read, because the lookback (10m) is shorter than the DST fold (1h)")


def test_sql_naive_local_times_in_the_autumn_repeated_hour_lose_no_receipt(tmp_path):
    """A row written after the clocks went back carries a local time before the cursor's: the SQL connector
    read from `cursor - lookback` in local text and never saw it (ERPNext already widened its read)."""
    import sqlalchemy as sa

    from sync.testing import harnesses as H
    from sync.testing.conformance import Kit
    kit = Kit(H.SQLHarness(), tmp_path)
    try:
        h = kit.h
        conf = {**h.settings(page_size=50), "time_zone": "Europe/London"}

        def insert(doc, at, amount, i):
            with h.writer.begin() as c:
                c.execute(sa.text("INSERT INTO receipts VALUES (:d,:t,:a,'PKR','2026-10-25',:s,'','',:e,'Cash','')"),
                          {"d": doc, "t": at, "a": amount, "s": f"Student {i}", "e": f"student{i}@conformance.test"})
        insert("R-1", "2026-10-25 01:50:00", 1000, 1)     # 00:50 UTC, summer time
        assert kit.run(lookback="10m", connector_settings=conf).counts["pushed"] == 1
        insert("R-2", "2026-10-25 01:10:00", 2000, 2)     # 01:10 UTC: the second 01:10 of that night
        second = kit.run(lookback="10m", connector_settings=conf)
        third = kit.run(lookback="10m", connector_settings=conf)
        assert second.counts["pushed"] == 1 and third.counts.get("pushed", 0) == 0
        assert sorted(p["amount"] for p in kit.payments()) == [1000, 2000]
    finally:
        kit.close()
