"""upstream SOAP auth: the SOAP headers and WS-Security a registered upstream demands, secrets by reference only

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('upstreams', schema=None) as batch_op:
        batch_op.add_column(sa.Column('soap_auth', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('upstreams', schema=None) as batch_op:
        batch_op.drop_column('soap_auth')
