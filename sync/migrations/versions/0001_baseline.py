"""Schema version 1: cursors, documents, writes, conflicts, history, mappings, runs, memo.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("meta", sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "cursors",
        sa.Column("source", sa.String, primary_key=True),
        sa.Column("changed_at", sa.String, nullable=False),
        sa.Column("doc_id", sa.String, nullable=False),
        sa.Column("updated_at", sa.String, nullable=False),
        sa.Column("run_id", sa.String),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("doc_id", sa.String, nullable=False),
        sa.Column("event_kind", sa.String, nullable=False),
        sa.Column("version", sa.String, nullable=False),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("reason", sa.String),
        sa.Column("changed_at", sa.String, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("amount", sa.String),
        sa.Column("currency", sa.String),
        sa.Column("customer", sa.String),
        sa.Column("first_seen", sa.String, nullable=False),
        sa.Column("updated_at", sa.String, nullable=False),
        sa.UniqueConstraint("source", "doc_id", name="uq_documents_source_doc"),
    )
    op.create_index("ix_documents_status", "documents", ["source", "status"])
    op.create_table(
        "writes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("doc_id", sa.String, nullable=False),
        sa.Column("op", sa.String, nullable=False),
        sa.Column("base_key", sa.String, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("idem_key", sa.String, nullable=False),
        sa.Column("method", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("body_fingerprint", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("lms_id", sa.String),
        sa.Column("receipt_number", sa.String),
        sa.Column("lms_response", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("sent_at", sa.String),
        sa.Column("decided_at", sa.String),
        sa.UniqueConstraint("idem_key", name="uq_writes_idem_key"),
    )
    op.create_index("ix_writes_doc", "writes", ["source", "doc_id"])
    op.create_index("ix_writes_status", "writes", ["status"])
    op.create_table(
        "conflicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("doc_id", sa.String, nullable=False),
        sa.Column("write_id", sa.Integer),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("amount", sa.String),
        sa.Column("currency", sa.String),
        sa.Column("customer", sa.String),
        sa.Column("lms_receipt", sa.String),
        sa.Column("request", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
        sa.Column("updated_at", sa.String, nullable=False),
        sa.Column("resolved_at", sa.String),
        sa.Column("resolved_by", sa.String),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_conflicts_status", "conflicts", ["status", "kind"])
    op.create_index("ix_conflicts_doc", "conflicts", ["source", "doc_id"])
    op.create_table(
        "conflict_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("conflict_id", sa.Integer, nullable=False),
        sa.Column("at", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "mappings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("erp_id", sa.String, nullable=False),
        sa.Column("lms_id", sa.String, nullable=False),
        sa.Column("origin", sa.String, nullable=False),
        sa.Column("created_at", sa.String, nullable=False),
        sa.UniqueConstraint("kind", "source", "erp_id", name="uq_mappings"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("mode", sa.String, nullable=False),
        sa.Column("started_at", sa.String, nullable=False),
        sa.Column("finished_at", sa.String),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("counts", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_runs_source", "runs", ["source", "id"])
    op.create_table(
        "memo",
        sa.Column("source", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")


def downgrade() -> None:
    for table in ("memo", "runs", "mappings", "conflict_history", "conflicts", "writes", "documents", "cursors", "meta"):
        op.drop_table(table)
