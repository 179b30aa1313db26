"""Official Account followers and their bindings to students (one-time codes, failed tries)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bind_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('student_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('issued_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('used_by', sa.String(length=64), nullable=True),
    sa.Column('voided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['student_id'], ['student.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_bind_code_open', 'bind_code', ['student_id', 'kind', 'used_at', 'voided_at'], unique=False)
    op.create_table('follower_binding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('openid', sa.String(length=64), nullable=False),
    sa.Column('student_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('weekly_card', sa.Boolean(), nullable=False),
    sa.Column('bound_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('code_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['code_id'], ['bind_code.id'], ),
    sa.ForeignKeyConstraint(['student_id'], ['student.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('openid')
    )
    op.create_index(op.f('ix_follower_binding_student_id'), 'follower_binding', ['student_id'], unique=False)
    op.create_index('ux_follower_binding_self', 'follower_binding', ['student_id'], unique=True,
                    postgresql_where=sa.text("kind = 'student'"), sqlite_where=sa.text("kind = 'student'"))
    op.create_table('bind_failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('openid', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_bind_failure_openid_at', 'bind_failure', ['openid', 'at'], unique=False)
    op.create_table('mp_follower',
    sa.Column('openid', sa.String(length=64), nullable=False),
    sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('following', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('openid')
    )


def downgrade() -> None:
    op.drop_table('mp_follower')
    op.drop_index('ix_bind_failure_openid_at', table_name='bind_failure')
    op.drop_table('bind_failure')
    op.drop_index('ux_follower_binding_self', table_name='follower_binding')
    op.drop_index(op.f('ix_follower_binding_student_id'), table_name='follower_binding')
    op.drop_table('follower_binding')
    op.drop_index('ix_bind_code_open', table_name='bind_code')
    op.drop_table('bind_code')
