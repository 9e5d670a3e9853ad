"""node keys: the checkpoint key each node registers, with its algorithm, and the operator's pins and revocations

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

`audit_signers` becomes the table of node keys: every node registers its checkpoint public key when it first
starts (status `self-registered`); an operator pins it (`pinned`, by whom, when, and the pin signed by the
pinning node's own checkpoint key) or revokes it (`revoked`, by whom, when, and the chain's last checkpoint
signed by that key at that moment, up to which its older checkpoints stay valid). Existing rows are
self-registered Ed25519 keys, which is what every node wrote before.
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_signers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('algorithm', sa.String(length=16), nullable=False, server_default='ed25519'))
        batch_op.add_column(
            sa.Column('status', sa.String(length=16), nullable=False, server_default='self-registered')
        )
        batch_op.add_column(sa.Column('pinned_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('pinned_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pin_signer', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('pin_signature', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('revoked_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('revoked_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('revoked_height', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('revoked_head', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_signers', schema=None) as batch_op:
        for name in (
            'revoked_head', 'revoked_height', 'revoked_ms', 'revoked_by',
            'pin_signature', 'pin_signer', 'pinned_ms', 'pinned_by', 'status', 'algorithm',
        ):
            batch_op.drop_column(name)
