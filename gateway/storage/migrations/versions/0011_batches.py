"""batches: batch jobs and their chunks, grants' share methods, and procrastinate's queue schema on PostgreSQL

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Grants gain `share_methods` (共享方式: api and/or batch); existing grants keep single calls only. On PostgreSQL the
job queue (procrastinate) keeps its jobs in this same database, so a batch's chunks are enqueued in the
transaction that records the batch; its schema is installed here, once.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.util import await_only


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'batch_jobs',
        sa.Column('batch_id', sa.String(length=40), nullable=False),
        sa.Column('caller_id', sa.String(length=64), nullable=False),
        sa.Column('department', sa.String(length=200), nullable=False),
        sa.Column('purpose', sa.String(length=128), nullable=False),
        sa.Column('operations', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('chunk_size', sa.Integer(), nullable=False),
        sa.Column('chunks', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('resume_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('pause_code', sa.String(length=64), nullable=True),
        sa.Column('stop_code', sa.String(length=64), nullable=True),
        sa.Column('stop_detail', sa.Text(), nullable=True),
        sa.Column('results_expired_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('batch_id'),
    )
    op.create_index('ix_batch_jobs_caller_id', 'batch_jobs', ['caller_id'])
    op.create_index('ix_batch_jobs_state', 'batch_jobs', ['state'])
    op.create_table(
        'batch_chunks',
        sa.Column('batch_id', sa.String(length=40), nullable=False),
        sa.Column('chunk_no', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('subjects', sa.LargeBinary(), nullable=True),
        sa.Column('results', sa.LargeBinary(), nullable=True),
        sa.Column('data_key_id', sa.String(length=64), nullable=False),
        sa.Column('summary', sa.JSON(none_as_null=True), nullable=True),
        sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('done_by', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['batch_id'], ['batch_jobs.batch_id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('batch_id', 'chunk_no'),
    )
    op.create_index('ix_batch_chunks_state', 'batch_chunks', ['state'])
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('share_methods', sa.JSON(), nullable=False, server_default='["api"]'))
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        installed = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").scalar()
        if not installed:
            from procrastinate.schema import SchemaManager

            # Several statements and functions in one script: asyncpg runs it by the simple query protocol.
            driver = bind.connection.driver_connection
            await_only(driver.execute(SchemaManager.get_schema()))


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('share_methods')
    op.drop_index('ix_batch_chunks_state', table_name='batch_chunks')
    op.drop_table('batch_chunks')
    op.drop_index('ix_batch_jobs_state', table_name='batch_jobs')
    op.drop_index('ix_batch_jobs_caller_id', table_name='batch_jobs')
    op.drop_table('batch_jobs')
