"""Validation policies, bring-your-own scripts, ablations, imports, shared pods and prices.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def upgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='trainer'))
        batch_op.add_column(sa.Column('env', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('failure_policy', sa.String(length=16), nullable=False,
                                      server_default='none'))
        batch_op.add_column(sa.Column('max_retries', sa.Integer(), nullable=False, server_default='2'))
        batch_op.add_column(sa.Column('alpha', sa.Float(), nullable=False, server_default='0.01'))
        batch_op.add_column(sa.Column('max_seeds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('budget_usd', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('gpu_type', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('gpu_count', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('share_pods', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('variants', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('source', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_experiment_priority'), ['priority'], unique=False)

    op.create_table(
        'experimentfile',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('nbytes', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['experiment_id'], ['experiment.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('experiment_id', 'name', name='uq_experimentfile_name'),
    )
    with op.batch_alter_table('experimentfile', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experimentfile_experiment_id'), ['experiment_id'],
                              unique=False)

    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.add_column(sa.Column('experiment_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('cost_per_hour', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('prepared_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_pod_experiment_id'), ['experiment_id'], unique=False)

    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('retry_of', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('superseded', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('flags', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.create_foreign_key('fk_run_retry_of_run', 'run', ['retry_of'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_constraint('fk_run_retry_of_run', type_='foreignkey')
        batch_op.drop_column('flags')
        batch_op.drop_column('superseded')
        batch_op.drop_column('retry_of')
        batch_op.drop_column('variant')

    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pod_experiment_id'))
        batch_op.drop_column('prepared_at')
        batch_op.drop_column('cost_per_hour')
        batch_op.drop_column('experiment_id')

    with op.batch_alter_table('experimentfile', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experimentfile_experiment_id'))
    op.drop_table('experimentfile')

    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_priority'))
        for name in ('source', 'variants', 'share_pods', 'gpu_count', 'gpu_type', 'budget_usd',
                     'priority', 'max_seeds', 'alpha', 'max_retries', 'failure_policy', 'env',
                     'kind'):
            batch_op.drop_column(name)
