"""SIGKILL the daemon at many points of a 500-receipt run; the LMS ends with each payment exactly once."""

from __future__ import annotations

import random
import signal
import threading

from sqlalchemy import select

from sync.state import Store, documents, writes
from tests import proc, scenario


def test_sigkill_at_20_plus_points_leaves_each_payment_exactly_once(sandboxes, tmp_path):
    """Kills land between send and outcome commit (sandbox hook) and at random times; restarts converge."""
    scn = scenario.build(n_students=100, receipts_per_student=5)
    lms, erp = sandboxes(scn)
    # a little latency per write, so a run takes long enough to be killed at many points
    lms.faults.slow(0.012, count=100_000, method="POST")
    cfg = proc.write_config(tmp_path, lms, erp, page_size=37)
    rng = random.Random(20261203)
    kill_points: list[tuple[str, int]] = []

    for i in range(90):
        before = len(lms.payments())
        if before >= 480 or len({n for _, n in kill_points}) >= 24:
            break
        child = proc.feesync("--config", str(cfg), "once")
        if i % 2 == 0:
            # between the LMS applying a write and the daemon committing its outcome
            target = before + rng.randint(1, 12)
            fired = threading.Event()

            def on_response(method, path, status, child=child, target=target, fired=fired):
                if method == "POST" and status == 201 and not fired.is_set() and len(lms.payments()) >= target:
                    fired.set()
                    child.send_signal(signal.SIGKILL)
            lms.on_response = on_response
            child.wait(timeout=120)
            lms.on_response = None
            mode = "after-apply"
        else:
            try:
                child.wait(timeout=rng.uniform(0.6, 1.3))
            except Exception:  # noqa: BLE001 - still running: kill it wherever it is
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
            mode = "random"
        child.stdout.close()
        child.stderr.close()
        if child.returncode == -signal.SIGKILL:
            kill_points.append((mode, len(lms.payments())))

    assert len(kill_points) >= 20, kill_points
    assert len({n for _, n in kill_points}) >= 20, "kills should land at distinct points of the run"
    assert any(m == "after-apply" for m, _ in kill_points)

    final = proc.run("--config", str(cfg), "once", "--json")
    assert final.returncode in (0, 1), final.stderr[-2000:]

    pays = lms.payments()
    notes = [p["notes"] for p in pays]
    assert len(pays) == 500, f"{len(pays)} LMS payments for 500 receipts"
    assert len(set(notes)) == 500
    assert sum(p["amount"] for p in pays) == scn["amount_total"]
    assert set(notes) == {f"erp:erp:{n}" for n in scn["receipts"]}

    store = Store.open(tmp_path / "state.db")
    try:
        with store.engine.connect() as c:
            done = c.execute(select(writes.c.idem_key, writes.c.receipt_number).where(writes.c.status == "done")).all()
            open_intents = c.execute(select(writes.c.id).where(writes.c.status == "intent")).all()
            pushed = c.execute(select(documents.c.doc_id).where(documents.c.status == "pushed")).scalars().all()
    finally:
        store.close()
    assert not open_intents
    assert sorted(k for k, _ in done) == sorted(scn["receipts"])
    assert sorted(r for _, r in done) == sorted(p["receipt_number"] for p in pays)
    assert sorted(pushed) == sorted(scn["receipts"])
