"""caller certificates: client certificates (by fingerprint, or by issuing CA) that authenticate a caller over mTLS

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'caller_certs',
        sa.Column('cert_id', sa.String(length=40), nullable=False),
        sa.Column('caller_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('ca_pem', sa.Text(), nullable=True),
        sa.Column('subject_cn', sa.String(length=256), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['caller_id'], ['callers.caller_id']),
        sa.PrimaryKeyConstraint('cert_id'),
    )
    with op.batch_alter_table('caller_certs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_caller_certs_caller_id'), ['caller_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_caller_certs_fingerprint'), ['fingerprint'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('caller_certs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_caller_certs_fingerprint'))
        batch_op.drop_index(batch_op.f('ix_caller_certs_caller_id'))
    op.drop_table('caller_certs')
