"""audit records: partitioned by month on PostgreSQL; caller and subject indexes carry the time

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

At three years' size (millions of rows) retention cannot delete rows one by one: on PostgreSQL `audit_records`
becomes a table partitioned by range of `ts_ms`, one partition per Beijing month, so archiving drops whole months
(gateway/audit/partitions.py). Existing rows are copied into their months; the indexes are built after the copy,
which is several times faster than filling indexed tables. A partitioned table's unique keys must hold the
partition key, so the primary key is (chain_id, height, ts_ms) and record ids are unique with their time; the
hash chain, not the key, is what proves a chain has one record per height (`audit verify`).

Rows no longer leave PostgreSQL one by one, so the append-only trigger loses its one exception (the archiver's
DELETE): every UPDATE, DELETE and TRUNCATE of audit rows is refused; a month leaves by DETACH and DROP, which
only the table's owner can do, after its archive file verified.

On both databases the caller and subject indexes become (caller_id, ts_ms) and (subject_hash, ts_ms): a search
by either, newest first, reads one page of the index instead of every matching row. SQLite stays one table.
"""

from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

BEIJING = timezone(timedelta(hours=8))
STRICT_FUNCTION = """
CREATE OR REPLACE FUNCTION msjx_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
ARCHIVER_FUNCTION = """
CREATE OR REPLACE FUNCTION msjx_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_records'
       AND coalesce(current_setting('msjx.audit_archiver', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
MONTHS_AHEAD = 3
INDEXES = (  # name, columns, partial condition
    ('ix_audit_records_ts_ms', 'ts_ms', None),
    ('ix_audit_records_caller_ts', 'caller_id, ts_ms', None),
    ('ix_audit_records_subject_ts', 'subject_hash, ts_ms', None),
    ('ix_audit_records_target_id', 'target_id', 'target_id IS NOT NULL'),
    ('ix_audit_records_reason_category', 'reason_category', 'reason_category IS NOT NULL'),
)
OLD_INDEXES = (
    ('ix_audit_records_ts_ms', 'ts_ms', None),
    ('ix_audit_records_caller_id', 'caller_id', None),
    ('ix_audit_records_subject_hash', 'subject_hash', None),
    ('ix_audit_records_target_id', 'target_id', 'target_id IS NOT NULL'),
    ('ix_audit_records_reason_category', 'reason_category', 'reason_category IS NOT NULL'),
)


def _month_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=BEIJING).timestamp() * 1000)


def _months(first_ms: int, last_ms: int) -> list[tuple[int, int, int, int]]:
    """(year, month, from_ms, to_ms) of every Beijing month from first_ms's to last_ms's."""
    first = datetime.fromtimestamp(first_ms / 1000, BEIJING)
    last = datetime.fromtimestamp(last_ms / 1000, BEIJING)
    index, end = first.year * 12 + first.month - 1, last.year * 12 + last.month - 1
    months = []
    while index <= end:
        year, month = divmod(index, 12)
        following = divmod(index + 1, 12)
        months.append((year, month + 1, _month_ms(year, month + 1), _month_ms(following[0], following[1] + 1)))
        index += 1
    return months


def _create_indexes(table: str, indexes: tuple[tuple[str, str, str | None], ...]) -> None:
    for name, columns, where in indexes:
        op.execute(f'CREATE INDEX {name} ON {table} ({columns})' + (f' WHERE {where}' if where else ''))


def _triggers(table: str) -> None:
    op.execute(
        f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}'
        ' FOR EACH ROW EXECUTE FUNCTION msjx_audit_append_only()'
    )
    op.execute(
        f'CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}'
        ' FOR EACH STATEMENT EXECUTE FUNCTION msjx_audit_append_only()'
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        with op.batch_alter_table('audit_records', schema=None) as batch_op:
            batch_op.drop_index('ix_audit_records_caller_id')
            batch_op.drop_index('ix_audit_records_subject_hash')
            batch_op.create_index('ix_audit_records_caller_ts', ['caller_id', 'ts_ms'], unique=False)
            batch_op.create_index('ix_audit_records_subject_ts', ['subject_hash', 'ts_ms'], unique=False)
        return
    bind = op.get_bind()
    op.execute('LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE')
    op.execute(STRICT_FUNCTION)
    op.execute('ALTER TABLE audit_records RENAME TO audit_records_unpartitioned')
    op.execute(
        'CREATE TABLE audit_records (LIKE audit_records_unpartitioned INCLUDING DEFAULTS)'
        ' PARTITION BY RANGE (ts_ms)'
    )
    low, high = bind.execute(sa.text('SELECT min(ts_ms), max(ts_ms) FROM audit_records_unpartitioned')).one()
    now = int(datetime.now(BEIJING).timestamp() * 1000)
    ahead = datetime.now(BEIJING)
    ahead_index = ahead.year * 12 + ahead.month - 1 + MONTHS_AHEAD
    ahead_ms = _month_ms(ahead_index // 12, ahead_index % 12 + 1)
    first = min(low, now) if low is not None else now
    last = max(high, ahead_ms) if high is not None else ahead_ms
    for year, month, from_ms, to_ms in _months(first, last):
        name = f'audit_records_{year:04d}_{month:02d}'
        op.execute(f'CREATE TABLE {name} PARTITION OF audit_records FOR VALUES FROM ({from_ms}) TO ({to_ms})')
        op.execute(
            f'CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name}'
            ' FOR EACH STATEMENT EXECUTE FUNCTION msjx_audit_append_only()'
        )
    op.execute('INSERT INTO audit_records SELECT * FROM audit_records_unpartitioned')
    op.execute('DROP TABLE audit_records_unpartitioned')
    op.execute('ALTER TABLE audit_records ADD CONSTRAINT pk_audit_records PRIMARY KEY (chain_id, height, ts_ms)')
    op.execute('ALTER TABLE audit_records ADD CONSTRAINT uq_audit_records_record_id UNIQUE (record_id, ts_ms)')
    _create_indexes('audit_records', INDEXES)
    _triggers('audit_records')
    op.execute('ANALYZE audit_records')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        with op.batch_alter_table('audit_records', schema=None) as batch_op:
            batch_op.drop_index('ix_audit_records_subject_ts')
            batch_op.drop_index('ix_audit_records_caller_ts')
            batch_op.create_index('ix_audit_records_subject_hash', ['subject_hash'], unique=False)
            batch_op.create_index('ix_audit_records_caller_id', ['caller_id'], unique=False)
        return
    op.execute('LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE')
    op.execute(ARCHIVER_FUNCTION)
    op.execute('ALTER TABLE audit_records RENAME TO audit_records_partitioned')
    op.execute('CREATE TABLE audit_records (LIKE audit_records_partitioned INCLUDING DEFAULTS)')
    op.execute('INSERT INTO audit_records SELECT * FROM audit_records_partitioned')
    op.execute('DROP TABLE audit_records_partitioned')  # its partitions go with it
    op.execute('ALTER TABLE audit_records ADD CONSTRAINT pk_audit_records PRIMARY KEY (chain_id, height)')
    op.execute('ALTER TABLE audit_records ADD CONSTRAINT uq_audit_records_record_id UNIQUE (record_id)')
    _create_indexes('audit_records', OLD_INDEXES)
    _triggers('audit_records')
