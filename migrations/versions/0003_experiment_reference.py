"""What an experiment must beat, and its significance test once finalized.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reference_experiment_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reference_bpb', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('stats', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_column('stats')
        batch_op.drop_column('reference_bpb')
        batch_op.drop_column('reference_experiment_id')
