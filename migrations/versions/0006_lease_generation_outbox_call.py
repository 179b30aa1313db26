"""lease generation (fencing) and the payload of each outbound call (re-sent under duplicate check)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('lease', sa.Column('generation', sa.Integer(), server_default='0', nullable=False))
    op.create_table('outbox_call',
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('ref')
    )


def downgrade() -> None:
    op.drop_table('outbox_call')
    op.drop_column('lease', 'generation')
