"""Index retrain_run.status: the monitor asks "is a run pending or running?" before every start.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("retrain_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrain_run_status"), ["status"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("retrain_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_run_status"))
