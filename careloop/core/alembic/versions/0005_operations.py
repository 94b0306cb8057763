"""Operations (issue 23): client keys and shared rate-limit windows; on exchanges the request id, trace id,
client key name and the time retention purged the raw text.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('client_key',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('rpm', sa.Integer(), nullable=True),
    sa.Column('tpm', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('rate_window',
    sa.Column('key_name', sa.String(length=64), nullable=False),
    sa.Column('window_start', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key_name', 'window_start')
    )
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('trace_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('key_name', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('text_purged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_exchange_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exchange_request_id'))
        batch_op.drop_column('text_purged_at')
        batch_op.drop_column('key_name')
        batch_op.drop_column('trace_id')
        batch_op.drop_column('request_id')

    op.drop_table('rate_window')
    op.drop_table('client_key')
