"""`feesync backfill`: a window walk that leaves the live cursor alone and resumes after an interruption."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta

from sync.state import Store
from tests import proc, scenario


def _spread_scenario():
    """60 receipts, 10 per day from 2026-11-01 to 2026-11-06 (Karachi time)."""
    scn = scenario.build(n_students=6, receipts_per_student=10)
    base = scenario.datetime(2026, 11, 1, 10, tzinfo=scenario.KHI)
    for i, pe in enumerate(scn["erp_data"]["documents"]["Payment Entry"]):
        ts = base + timedelta(days=i // 10, minutes=i % 10)
        pe["modified"] = pe["creation"] = scenario.frappe_ts(ts)
    return scn


def _settled_count(lms, quiet: float = 0.3) -> int:
    """The LMS's payment count once it has not changed for `quiet` seconds (in-flight requests applied)."""
    last, since = len(lms.payments()), time.monotonic()
    deadline = since + 10
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(lms.payments())
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_backfill_pushes_its_window_only_and_leaves_the_live_cursor(sandboxes, tmp_path):
    """Nov 2-4 holds 30 receipts: exactly those are pushed; the live cursor is untouched; `once` does the rest."""
    scn = _spread_scenario()
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp, page_size=7)
    out = proc.run("--config", str(cfg), "backfill", "--source", "erp", "--since", "2026-11-02",
                   "--until", "2026-11-05", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["counts"]["pushed"] == 30
    assert sorted(p["notes"] for p in lms.payments()) == sorted(f"erp:erp:{n}" for n in scn["receipts"][10:40])
    store = Store.open(tmp_path / "state.db")
    try:
        assert store.get_cursor("erp") is None
        assert store.get_cursor(result["cursor_name"]) is not None
    finally:
        store.close()
    live = proc.run("--config", str(cfg), "once", "--json")
    assert live.returncode == 0, live.stderr[-2000:]
    assert json.loads(live.stdout)["results"][0]["counts"]["pushed"] == 30
    notes = [p["notes"] for p in lms.payments()]
    assert len(notes) == 60 and len(set(notes)) == 60


def test_interrupted_backfill_resumes_where_it_stopped(sandboxes, tmp_path):
    """Killed midway, the same backfill command resumes from its own cursor and ends with each receipt once."""
    scn = _spread_scenario()
    lms, erp = sandboxes(scn)
    lms.faults.slow(0.05, count=10_000, method="POST")
    cfg = proc.write_config(tmp_path, lms, erp, page_size=7)
    args = ("--config", str(cfg), "backfill", "--source", "erp", "--since", "2026-11-01", "--until", "2026-11-07")
    child = proc.feesync(*args)
    deadline = time.monotonic() + 60
    while len(lms.payments()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    child.stderr.close()
    # a request the child sent just before the kill is still sleeping in the sandbox's slow fault and is
    # applied after it: count only once the sandbox has settled
    done_before = _settled_count(lms)
    assert 20 <= done_before < 60
    lms.faults.clear()
    again = proc.run(*args, "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    counts = json.loads(again.stdout)["counts"]
    # a write the kill left between send and outcome is re-sent with its key and replayed, not duplicated
    assert counts["pushed"] - counts.get("writes_replayed", 0) == 60 - done_before
    notes = [p["notes"] for p in lms.payments()]
    assert len(notes) == 60 and len(set(notes)) == 60
