"""console: TOTP secrets are sealed at rest (AES-GCM under a key derived from the master key), so the column widens

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

Secrets written before stay readable (the console opens an unsealed value as it is) and are sealed at their next
reset; `msjx-gateway console-users reset-totp` seals one now.
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('console_accounts', schema=None) as batch_op:
        batch_op.alter_column(
            'totp_secret', existing_type=sa.String(length=64), type_=sa.String(length=200), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table('console_accounts', schema=None) as batch_op:
        batch_op.alter_column(
            'totp_secret', existing_type=sa.String(length=200), type_=sa.String(length=64), existing_nullable=False
        )
