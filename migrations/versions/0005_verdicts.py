"""Verdicts as the challenge gives them: each experiment's track, whether the challenge
accepted an imported record, and the date its chronology counts from.

Revision ID: 0005_verdicts
Revises: 0005_reproduce
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_verdicts'
down_revision: str | None = '0005_reproduce'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_TRACK = 'track_10min_16mb'
NON_RECORD_TRACK = 'track_non_record_16mb'


def upgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('track', sa.String(length=64), nullable=False,
                                      server_default=RECORD_TRACK))
        batch_op.add_column(sa.Column('accepted', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('record_date', sa.DateTime(timezone=True), nullable=True))
    # Rows already there: the date is the creation time (an import's was its record's date),
    # and an import's track is the first part of its source key "<track>/<folder>".
    bind = op.get_bind()
    experiment = sa.table('experiment', sa.column('id', sa.Integer()),
                          sa.column('created_at', sa.DateTime(timezone=True)),
                          sa.column('record_date', sa.DateTime(timezone=True)),
                          sa.column('provider', sa.String()), sa.column('source', sa.JSON()),
                          sa.column('track', sa.String()))
    bind.execute(experiment.update().values(record_date=experiment.c.created_at))
    rows = bind.execute(sa.select(experiment.c.id, experiment.c.source)
                        .where(experiment.c.provider == 'import')).all()
    for row_id, source in rows:
        key = source.get('key', '') if isinstance(source, dict) else ''
        if key.startswith(NON_RECORD_TRACK + '/'):
            bind.execute(experiment.update().where(experiment.c.id == row_id)
                         .values(track=NON_RECORD_TRACK))
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.alter_column('record_date', existing_type=sa.DateTime(timezone=True),
                              nullable=False)
        batch_op.create_index(batch_op.f('ix_experiment_track'), ['track'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_record_date'), ['record_date'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_record_date'))
        batch_op.drop_index(batch_op.f('ix_experiment_track'))
        batch_op.drop_column('record_date')
        batch_op.drop_column('accepted')
        batch_op.drop_column('track')
