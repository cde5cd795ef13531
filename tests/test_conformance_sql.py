"""The conformance kit (`sync.testing.conformance`) against the SQL connector: a SQLite file always,
PostgreSQL as well when FEESYNC_TEST_PG_URL is set (scripts/test.sh starts one)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import SQLHarness

PG_URL = os.environ.get("FEESYNC_TEST_PG_URL")


class TestSQLiteConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return SQLHarness()


class TestPostgresConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        if not PG_URL:
            pytest.skip("set FEESYNC_TEST_PG_URL (e.g. postgresql+psycopg://user:pw@127.0.0.1/db) to run PostgreSQL")
        if importlib.util.find_spec("psycopg") is None:
            pytest.skip("psycopg is not installed")
        return SQLHarness(PG_URL)


# --- what the kit found: a refused account is the source's stop, not a query error or a retry ------------
def test_a_refused_account_is_stop_source_by_sqlstate_and_by_text():
    """SQLSTATE 28xxx / 42501, MySQL 1045, and psycopg's SQLSTATE-less connect failures stop the source."""
    import sqlite3

    from sqlalchemy import exc as sa_exc

    from connectors.sql.connector import translate
    from sync.errors import SourceError, StopSource, TransientError

    class DriverError(Exception):
        def __init__(self, msg, sqlstate=None):
            super().__init__(msg)
            self.sqlstate = sqlstate

    refused = [
        sa_exc.ProgrammingError("SELECT 1", {}, DriverError("permission denied for table receipts", "42501")),
        sa_exc.OperationalError("SELECT 1", {}, DriverError("invalid password", "28P01")),
        sa_exc.OperationalError("SELECT 1", {}, DriverError(
            'connection failed: FATAL:  password authentication failed for user "erp"')),
        sa_exc.OperationalError("SELECT 1", {}, DriverError('connection failed: FATAL:  role "erp" does not exist')),
        sa_exc.OperationalError("SELECT 1", {}, DriverError("no pg_hba.conf entry for host \"10.0.0.9\"")),
        sa_exc.OperationalError("SELECT 1", {}, Exception(1045, "Access denied for user 'erp'@'10.0.0.9'")),
    ]
    for exc in refused:
        assert isinstance(translate(exc, "page"), StopSource), exc
    # unchanged: a missing relation is a query problem, a lock is transient
    missing = sa_exc.ProgrammingError("SELECT 1", {}, DriverError('relation "x" does not exist', "42P01"))
    assert isinstance(translate(missing, "page"), SourceError)
    locked = sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    assert isinstance(translate(locked, "page"), TransientError)


def test_a_wrong_postgres_password_stops_the_source_and_is_not_shown():
    """Against the real PostgreSQL: a wrong password is StopSource (once, not retried) and the text hides it."""
    if not PG_URL or importlib.util.find_spec("psycopg") is None:
        pytest.skip("set FEESYNC_TEST_PG_URL (and install psycopg) to run PostgreSQL")
    from sqlalchemy.engine import make_url

    from connectors.sql import SQLConnector, SQLSettings
    from sync.errors import StopSource
    from sync.testing.helpers import MemoryContext

    wrong = "Wr0ng-Pa55word-4711"
    url = make_url(PG_URL).set(password=wrong).render_as_string(hide_password=False)
    c = SQLConnector(SQLSettings(url=url, query="SELECT 1 AS x", max_attempts=3), sleep=lambda s: None)
    try:
        with pytest.raises(StopSource) as err:
            list(c.fetch(None, MemoryContext()))
    finally:
        c.close()
    assert c.queries == 1
    assert wrong not in str(err.value) and wrong not in repr(c.settings)
