"""Scale-out on a real PostgreSQL: replicas share sources through leases, and one rate budget per key."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from sync.state import Store, writes
from tests import proc, scenario

PG_URL = os.environ.get("FEESYNC_TEST_PG_URL")

pytestmark = pytest.mark.skipif(not PG_URL and not os.environ.get("CI"),
                                reason="set FEESYNC_TEST_PG_URL (scripts/postgres.sh starts one) to run")

N_SOURCES, N_REPLICAS, LEASE_TTL = 20, 3, 4.0


@pytest.fixture
def pg_database():
    """A fresh database on the test server for this test, dropped afterwards."""
    assert PG_URL, "CI must provide PostgreSQL (scripts/test.sh starts it through scripts/postgres.sh)"
    base = make_url(PG_URL)
    name = f"feesync_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _partition(scn, n):
    """Split one scenario into n ERP sites (disjoint students, invoices and receipts)."""
    docs = scn["erp_data"]["documents"]
    sites = []
    for i in range(n):
        custs = docs["Customer"][i::n]
        names = {c["name"] for c in custs}
        site = {**scn["erp_data"], "documents": {
            "Customer": custs,
            "Sales Invoice": [d for d in docs["Sales Invoice"] if d["customer"] in names],
            "Payment Entry": [d for d in docs["Payment Entry"] if d["party"] in names]}}
        sites.append(site)
    return sites


def test_three_replicas_sync_20_sources_exactly_once_and_hand_over_a_killed_replicas_sources(pg_database, tmp_path):
    """5,000 receipts over 20 sources and 3 replicas: each recorded once, no 429, handover after a kill."""
    from sync.sandbox.erpnext import ERPNextFake
    from sync.sandbox.lms import LmsSandbox

    scn = scenario.build(n_students=200, receipts_per_student=25)
    assert len(scn["receipts"]) == 5000
    limit = 15000
    lms = LmsSandbox(scn["lms_seed"], rate_limit_per_minute=limit).start()
    fakes = [ERPNextFake(site).start() for site in _partition(scn, N_SOURCES)]
    (tmp_path / "erp_key").write_text(scenario.ERP_KEY)
    (tmp_path / "erp_secret").write_text(scenario.ERP_SECRET)
    lines = [f'state_url = "{pg_database}"', f'lease_ttl = "{LEASE_TTL}s"', 'log_format = "json"',
             "[lms]", f'base_url = "{lms.base_url}"', f"rate_limit_per_minute = {limit}", "max_attempts = 5"]
    for i, fake in enumerate(fakes):
        lines += [f"[sources.erp{i:02d}]", 'connector = "erpnext"', 'interval = "1s"', 'lag = "0s"',
                  f"[sources.erp{i:02d}.settings]", f'url = "{fake.url}"', "page_size = 100",
                  f'api_key_file = "{tmp_path / "erp_key"}"', f'api_secret_file = "{tmp_path / "erp_secret"}"']
    cfg = tmp_path / "feesync.toml"
    cfg.write_text("\n".join(lines) + "\n")
    env = {"FEESYNC_LMS__API_KEY": scenario.LMS_KEY}
    up = proc.run("--config", str(cfg), "state", "upgrade", secrets=False, extra_env=env)
    assert up.returncode == 0, up.stderr[-2000:]

    replicas = [_spawn(cfg, env, tmp_path / f"replica{r}.log") for r in range(N_REPLICAS)]
    store = Store.open(pg_database)
    handover = None
    try:
        deadline = time.monotonic() + 240
        while len(lms.payments()) < 1500 and time.monotonic() < deadline:
            time.sleep(0.2)
        owners = store.lease_owners()
        by_owner: dict[str, list[str]] = {}
        for src, (owner, _exp) in owners.items():
            by_owner.setdefault(owner, []).append(src)
        victim_owner, victim_sources = max(by_owner.items(), key=lambda kv: len(kv[1]))
        victim_pid = int(victim_owner.split(":")[1])
        victim = next(r for r in replicas if r.pid == victim_pid)
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        while time.monotonic() < deadline:
            now_owners = store.lease_owners()
            if all(now_owners[s][0] != victim_owner for s in victim_sources):
                handover = time.monotonic() - killed_at
                break
            time.sleep(0.1)
        while len(lms.payments()) < 5000 and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(2.5)   # a couple more ticks: nothing else may be written
    finally:
        for r in replicas:
            if r.poll() is None:
                r.send_signal(signal.SIGTERM)
        for r in replicas:
            try:
                r.wait(timeout=20)
            except Exception:  # noqa: BLE001
                r.kill()
        stats = lms.stats()
        pays = lms.payments()
        lms.stop()
        for f in fakes:
            f.stop()
    try:
        with store.engine.connect() as c:
            done = c.execute(select(writes.c.idem_key).where(writes.c.status == "done")).scalars().all()
    finally:
        store.close()

    logs = "".join((tmp_path / f"replica{r}.log").read_text() for r in range(N_REPLICAS))
    assert handover is not None, "the killed replica's sources were not taken over"
    # expiry (TTL since the last renewal) plus one scheduler tick of a surviving replica
    assert handover <= LEASE_TTL + 1.0 + 1.5, f"handover took {handover:.1f} s"
    notes = [p["notes"] for p in pays]
    assert len(pays) == 5000, f"{len(pays)} payments; replica logs tail: {logs[-1500:]}"
    assert len(set(notes)) == 5000 and sum(p["amount"] for p in pays) == scn["amount_total"]
    assert stats["writes_applied"] == 5000, "zero duplicate LMS writes"
    # a key is sent twice only when the killed replica had that write in flight (one per source at most):
    # two live replicas never worked one source at once
    assert stats["replays"] <= len(victim_sources), f"{stats['replays']} replays for {len(victim_sources)} sources"
    assert sorted(done) == sorted(scn["receipts"]), "every receipt recorded once in the shared ledger"
    assert stats["by_status"].get("429", 0) == 0, "the per-key budget held across replicas"
    assert '"event": "lease.acquired"' in logs


def _spawn(cfg, env, log_path):
    import subprocess
    import sys
    out = open(log_path, "w")   # noqa: SIM115 - closed when the child ends
    return subprocess.Popen([sys.executable, "-m", "sync.cli", "--config", str(cfg), "run"],
                            env=proc.env(env, secrets=False), stdout=out, stderr=subprocess.STDOUT)
