"""grant suspension and delivery; the requesting department's register of use, storage and destruction

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

The later obligations of 《政务数据共享条例》: a grant may be suspended for misuse (and resumed), it is
delivered within 20 working days of approval, and the requester keeps a register of what it did with the
data for at least 3 years. The register is append-only; a trigger refuses changes, and deletions before
`keep_until`, on both databases.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION msjx_register_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'data_use_entries is append-only: an entry is never changed';
    END IF;
    IF OLD.keep_until >= CURRENT_DATE THEN
        RAISE EXCEPTION 'data_use_entries: entry % is kept until %', OLD.entry_id, OLD.keep_until;
    END IF;
    RETURN OLD;
END;
$$
"""
SQLITE_TRIGGERS = (
    """
CREATE TRIGGER data_use_entries_no_update BEFORE UPDATE ON data_use_entries
BEGIN
    SELECT RAISE(ABORT, 'data_use_entries is append-only: an entry is never changed');
END
""",
    """
CREATE TRIGGER data_use_entries_kept BEFORE DELETE ON data_use_entries
WHEN OLD.keep_until >= date('now')
BEGIN
    SELECT RAISE(ABORT, 'data_use_entries: an entry is kept until its keep_until');
END
""",
)


def upgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suspended_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('suspended_by', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('suspend_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('delivery_due', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('delivery_due_provisional', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('delivered_by', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('delivery_note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('delivery_overdue_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table('data_use_entries',
    sa.Column('entry_id', sa.String(length=64), nullable=False),
    sa.Column('grant_id', sa.String(length=64), nullable=False),
    sa.Column('sharing_request_id', sa.String(length=64), nullable=True),
    sa.Column('department', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('location', sa.Text(), nullable=True),
    sa.Column('volume', sa.Integer(), nullable=True),
    sa.Column('recorded_by', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('keep_until', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['grants.grant_id'], name=op.f('fk_data_use_entries_grant_id_grants')),
    sa.PrimaryKeyConstraint('entry_id', name=op.f('pk_data_use_entries'))
    )
    with op.batch_alter_table('data_use_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_data_use_entries_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_data_use_entries_recorded_at'), ['recorded_at'], unique=False)

    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_FUNCTION)
        op.execute(
            'CREATE TRIGGER data_use_entries_kept BEFORE UPDATE OR DELETE ON data_use_entries'
            ' FOR EACH ROW EXECUTE FUNCTION msjx_register_kept()'
        )
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER IF EXISTS data_use_entries_kept ON data_use_entries')
        op.execute('DROP FUNCTION IF EXISTS msjx_register_kept()')
    else:
        op.execute('DROP TRIGGER IF EXISTS data_use_entries_no_update')
        op.execute('DROP TRIGGER IF EXISTS data_use_entries_kept')
    with op.batch_alter_table('data_use_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_data_use_entries_recorded_at'))
        batch_op.drop_index(batch_op.f('ix_data_use_entries_grant_id'))
    op.drop_table('data_use_entries')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('delivery_overdue_at')
        batch_op.drop_column('delivery_note')
        batch_op.drop_column('delivered_by')
        batch_op.drop_column('delivered_at')
        batch_op.drop_column('delivery_due_provisional')
        batch_op.drop_column('delivery_due')
        batch_op.drop_column('suspend_reason')
        batch_op.drop_column('suspended_by')
        batch_op.drop_column('suspended_at')
