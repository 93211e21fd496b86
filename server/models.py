"""SQL tables (SQLModel) and the API's request/response schemas."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    # Aware, in UTC: SQLModel's datetime columns refuse naive values and read back UTC.
    return datetime.now(UTC)


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    author: str = Field(default="", max_length=100, index=True)
    preset: str = Field(max_length=64, index=True)
    # Field overrides on top of the preset, exactly as submitted.
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seeds: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    provider: str = Field(default="local", max_length=32, index=True)
    # Name of the API token's user who submitted it: may cancel it (as may any admin).
    owner: str = Field(default="", max_length=100, index=True)
    status: str = Field(default="queued", max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None
    # Filled once every seed has ended.
    n_succeeded: int = 0
    mean_val_bpb: float | None = None
    std_val_bpb: float | None = None
    eligible: bool = False
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # What it must beat: another experiment, or a val_bpb; neither: see server/reference.py.
    reference_experiment_id: int | None = None
    reference_bpb: float | None = None
    # The significance test against the reference, once finalized (server/statistics.py).
    stats: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class Pod(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", index=True)
    provider: str = Field(max_length=32)
    name: str = Field(max_length=200, index=True)  # carries the run id: caddie-run-<id>
    external_id: str | None = Field(default=None, max_length=200)
    host: str | None = Field(default=None, max_length=255)
    port: int | None = None
    username: str | None = Field(default=None, max_length=64)
    status: str = Field(default="requested", max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    deadline_at: datetime | None = None
    terminated_at: datetime | None = None


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    seed: int
    status: str = Field(default="queued", max_length=16, index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))  # why it ended, if it did
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None  # trainer launched (worker's clock)
    ended_at: datetime | None = None

    # Lease: one worker at a time acts on a run; fence increases with every new lease.
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = None
    fence: int = 0
    next_check_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0  # tries of the current step (connect retries, etc.)
    cancel_requested: bool = False  # set by the API; the worker stops the trainer and ends the run

    pod_id: int | None = Field(default=None, foreign_key="pod.id")
    remote_dir: str | None = Field(default=None, max_length=500)
    host_key: str | None = Field(default=None, max_length=200)  # pinned on first connect
    log_offset: int = 0  # bytes of train.log stored so far (whole lines only)
    exit_code: int | None = None
    exited_at: datetime | None = None  # trainer exit seen by the worker
    last_log_lines: str | None = Field(default=None, sa_column=Column(Text))

    # Measured by the worker from downloaded files, or reported by the trainer.
    val_loss: float | None = None
    val_bpb: float | None = None
    pre_quant_val_bpb: float | None = None
    steps: int | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    code_bytes: int | None = None
    model_bytes: int | None = None
    bytes_total: int | None = None
    artifact_sha256: str | None = Field(default=None, max_length=64)
    code_sha256: str | None = Field(default=None, max_length=64)
    val_tokens: int | None = None
    gpu_name: str | None = Field(default=None, max_length=200)
    gpu_count: int | None = None
    eligible: bool | None = None
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    results: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class RunEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class LogChunk(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "offset", name="uq_logchunk_run_offset"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    offset: int  # byte offset of text's first byte in train.log
    nbytes: int  # bytes of train.log this chunk covers (text may carry U+FFFD for bad bytes)
    text: str = Field(sa_column=Column(Text, nullable=False))  # whole lines
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """An API token. Only its sha256 is stored; the token itself is shown once, at creation."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, index=True)  # the user it stands for
    role: str = Field(default="member", max_length=16)  # "admin" | "member"
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
