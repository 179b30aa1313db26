"""risk evaluation queue: recordings waiting for the early-warning check

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('risk_evaluation_queue',
    sa.Column('batch_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['recording_batch.id'], ),
    sa.PrimaryKeyConstraint('batch_id')
    )


def downgrade() -> None:
    op.drop_table('risk_evaluation_queue')
