"""On PostgreSQL, `exchange` and `verdict` become range-partitioned by UTC day on `created_at` (SQLite unchanged).

Retention then expires a day by dropping its partition instead of deleting rows (careloop/core/retention.py).
A partitioned table's primary key must hold the partition key, so both keys become (id, created_at), and no
foreign key can reference `exchange.id` any more: the keys from `verdict`, `review_sample` and `review_label` are
dropped (the purge deletes or keeps dependents itself). Each table gets a default partition for rows outside the
day partitions, and the SQL function `careloop_ensure_day_partitions(first, last)` creates the day partitions of
both tables (moving any rows of that day out of the default partition first); the migration calls it for every
day that holds data and for today and the next days, the monitor's retention job for today onwards on each run.
Existing rows are copied into the partitioned tables in this one transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | None = None
depends_on: str | None = None

DAYS_AHEAD = 7
TABLES = ("exchange", "verdict")
INDEXES = {
    "exchange": {"ix_exchange_created_at": "created_at", "ix_exchange_judge_queue": "sampled, judge_state, created_at",
                 "ix_exchange_target_created": "target, created_at", "ix_exchange_request_id": "request_id"},
    "verdict": {"ix_verdict_adapter_judge_id": "adapter, judge, id", "ix_verdict_created_at": "created_at",
                "ix_verdict_exchange_judge": "exchange_id, judge"},
}
# The foreign keys the plain tables had (0001, 0004), restored by the downgrade.
FOREIGN_KEYS = {"verdict": "verdict_exchange_id_fkey", "review_sample": "review_sample_exchange_id_fkey",
                "review_label": "review_label_exchange_id_fkey"}

ENSURE_FUNCTION = r"""
CREATE OR REPLACE FUNCTION careloop_ensure_day_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
  tbl text;
  d date;
  part text;
  lo timestamptz;
  hi timestamptz;
  stray boolean;
  made integer := 0;
BEGIN
  FOREACH tbl IN ARRAY ARRAY['exchange', 'verdict'] LOOP
    d := first_day;
    WHILE d <= last_day LOOP
      part := tbl || '_p' || to_char(d, 'YYYYMMDD');
      IF to_regclass(part) IS NULL THEN
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE created_at >= $1 AND created_at < $2)',
                       tbl || '_default') INTO stray USING lo, hi;
        IF stray THEN
          -- rows of that day already in the default partition: move them into the new one, then attach it
          EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, tbl);
          EXECUTE format('WITH moved AS (DELETE FROM %I WHERE created_at >= $1 AND created_at < $2 RETURNING *)'
                         ' INSERT INTO %I SELECT * FROM moved', tbl || '_default', part) USING lo, hi;
          EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', tbl, part, lo, hi);
        ELSE
          EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', part, tbl, lo, hi);
        END IF;
        made := made + 1;
      END IF;
      d := d + 1;
    END LOOP;
  END LOOP;
  RETURN made;
END
$fn$
"""


def _on_postgres() -> bool:
    """Whether the migration runs on PostgreSQL (SQLite keeps plain tables)."""
    return bool(op.get_bind().dialect.name == "postgresql")


def _rebuild(table: str, old: str, partitioned: bool) -> None:
    """Rename `table` to `old` and create `table` again like it, partitioned by day or plain, with its key."""
    for name in INDEXES[table]:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {old}_pkey")
    tail = " PARTITION BY RANGE (created_at)" if partitioned else ""
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS){tail}")
    key = "id, created_at" if partitioned else "id"
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")


def _index(table: str) -> None:
    """Create the table's indexes (on a partitioned table they cascade to every partition)."""
    for name, cols in INDEXES[table].items():
        op.execute(f"CREATE INDEX {name} ON {table} ({cols})")


def _drop_old(old_verdict: str, old_exchange: str) -> None:
    """Drop the old tables, keeping the verdict id sequence for the new table."""
    bind = op.get_bind()
    seq = bind.execute(sa.text(f"SELECT pg_get_serial_sequence('{old_verdict}', 'id')")).scalar()
    if seq:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY NONE")
    op.execute(f"DROP TABLE {old_verdict}")
    op.execute(f"DROP TABLE {old_exchange}")
    if seq:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY verdict.id")


def upgrade() -> None:
    """Apply this revision."""
    if not _on_postgres():
        return
    bind = op.get_bind()
    for referrer, name in bind.execute(sa.text(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f'"
            " AND confrelid IN ('exchange'::regclass, 'verdict'::regclass)")).all():
        op.execute(f'ALTER TABLE {referrer} DROP CONSTRAINT "{name}"')
    for table in TABLES:
        _rebuild(table, f"{table}_plain", partitioned=True)
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    op.execute(ENSURE_FUNCTION)
    days = bind.execute(sa.text(
        "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS d FROM exchange_plain"
        " UNION SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM verdict_plain ORDER BY d")).scalars().all()
    for day in days:
        bind.execute(sa.text("SELECT careloop_ensure_day_partitions(:d, :d)"), {"d": day})
    today = datetime.now(UTC).date()
    bind.execute(sa.text("SELECT careloop_ensure_day_partitions(:a, :b)"),
                 {"a": today, "b": today + timedelta(days=DAYS_AHEAD)})
    for table in TABLES:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_plain")
    _drop_old("verdict_plain", "exchange_plain")
    for table in TABLES:
        _index(table)
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    """Revert this revision: plain tables again, with their single-column keys and foreign keys."""
    if not _on_postgres():
        return
    for table in TABLES:
        _rebuild(table, f"{table}_parted", partitioned=False)
        # a partitioned key only made (id, created_at) unique: keep the first row of an id
        op.execute(f"INSERT INTO {table} SELECT DISTINCT ON (id) * FROM {table}_parted ORDER BY id, created_at")
    _drop_old("verdict_parted", "exchange_parted")
    op.execute("DROP FUNCTION IF EXISTS careloop_ensure_day_partitions(date, date)")
    for table in TABLES:
        _index(table)
    # the plain tables' foreign keys need every referrer's exchange: retention dropped the days of some
    for referrer, name in FOREIGN_KEYS.items():
        op.execute(f"DELETE FROM {referrer} r WHERE NOT EXISTS (SELECT 1 FROM exchange e WHERE e.id = r.exchange_id)")
        op.execute(f"ALTER TABLE {referrer} ADD CONSTRAINT {name} FOREIGN KEY (exchange_id) REFERENCES exchange (id)")
