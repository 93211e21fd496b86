"""Initial tables: experiment, pod, run, runevent, logchunk.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

pod.run_id and run.pod_id point at each other, so pod is created first and its foreign
key to run is added once run exists.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POD_RUN_FK = 'pod_run_id_fkey'  # PostgreSQL's own name for it


def upgrade() -> None:
    op.create_table('experiment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('author', sa.String(length=100), nullable=False),
    sa.Column('preset', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('seeds', sa.JSON(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('n_succeeded', sa.Integer(), nullable=False),
    sa.Column('mean_val_bpb', sa.Float(), nullable=True),
    sa.Column('std_val_bpb', sa.Float(), nullable=True),
    sa.Column('eligible', sa.Boolean(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_author'), ['author'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_preset'), ['preset'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_provider'), ['provider'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiment_status'), ['status'], unique=False)

    op.create_table('pod',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('username', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('terminated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pod_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_pod_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pod_status'), ['status'], unique=False)

    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fence', sa.Integer(), nullable=False),
    sa.Column('next_check_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('pod_id', sa.Integer(), nullable=True),
    sa.Column('remote_dir', sa.String(length=500), nullable=True),
    sa.Column('host_key', sa.String(length=200), nullable=True),
    sa.Column('log_offset', sa.Integer(), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('exited_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_log_lines', sa.Text(), nullable=True),
    sa.Column('val_loss', sa.Float(), nullable=True),
    sa.Column('val_bpb', sa.Float(), nullable=True),
    sa.Column('pre_quant_val_bpb', sa.Float(), nullable=True),
    sa.Column('steps', sa.Integer(), nullable=True),
    sa.Column('train_time_s', sa.Float(), nullable=True),
    sa.Column('eval_time_s', sa.Float(), nullable=True),
    sa.Column('code_bytes', sa.Integer(), nullable=True),
    sa.Column('model_bytes', sa.Integer(), nullable=True),
    sa.Column('bytes_total', sa.Integer(), nullable=True),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=True),
    sa.Column('code_sha256', sa.String(length=64), nullable=True),
    sa.Column('val_tokens', sa.Integer(), nullable=True),
    sa.Column('gpu_name', sa.String(length=200), nullable=True),
    sa.Column('gpu_count', sa.Integer(), nullable=True),
    sa.Column('eligible', sa.Boolean(), nullable=True),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiment.id'], ),
    sa.ForeignKeyConstraint(['pod_id'], ['pod.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_experiment_id'), ['experiment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_next_check_at'), ['next_check_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_status'), ['status'], unique=False)

    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.create_foreign_key(POD_RUN_FK, 'run', ['run_id'], ['id'])

    op.create_table('logchunk',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.Column('nbytes', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'offset', name='uq_logchunk_run_offset')
    )
    with op.batch_alter_table('logchunk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_logchunk_run_id'), ['run_id'], unique=False)

    op.create_table('runevent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runevent', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runevent_run_id'), ['run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('runevent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runevent_run_id'))

    op.drop_table('runevent')
    with op.batch_alter_table('logchunk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_logchunk_run_id'))

    op.drop_table('logchunk')
    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.drop_constraint(POD_RUN_FK, type_='foreignkey')

    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_status'))
        batch_op.drop_index(batch_op.f('ix_run_next_check_at'))
        batch_op.drop_index(batch_op.f('ix_run_experiment_id'))

    op.drop_table('run')
    with op.batch_alter_table('pod', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pod_status'))
        batch_op.drop_index(batch_op.f('ix_pod_run_id'))
        batch_op.drop_index(batch_op.f('ix_pod_name'))

    op.drop_table('pod')
    with op.batch_alter_table('experiment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_status'))
        batch_op.drop_index(batch_op.f('ix_experiment_provider'))
        batch_op.drop_index(batch_op.f('ix_experiment_preset'))
        batch_op.drop_index(batch_op.f('ix_experiment_name'))
        batch_op.drop_index(batch_op.f('ix_experiment_created_at'))
        batch_op.drop_index(batch_op.f('ix_experiment_author'))

    op.drop_table('experiment')
