"""A partial index on `verdict(exchange_id) WHERE judge = 'human'`: the labelled exchanges retention keeps.

Every retention run asks, per batch or per expired day partition, which exchanges a person labelled
(careloop/core/retention.py); the human verdicts are a small part of the table. On PostgreSQL the index is made
on the day-partitioned parent (revision 0006) and so on every partition, present and future.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | None = None
depends_on: str | None = None

NAME = "ix_verdict_human_exchange"
WHERE = "judge = 'human'"


def upgrade() -> None:
    """Apply this revision."""
    op.create_index(NAME, "verdict", ["exchange_id"], unique=False, sqlite_where=sa.text(WHERE),
                    postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(NAME, table_name="verdict")
