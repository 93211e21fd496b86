"""SQL tables (SQLModel) and the API's request/response schemas."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Dialect, LargeBinary, String, Table, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from server.states import ExperimentStatus, PodStatus, RunStatus


def utcnow() -> datetime:
    # Aware, in UTC: SQLModel's datetime columns refuse naive values and read back UTC.
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite hands stored datetimes back naive, and every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Status(TypeDecorator[StrEnum]):
    """A status column: stored as its enum's value in a VARCHAR(16), read back as the member.

    A value outside the enum is refused when written (ValueError naming it), so no row holds a
    status its state table does not know.
    """

    impl = String(16)
    cache_ok = True  # the enum class is the only argument, and it is hashable

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for conditional UPDATEs that check the rows they hit."""
    # SQLModel's class declares no __table__; SQLAlchemy sets one on every table=True model.
    return model.__table__  # type: ignore[attr-defined]


# Every table's `id` is typed `int`: None only until the row is first flushed, and every row
# read from the database, or passed on after its insert, has one.


class Experiment(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    author: str = Field(default="", max_length=100, index=True)
    preset: str = Field(max_length=64, index=True)
    # Field overrides on top of the preset, exactly as submitted.
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seeds: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    provider: str = Field(default="local", max_length=32, index=True)
    # Name of the API token's user who submitted it: may cancel it (as may any admin).
    owner: str = Field(default="", max_length=100, index=True)
    status: ExperimentStatus = Field(default=ExperimentStatus.queued, sa_type=Status(ExperimentStatus),
                                     index=True)
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

    # "trainer": the bundled trainer at `preset` + `config`; "script": the participant's own
    # train_gpt.py (ExperimentFile rows) run under torchrun with `env`.
    kind: str = Field(default="trainer", max_length=16)
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # A failed seed: "none" leaves it, "retry" runs the same seed again, "replace" runs a new
    # seed in its place; at most `max_retries` extra runs in all.
    failure_policy: str = Field(default="none", max_length=16)
    max_retries: int = 2
    # Adaptive seeding: while p >= alpha, add seeds up to `max_seeds` (None: never add).
    alpha: float = 0.01
    max_seeds: int | None = None
    priority: int = Field(default=0, index=True)  # higher starts first in the queue
    budget_usd: float | None = None  # this experiment's cap on pod dollars
    # Hardware asked of a renting provider; None: the provider's default (8 x H100 SXM).
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = None
    share_pods: bool = False  # seeds run one after another on one pod, set-up paid once
    # Ablation study: [{"name", "config"}], each run on every seed beside the control.
    variants: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Where an imported experiment came from (`caddie import records`); None if run here.
    source: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The challenge's track (server/tracks.py): "track_10min_16mb" or "track_non_record_16mb".
    # Imports: the records folder's parent; our own runs: from their limits at submission.
    track: str = Field(default="track_10min_16mb", max_length=64, index=True)
    # Imports: whether the challenge's README leaderboard lists the folder; None for our own.
    accepted: bool | None = None
    # The date the challenge's chronology counts from (the as-of-date reference): an import's
    # submission.json date (else its folder name's), our own experiment's submission time.
    record_date: datetime = Field(default_factory=utcnow, index=True)
    # A re-run of a submission (server/reproduce.py): the imported record it reproduces, if any
    # (the claims it is judged against are in `source["reproduce"]`), and the env of each
    # seed where the submission's commands differ per seed ({"42": {"NAME": "value"}}).
    reproduces_id: int | None = Field(default=None, foreign_key="experiment.id", index=True)
    seed_env: dict[str, dict[str, str]] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ExperimentFile(SQLModel, table=True):
    """A file of a bring-your-own-script experiment (train_gpt.py, requirements.txt, ...)."""

    __table_args__ = (UniqueConstraint("experiment_id", "name", name="uq_experimentfile_name"),)

    id: int = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    name: str = Field(max_length=100)  # a plain file name, never a path
    nbytes: int
    sha256: str = Field(max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Pod(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", index=True)
    provider: str = Field(max_length=32)
    name: str = Field(max_length=200, index=True)  # carries the run id: caddie-run-<id>
    external_id: str | None = Field(default=None, max_length=200)
    host: str | None = Field(default=None, max_length=255)
    port: int | None = None
    username: str | None = Field(default=None, max_length=64)
    status: PodStatus = Field(default=PodStatus.requested, sa_type=Status(PodStatus), index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    deadline_at: datetime | None = None
    terminated_at: datetime | None = None
    # Seeds of an experiment with share_pods take turns on its pods.
    experiment_id: int | None = Field(default=None, index=True)
    cost_per_hour: float | None = None  # $/hour named by the provider
    prepared_at: datetime | None = None  # data fetched and checked on the pod


class Run(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    seed: int
    status: RunStatus = Field(default=RunStatus.queued, sa_type=Status(RunStatus), index=True)
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

    variant: str = Field(default="", max_length=64)  # ablation variant; "" is the control
    retry_of: int | None = Field(default=None, foreign_key="run.id")  # the failed run it stands in for
    superseded: bool = False  # failed, and a retry or replacement stands in for it
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # e.g. slow node


class RunEvent(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    from_status: RunStatus | None = Field(default=None, sa_type=Status(RunStatus))
    to_status: RunStatus = Field(sa_type=Status(RunStatus))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class LogChunk(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "offset", name="uq_logchunk_run_offset"),)

    id: int = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    offset: int  # byte offset of text's first byte in train.log
    nbytes: int  # bytes of train.log this chunk covers (text may carry U+FFFD for bad bytes)
    text: str = Field(sa_column=Column(Text, nullable=False))  # whole lines
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    """An API token. Only its sha256 is stored; the token itself is shown once, at creation."""

    id: int = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, index=True)  # the user it stands for
    role: str = Field(default="member", max_length=16)  # "admin" | "member"
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
