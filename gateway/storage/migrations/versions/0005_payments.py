"""idempotency keys, payment intents and outcomes

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-22

Idempotency keys (the stored answers of submit-voucher), payment intents written before a voucher is sent,
and their outcomes recorded after. Amounts are decimal strings, never floats.
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('caller_id', sa.String(length=64), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('service', sa.String(length=128), nullable=False),
    sa.Column('operation', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.LargeBinary(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_until_ms', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('caller_id', 'idem_key', name=op.f('pk_idempotency_keys'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_state'), ['state'], unique=False)

    op.create_table('payment_intents',
    sa.Column('voucher_no', sa.String(length=64), nullable=False),
    sa.Column('caller_id', sa.String(length=64), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.Column('uscc', sa.String(length=18), nullable=False),
    sa.Column('pay_amt', sa.String(length=24), nullable=False),
    sa.Column('purpose', sa.String(length=128), nullable=False),
    sa.Column('grant_id', sa.String(length=64), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('voucher', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_sent_ms', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('voucher_no', name=op.f('pk_payment_intents')),
    sa.UniqueConstraint('caller_id', 'idem_key', name=op.f('uq_payment_intents_caller_id_idem_key'))
    )
    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_intents_uscc'), ['uscc'], unique=False)

    op.create_table('payment_outcomes',
    sa.Column('voucher_no', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('treasury_code', sa.String(length=16), nullable=False),
    sa.Column('treasury_serial', sa.String(length=64), nullable=True),
    sa.Column('pay_amt', sa.String(length=24), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('resolved_by', sa.String(length=16), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['voucher_no'], ['payment_intents.voucher_no'], name=op.f('fk_payment_outcomes_voucher_no_payment_intents')),
    sa.PrimaryKeyConstraint('voucher_no', name=op.f('pk_payment_outcomes'))
    )


def downgrade() -> None:
    op.drop_table('payment_outcomes')
    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_intents_uscc'))

    op.drop_table('payment_intents')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_state'))

    op.drop_table('idempotency_keys')
