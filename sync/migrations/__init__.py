"""Alembic migrations of the state store (SQLite and PostgreSQL). Applied by `feesync state upgrade`."""
