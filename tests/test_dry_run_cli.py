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
