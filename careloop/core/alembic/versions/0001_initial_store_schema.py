"""Initial store schema: exchange, verdict, trigger_event, retrain_run, adapter, adapter_event, lease.

Revision ID: 0001
Revises: -
Create Date: 2026-11-26

The tables of careloop/core/schema.py as the foundation created them (before Alembic). A store created then by
`create_all` is stamped at this revision by `service.migrations.upgrade` and upgraded from here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('adapter',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('base_model', sa.String(length=128), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('parent', sa.String(length=128), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('data_counts', sa.JSON(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('canary_fraction', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('adapter', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_status'), ['status'], unique=False)

    op.create_table('adapter_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('adapter', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('adapter_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_event_created_at'), ['created_at'], unique=False)

    op.create_table('exchange',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('public_model', sa.String(length=128), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('user_key', sa.String(length=64), nullable=True),
    sa.Column('request_messages', sa.JSON(), nullable=True),
    sa.Column('request_params', sa.JSON(), nullable=True),
    sa.Column('response_text', sa.Text(), nullable=True),
    sa.Column('finish_reason', sa.String(length=32), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('sampled', sa.Boolean(), nullable=False),
    sa.Column('judge_state', sa.String(length=16), nullable=False),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exchange_created_at'), ['created_at'], unique=False)
        batch_op.create_index(
            'ix_exchange_judge_queue', ['sampled', 'judge_state', 'created_at'], unique=False
        )
        batch_op.create_index('ix_exchange_target_created', ['target', 'created_at'], unique=False)

    op.create_table('lease',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('retrain_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('trigger_event_id', sa.Integer(), nullable=True),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('handle', sa.String(length=128), nullable=True),
    sa.Column('base_adapter', sa.String(length=128), nullable=True),
    sa.Column('adapter_name', sa.String(length=128), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('retrain_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retrain_run_created_at'), ['created_at'], unique=False)

    op.create_table('trigger_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('adapter', sa.String(length=128), nullable=True),
    sa.Column('judge', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('decision', sa.Text(), nullable=True),
    sa.Column('figures', sa.JSON(), nullable=True),
    sa.Column('retrain_run_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('trigger_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trigger_event_created_at'), ['created_at'], unique=False)

    op.create_table('verdict',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('exchange_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('adapter', sa.String(length=128), nullable=False),
    sa.Column('judge', sa.String(length=64), nullable=False),
    sa.Column('judge_version', sa.String(length=64), nullable=False),
    sa.Column('harm_level', sa.Integer(), nullable=False),
    sa.Column('response_class', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('rationale', sa.Text(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['exchange_id'], ['exchange.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('verdict', schema=None) as batch_op:
        batch_op.create_index('ix_verdict_adapter_judge_id', ['adapter', 'judge', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_verdict_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_verdict_exchange_judge', ['exchange_id', 'judge'], unique=False)



def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('verdict', schema=None) as batch_op:
        batch_op.drop_index('ix_verdict_exchange_judge')
        batch_op.drop_index(batch_op.f('ix_verdict_created_at'))
        batch_op.drop_index('ix_verdict_adapter_judge_id')

    op.drop_table('verdict')
    with op.batch_alter_table('trigger_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trigger_event_created_at'))

    op.drop_table('trigger_event')
    with op.batch_alter_table('retrain_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retrain_run_created_at'))

    op.drop_table('retrain_run')
    op.drop_table('lease')
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_index('ix_exchange_target_created')
        batch_op.drop_index('ix_exchange_judge_queue')
        batch_op.drop_index(batch_op.f('ix_exchange_created_at'))

    op.drop_table('exchange')
    with op.batch_alter_table('adapter_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_event_created_at'))

    op.drop_table('adapter_event')
    with op.batch_alter_table('adapter', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_status'))

    op.drop_table('adapter')
