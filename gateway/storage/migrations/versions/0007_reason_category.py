"""audit records: the category and the case or ticket reference of an officer's stated reason

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Opening a sealed payload states a category (complaint, inspection, incident, court_order, other) and a
reference beside the free text, so the openings themselves can be searched and reviewed by category. Both
columns stay empty for exchanges, and then are left out of the record's hash, so older records still verify.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason_category', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('reason_ref', sa.String(length=64), nullable=True))
        batch_op.create_index(
            'ix_audit_records_reason_category', ['reason_category'], unique=False,
            sqlite_where=sa.text('reason_category IS NOT NULL'),
            postgresql_where=sa.text('reason_category IS NOT NULL'),
        )


def downgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_records_reason_category')
        batch_op.drop_column('reason_ref')
        batch_op.drop_column('reason_category')
