"""Schema migrations: a version-1 store upgrades keeping everything; outdated stores are refused; backups."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import pytest
from sqlalchemy import create_engine

from sync.errors import StateError
from sync.state import HEAD_REVISION, Store, metadata
from tests import proc
from tests.conftest import ROOT

V1 = ROOT / "tests" / "fixtures" / "state-v1.db"
KEPT = {
    "cursors": "SELECT source, changed_at, doc_id, updated_at, run_id FROM cursors ORDER BY source",
    "documents": "SELECT source, doc_id, event_kind, version, fingerprint, status, reason, changed_at, summary, amount,"
                 " currency, customer FROM documents ORDER BY id",
    "writes": "SELECT source, doc_id, op, base_key, revision, idem_key, body, status, lms_id, receipt_number, attempts"
              " FROM writes ORDER BY id",
    "conflicts": "SELECT source, doc_id, kind, detail, status, amount, currency, request, attempts FROM conflicts"
                 " ORDER BY id",
    "conflict_history": "SELECT conflict_id, action, actor, note FROM conflict_history ORDER BY id",
    "mappings": "SELECT kind, source, erp_id, lms_id, origin FROM mappings ORDER BY id",
    "runs": "SELECT run_id, source, mode, status, counts FROM runs ORDER BY id",
}


def _dump(path):
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(q).fetchall() for t, q in KEPT.items()}
    finally:
        con.close()


def _ddl(path):
    con = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        con.close()


@pytest.fixture
def v1_copy(tmp_path):
    dest = tmp_path / "state.db"
    shutil.copy(V1, dest)
    return dest


def test_outdated_store_is_refused_with_the_command_to_run(v1_copy):
    """A version-1 store is not opened; the message names `feesync state upgrade`."""
    with pytest.raises(StateError) as err:
        Store.open(v1_copy)
    assert "schema version 1" in str(err.value) and "feesync state upgrade" in str(err.value)


def test_upgrade_of_a_version_1_store_keeps_every_cursor_ledger_row_and_conflict(v1_copy):
    """Every row of the stored v1 fixture is still there, unchanged, after the upgrade; institute is 'default'."""
    before = _dump(v1_copy)
    assert len(before["documents"]) == 18 and len(before["writes"]) == 12 and len(before["conflicts"]) == 2
    assert Store.upgrade(v1_copy) == ("0001", HEAD_REVISION)
    assert _dump(v1_copy) == before
    store = Store.open(v1_copy)
    try:
        cursor = store.get_cursor("erp")
        assert cursor is not None and cursor.doc_id == "ACC-PAY-2026-00701"
    finally:
        store.close()
    con = sqlite3.connect(v1_copy)
    assert {r[0] for r in con.execute("SELECT DISTINCT institute FROM documents")} == {"default"}
    con.close()


def test_upgraded_store_has_exactly_the_schema_of_a_new_one(v1_copy, tmp_path):
    """Migrating v1 and creating fresh give the same DDL, and it matches the code's table definitions."""
    Store.upgrade(v1_copy)
    fresh = tmp_path / "fresh.db"
    Store.open(fresh).close()
    assert _ddl(v1_copy) == _ddl(fresh)
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    eng = create_engine(f"sqlite:///{fresh}")
    with eng.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    eng.dispose()
    assert diffs == []


def test_state_upgrade_command_and_then_the_daemon_opens_it(v1_copy, tmp_path):
    """`feesync state upgrade` upgrades the configured store; `status` then reads it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{v1_copy}"\n[lms]\nbase_url = "http://127.0.0.1:9/api/v1/public"\n')
    run = lambda *a: proc.run("--config", str(cfg), *a, secrets=False,  # noqa: E731
                              extra_env={"FEESYNC_LMS__API_KEY": "zl_only_for_this_test"})
    refused = run("status")
    assert refused.returncode == 2 and "feesync state upgrade" in refused.stderr
    assert "Back it up (feesync state backup FILE)" in " ".join(refused.stderr.split())
    # ... which works on the outdated store, as the message says (it used to refuse the same way)
    backup = run("state", "backup", str(tmp_path / "before-upgrade.db"))
    assert backup.returncode == 0, backup.stderr
    with sqlite3.connect(tmp_path / "before-upgrade.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    up = run("state", "upgrade", "--json")
    assert up.returncode == 0, up.stderr
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert '"doc_id": "ACC-PAY-2026-00701"' in status.stdout


def test_online_backup_is_a_consistent_copy_while_writers_go_on(tmp_path):
    """A backup taken while another thread writes opens as a valid store with every committed row."""
    store = Store.open(tmp_path / "live.db")
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set() and n < 2000:
            store.remember("src", f"k{n}", "v")
            n += 1
    t = threading.Thread(target=writer)
    t.start()
    try:
        out = store.backup(tmp_path / "copy.db")
    finally:
        stop.set()
        t.join()
    copy = Store.open(out)
    try:
        con = sqlite3.connect(out)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = con.execute("SELECT count(*) FROM memo").fetchone()[0]
        keys = {r[0] for r in con.execute("SELECT key FROM memo")}
        assert keys == {f"k{i}" for i in range(n)}, "the copy holds a prefix of the commits, no torn state"
    finally:
        copy.close()
        store.close()
    with pytest.raises(StateError, match="exists"):
        Store.open(tmp_path / "live.db").backup(out)
