"""weekly digest state, and an index of revoked score entries

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('digest_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('semester_key', sa.String(length=16), nullable=False),
    sa.Column('cutoff', sa.Date(), nullable=False),
    sa.Column('max_entry_id', sa.Integer(), nullable=False),
    sa.Column('pending', sa.Text(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('catalogue', sa.String(length=64), nullable=False),
    sa.Column('pairs', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('semester_key', 'cutoff')
    )
    if op.get_bind().dialect.name == 'postgresql':
        # stored as written: compressing the 5 MB record costs more than writing it
        op.execute('ALTER TABLE digest_state ALTER COLUMN data SET STORAGE EXTERNAL')
    with op.batch_alter_table('score_entry', schema=None) as batch_op:
        batch_op.create_index('ix_score_revoked', ['revoked_at'], unique=False,
                              postgresql_where=sa.text('revoked_at IS NOT NULL'),
                              sqlite_where=sa.text('revoked_at IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('score_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_score_revoked', postgresql_where=sa.text('revoked_at IS NOT NULL'),
                            sqlite_where=sa.text('revoked_at IS NOT NULL'))

    op.drop_table('digest_state')
