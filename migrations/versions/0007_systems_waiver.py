"""Systems-only submissions: the earlier experiment whose ML an experiment declares it keeps
unchanged, so that the challenge's 0.005-nat requirement is waived for it (server/waiver.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('systems_only_of', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_experiment_systems_only_of', 'experiment',
                                    ['systems_only_of'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_constraint('fk_experiment_systems_only_of', type_='foreignkey')
        batch_op.drop_column('systems_only_of')
