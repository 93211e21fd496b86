"""Re-runs of submissions: the experiment a re-run reproduces and its per-seed environment.

Revision ID: 0005_reproduce
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_reproduce'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reproduces_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('seed_env', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.create_index(batch_op.f('ix_experiment_reproduces_id'), ['reproduces_id'], unique=False)
        batch_op.create_foreign_key('fk_experiment_reproduces_id', 'experiment', ['reproduces_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_constraint('fk_experiment_reproduces_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_experiment_reproduces_id'))
        batch_op.drop_column('seed_env')
        batch_op.drop_column('reproduces_id')
