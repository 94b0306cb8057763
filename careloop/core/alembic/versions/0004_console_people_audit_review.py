"""The oversight console: console_user, console_session, audit_entry, review_sample, review_label.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table("console_user",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("role", sa.String(length=16), nullable=False),
                    sa.Column("password_hash", sa.String(length=255), nullable=False),
                    sa.Column("disabled", sa.Boolean(), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("name"))
    op.create_table("console_session",
                    sa.Column("id", sa.String(length=64), nullable=False),
                    sa.Column("user", sa.String(length=64), nullable=False),
                    sa.Column("csrf", sa.String(length=64), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("console_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_console_session_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_console_session_user"), ["user"], unique=False)
    op.create_table("audit_entry",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("actor", sa.String(length=64), nullable=False),
                    sa.Column("role", sa.String(length=16), nullable=False),
                    sa.Column("action", sa.String(length=32), nullable=False),
                    sa.Column("target", sa.String(length=128), nullable=False),
                    sa.Column("reason", sa.Text(), nullable=True),
                    sa.Column("details", sa.JSON(), nullable=True),
                    sa.PrimaryKeyConstraint("id"))
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_entry_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_entry_actor"), ["actor"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_entry_created_at"), ["created_at"], unique=False)
    op.create_table("review_sample",
                    sa.Column("exchange_id", sa.String(length=32), nullable=False),
                    sa.Column("kind", sa.String(length=16), nullable=False),
                    sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("double", sa.Boolean(), nullable=False),
                    sa.ForeignKeyConstraint(["exchange_id"], ["exchange.id"]),
                    sa.PrimaryKeyConstraint("exchange_id"))
    with op.batch_alter_table("review_sample", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_sample_kind"), ["kind"], unique=False)
    op.create_table("review_label",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("exchange_id", sa.String(length=32), nullable=False),
                    sa.Column("reviewer", sa.String(length=64), nullable=False),
                    sa.Column("kind", sa.String(length=16), nullable=False),
                    sa.Column("harm_level", sa.Integer(), nullable=False),
                    sa.Column("response_class", sa.String(length=16), nullable=False),
                    sa.Column("note", sa.Text(), nullable=True),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.ForeignKeyConstraint(["exchange_id"], ["exchange.id"]),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("exchange_id", "reviewer", name="uq_review_label_exchange_reviewer"))
    with op.batch_alter_table("review_label", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_label_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_review_label_exchange_id"), ["exchange_id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    for table in ("review_label", "review_sample", "audit_entry", "console_session", "console_user"):
        op.drop_table(table)
