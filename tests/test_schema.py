"""The state store's schema file, its version check, and the store's basic guarantees."""

from __future__ import annotations

import sqlite3

import pytest

from sync.errors import StateError
from sync.state import SCHEMA_VERSION, Store, schema_ddl
from tests.conftest import ROOT


def test_schema_file_equals_code():
    """state.db-schema at the repo root is exactly the DDL the code creates."""
    assert (ROOT / "state.db-schema").read_text() == schema_ddl()


def test_created_store_has_the_schema_file_tables(tmp_path):
    """A store created on disk holds the tables and indexes the schema file lists."""
    store = Store.open(tmp_path / "s.db")
    store.close()
    con = sqlite3.connect(tmp_path / "s.db")
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    assert {"meta", "cursors", "documents", "writes", "conflicts", "conflict_history", "mappings", "runs",
            "memo"} <= names
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_other_schema_version_is_refused_with_a_clear_message(tmp_path):
    """Opening a store of another schema version fails and says which versions and what to do."""
    Store.open(tmp_path / "s.db").close()
    con = sqlite3.connect(tmp_path / "s.db")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StateError) as err:
        Store.open(tmp_path / "s.db")
    assert "schema version 99" in str(err.value) and f"version {SCHEMA_VERSION}" in str(err.value)


def test_foreign_sqlite_file_is_refused(tmp_path):
    """A SQLite file that is not a feesync store is not silently taken over."""
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StateError, match="not a feesync state store"):
        Store.open(tmp_path / "other.db")
