"""本周概况 requests answered later by the scheduler (a cold digest takes longer than WeChat waits)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 14:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('overview_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_overview_request_done_at'), 'overview_request', ['done_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_overview_request_done_at'), table_name='overview_request')
    op.drop_table('overview_request')
