"""audit: checkpoints, key ring, signers, archives; officer columns; append-only trigger on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# 等保 "protected from change and deletion": the database itself refuses UPDATE, DELETE and TRUNCATE of audit
# rows. Only the archive process, which first proves the archive file verifies, may DELETE, and it says so by
# setting msjx.audit_archiver for its transaction. A table owner or superuser can still disable the trigger;
# the hash chain and signed checkpoints are what catch that.
APPEND_ONLY_FUNCTION = """
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
PROTECTED = ("audit_records", "audit_checkpoints", "audit_archives")


def upgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=True))
        batch_op.create_index(
            'ix_audit_records_target_id', ['target_id'], unique=False,
            sqlite_where=sa.text('target_id IS NOT NULL'), postgresql_where=sa.text('target_id IS NOT NULL'),
        )

    op.create_table('audit_checkpoints',
    sa.Column('chain_id', sa.String(length=64), nullable=False),
    sa.Column('height', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('ts_ms', sa.BigInteger(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', 'height', name=op.f('pk_audit_checkpoints'))
    )
    op.create_table('audit_keys',
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('suite', sa.String(length=16), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('master_key_id', sa.String(length=32), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('destroyed_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_audit_keys'))
    )
    op.create_table('audit_signers',
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('chain_id', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key_id', name=op.f('pk_audit_signers'))
    )
    with op.batch_alter_table('audit_signers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_signers_chain_id'), ['chain_id'], unique=False)

    op.create_table('audit_archives',
    sa.Column('chain_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('from_height', sa.BigInteger(), nullable=False),
    sa.Column('to_height', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('first_ts_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_ts_ms', sa.BigInteger(), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('chain_id', 'seq', name=op.f('pk_audit_archives'))
    )

    if op.get_bind().dialect.name == 'postgresql':
        op.execute(APPEND_ONLY_FUNCTION)
        for table in PROTECTED:
            op.execute(
                f'CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}'
                ' FOR EACH ROW EXECUTE FUNCTION msjx_audit_append_only()'
            )
            op.execute(
                f'CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}'
                ' FOR EACH STATEMENT EXECUTE FUNCTION msjx_audit_append_only()'
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in PROTECTED:
            op.execute(f'DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}')
            op.execute(f'DROP TRIGGER IF EXISTS {table}_append_only ON {table}')
        op.execute('DROP FUNCTION IF EXISTS msjx_audit_append_only()')
    op.drop_table('audit_archives')
    with op.batch_alter_table('audit_signers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_signers_chain_id'))
    op.drop_table('audit_signers')
    op.drop_table('audit_keys')
    op.drop_table('audit_checkpoints')
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_records_target_id')
        batch_op.drop_column('reason')
        batch_op.drop_column('target_id')
