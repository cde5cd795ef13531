"""Alembic environment: always run programmatically by `sync.state` with an open connection."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - feesync never runs alembic from the command line
    raise RuntimeError("feesync migrations run through `feesync state upgrade`, not the alembic CLI")

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
