"""Schema version 2: rows carry their institute; leases let replicas share sources.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("cursors", "documents", "writes", "conflicts", "runs")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("institute", sa.String, nullable=False, server_default="default"))
    op.create_index("ix_conflicts_institute", "conflicts", ["institute", "status"])
    # Idempotency-Keys are unique per LMS institute (that is where the LMS keeps them), not globally
    with op.batch_alter_table("writes") as batch:
        batch.drop_constraint("uq_writes_idem_key", type_="unique")
        batch.create_unique_constraint("uq_writes_institute_key", ["institute", "idem_key"])
    op.create_table(
        "leases",
        sa.Column("source", sa.String, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_conflicts_institute", "conflicts")
    with op.batch_alter_table("writes") as batch:
        batch.drop_constraint("uq_writes_institute_key", type_="unique")
        batch.create_unique_constraint("uq_writes_idem_key", ["idem_key"])
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("institute")
    op.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
