"""`feesync once --dry-run` and `backfill --dry-run` as a user runs them: the writes listed, none made,
no cursor moved; and the list is exactly what the real run then writes (operation, target, key, body)."""

from __future__ import annotations

import json

from sqlalchemy import select

from sync.state import Store, cursors, writes
from tests import proc, scenario


def _ledger(state):
    store = Store.open(state)
    try:
        with store.engine.connect() as c:
            made = c.execute(select(writes.c.op, writes.c.method, writes.c.path, writes.c.idem_key, writes.c.body)).all()
            n_cursors = len(c.execute(select(cursors)).all())
    finally:
        store.close()
    return sorted((op, f"{m} {p}", k, json.loads(b)) for op, m, p, k, b in made), n_cursors


def _listed(planned):
    return sorted((w["op"], f"{w['method']} {w['path']}", w["key"], w["body"]) for w in planned)


def test_once_and_backfill_dry_runs_write_nothing_and_list_the_real_runs_writes(sandboxes, tmp_path):
    """Zero LMS writes (counted by the sandbox), no cursor stored; `once` then writes exactly the listed requests."""
    scn = scenario.build(n_students=3, receipts_per_student=3)
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)

    back = proc.run("--config", str(cfg), "backfill", "--source", "erp", "--since", "2026-01-01", "--dry-run", "--json")
    assert back.returncode == 0, back.stderr[-2000:]
    dry = proc.run("--config", str(cfg), "once", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert lms.stats()["writes_received"] == 0
    assert lms.payments() == []
    planned = json.loads(dry.stdout)["planned_writes"]
    assert len(planned) == len(scn["receipts"]) == 9
    assert _listed(json.loads(back.stdout)["planned_writes"]) == _listed(planned)
    made, n_cursors = _ledger(tmp_path / "state.db")
    assert made == [] and n_cursors == 0

    text = proc.run("--config", str(cfg), "once", "--dry-run", extra_env={"COLUMNS": "80"})
    assert text.returncode == 0 and "writes a real run would make: 9" in text.stdout
    assert all(w["key"] in text.stdout for w in planned)

    real = proc.run("--config", str(cfg), "once", "--json")
    assert real.returncode == 0, real.stderr[-2000:]
    made, n_cursors = _ledger(tmp_path / "state.db")
    assert made == _listed(planned)
    assert n_cursors == 1 and len(lms.payments()) == 9


def test_on_the_demo_data_the_dry_run_lists_exactly_the_real_runs_writes_and_conflicts(tmp_path):
    """1,000 receipts with plans, waivers, cancellations, overpayments and completed plans: the dry run
    (from an empty state) lists every write the real run then makes, and predicts the same conflicts."""
    from sync.app import build_app
    from sync.demo import SOURCE, build_demo, demo_settings
    from sync.sandbox.erpnext import ERPNextFake
    from sync.sandbox.lms import LmsSandbox
    data = build_demo()
    with LmsSandbox(data.lms_seed) as lms, ERPNextFake(data.erp_data) as erp:
        app = build_app(demo_settings(tmp_path, lms, erp, data))
        try:
            dry = app.engine.run_once(SOURCE, dry_run=True)
            assert lms.stats()["writes_received"] == 0
            real = app.engine.run_once(SOURCE)
            with app.store.engine.connect() as c:
                made = sorted((r.op, r.idem_key, r.body) for r in c.execute(
                    select(writes.c.op, writes.c.idem_key, writes.c.body).where(writes.c.status == "done")))
        finally:
            app.close()
    assert real.counts["writes_done"] == len(made) > 1000
    listed = sorted((w["op"], w["key"], json.dumps(w["body"], sort_keys=True, separators=(",", ":")))
                    for w in dry.planned)
    placeholders = [w for w in listed if "<" in w[2] or "<" in w[0]]
    assert [(op, key) for op, key, _ in listed] == [(op, key) for op, key, _ in made]
    # bodies are equal too, except where a new plan's or installment's id is a placeholder in the dry run
    assert [w for w in listed if "<" not in w[2]] == [m for m in made if (m[0], m[1]) in
                                                     {(op, key) for op, key, b in listed if "<" not in b}]
    assert len(placeholders) < len(listed)
    assert dict(dry.conflicts) == dict(real.conflicts) and real.conflicts["overpayment"] == 3
    # and per document: the conflicts it names are the ones the real run opened
    from sync import ops
    store = Store.open(str(tmp_path / "state.db"), create=False)
    try:
        opened = sorted((c["doc_id"], c["kind"]) for c in ops.list_conflicts(store, status="all"))
    finally:
        store.close()
    assert sorted((c["doc_id"], c["kind"]) for c in dry.would_open) == opened
