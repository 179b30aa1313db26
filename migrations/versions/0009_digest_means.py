"""the digest's per-week domain means per scope (college, department, class)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 19:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('digest_means',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('scope_id', sa.Integer(), nullable=False),
    sa.Column('semester_key', sa.String(length=16), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('catalogue', sa.String(length=64), nullable=False),
    sa.Column('means', sa.String(length=64), nullable=False),
    sa.Column('total', sa.Float(), nullable=True),
    sa.Column('students', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('scope', 'scope_id', 'semester_key', 'day')
    )


def downgrade() -> None:
    op.drop_table('digest_means')
