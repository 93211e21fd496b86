"""SQL tables (SQLModel) and the API's request/response schemas."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import JSON, Column, Dialect, LargeBinary, String, Table, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelConfig

from server import presets
from server.config import get_settings
from server.states import ExperimentStatus, PodStatus, RunStatus

SEED_LIMIT = 2**31  # seeds are non-negative int32, as torch and numpy take them


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


class ExperimentBase(SQLModel):
    """What a submitter chooses: the table's columns, and the fields ExperimentCreate takes (it
    narrows their types: trimmed, bounded, one of a few values) and ExperimentPublic shows."""

    name: str = Field(max_length=200, index=True)
    author: str = Field(default="", max_length=100, index=True)
    preset: str = Field(default="baseline", max_length=64, index=True)
    # Field overrides on top of the preset, exactly as submitted (see trainer/schema.json).
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seeds: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    provider: str = Field(default="local", max_length=32, index=True)
    # What it must beat: another experiment, or a val_bpb; neither: see server/reference.py.
    reference_experiment_id: int | None = None
    reference_bpb: float | None = None
    # "trainer": the bundled trainer at `preset` + `config`; "script": the participant's own
    # train_gpt.py (ExperimentFile rows, server/scripts.py) run under torchrun with `env`.
    kind: str = Field(default="trainer", max_length=16)
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # A failed seed: "none" leaves it, "retry" runs the same seed again, "replace" runs a new
    # seed in its place; at most `max_retries` extra runs in all.
    failure_policy: str = Field(default="none", max_length=16)
    max_retries: int = 2
    # Adaptive seeding: while p >= alpha once every seed ended, add seeds up to `max_seeds`
    # (None: never add).
    alpha: float = 0.01
    max_seeds: int | None = None
    priority: int = Field(default=0, index=True)  # higher starts first in the queue
    budget_usd: float | None = None  # this experiment's cap on pod dollars
    # Hardware asked of a renting provider; None: the provider's default (8 x H100 SXM).
    gpu_type: str | None = Field(default=None, max_length=100)
    gpu_count: int | None = None
    share_pods: bool = False  # seeds run one after another on one pod, set-up paid once
    # Ablation study: [{"name", "config"}] (a script's: [{"name", "env"}]), each run on every
    # seed beside the control.
    variants: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # A declared systems-only change (server/waiver.py): the earlier experiment whose ML this
    # one keeps; the challenge then waives the 0.005-nat test, and other checks stand in.
    systems_only_of: int | None = Field(default=None, foreign_key="experiment.id")


class Experiment(ExperimentBase, table=True):
    id: int = Field(default=None, primary_key=True)
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
    # The significance test against the reference, once finalized (server/statistics.py).
    stats: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
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
    # A re-run of a submission (server/reproduce/): the imported record it reproduces, if any
    # (the claims it is judged against are in `source["reproduce"]`), and the env of each
    # seed where the submission's commands differ per seed ({"42": {"NAME": "value"}}).
    reproduces_id: int | None = Field(default=None, foreign_key="experiment.id", index=True)
    seed_env: dict[str, dict[str, str]] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ExperimentFileBase(SQLModel):
    """A file of a bring-your-own-script experiment (train_gpt.py, requirements.txt, ...)."""

    name: str = Field(max_length=100)  # a plain file name, or a re-run's relative path
    nbytes: int
    sha256: str = Field(max_length=64)


class ExperimentFile(ExperimentFileBase, table=True):
    __table_args__ = (UniqueConstraint("experiment_id", "name", name="uq_experimentfile_name"),)

    id: int = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
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


class RunBase(SQLModel):
    """One seed of one arm: the table's columns that RunPublic shows."""

    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    seed: int
    status: RunStatus = Field(default=RunStatus.queued, sa_type=Status(RunStatus), index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))  # why it ended, if it did
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None  # trainer launched (worker's clock)
    ended_at: datetime | None = None
    cancel_requested: bool = False  # set by the API; the worker stops the trainer and ends the run
    log_offset: int = 0  # bytes of train.log stored so far (whole lines only)
    exit_code: int | None = None

    # Measured by the worker from downloaded files, or reported by the trainer.
    val_loss: float | None = None  # nats per token
    val_bpb: float | None = None  # bits per byte
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

    variant: str = Field(default="", max_length=64)  # ablation variant; "" is the control
    retry_of: int | None = Field(default=None, foreign_key="run.id")  # the failed run it stands in for
    superseded: bool = False  # failed, and a retry or replacement stands in for it
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # e.g. slow node


class Run(RunBase, table=True):
    id: int = Field(default=None, primary_key=True)

    # Lease: one worker at a time acts on a run; fence increases with every new lease.
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = None
    fence: int = 0
    next_check_at: datetime | None = Field(default=None, index=True)
    attempts: int = 0  # tries of the current step (connect retries, etc.)

    pod_id: int | None = Field(default=None, foreign_key="pod.id")
    remote_dir: str | None = Field(default=None, max_length=500)
    host_key: str | None = Field(default=None, max_length=200)  # pinned on first connect
    exited_at: datetime | None = None  # trainer exit seen by the worker
    last_log_lines: str | None = Field(default=None, sa_column=Column(Text))
    results: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class RunEventBase(SQLModel):
    """One move of a run's status, written by server/runs.py:transition() with the move."""

    from_status: RunStatus | None = Field(default=None, sa_type=Status(RunStatus))
    to_status: RunStatus = Field(sa_type=Status(RunStatus))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class RunEvent(RunEventBase, table=True):
    id: int = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)


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


# The API's request and response schemas. Their checks use the scripts' rules, and
# server.scripts reads the ExperimentFile table above: imported here, once the tables exist,
# so that either module may be imported first.
from server import scripts  # noqa: E402

MAX_SEEDS = 64
SCRIPT_PRESET = "script"  # the preset column of a script experiment (as of an imported record)

# Surrounding blanks are dropped; NUL is refused because PostgreSQL text cannot hold it.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                        pattern=r"^[^\x00]*$")]
Author = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100,
                                          pattern=r"^[^\x00]*$")]
Seed = Annotated[StrictInt, Field(ge=0, lt=SEED_LIMIT)]
MAX_VARIANTS = 16
MAX_RETRIES = 16
VariantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
GpuType = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                           pattern=r"^[A-Za-z0-9 ._()/-]+$")]


def _unicode_only(value: Any, where: str) -> Any:
    """`value` if no key or string in it holds a lone surrogate: JSON can carry one, UTF-8
    cannot, so it would be stored and then fail every response (and the run.json) after."""
    texts = [*value.keys(), *value.values()] if isinstance(value, dict) else (
        value if isinstance(value, list) else [value])
    for item in texts:
        if isinstance(item, dict | list):
            _unicode_only(item, where)
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ValueError(f"{where}: not valid Unicode text (a lone surrogate)") from None
    return value


def _checked_config(value: dict[str, Any]) -> dict[str, Any]:
    return presets.check_config(_unicode_only(value, "config"))


def _unique_seeds(value: list[int]) -> list[int]:
    repeated = sorted({s for s in value if value.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must be unique; repeated: {repeated}")
    return value


# A submission's field overrides (config.<field> named in errors), a script's environment
# (env.<NAME>), and a list of seeds to run: the same checks wherever a schema takes them.
ConfigOverrides = Annotated[dict[str, Any], AfterValidator(_checked_config)]
ScriptEnv = Annotated[dict[str, str], AfterValidator(scripts.check_env)]
Seeds = Annotated[list[Seed], Field(min_length=1, max_length=MAX_SEEDS), AfterValidator(_unique_seeds)]


class VariantSpec(BaseModel):
    """One arm of an ablation study: config fields changed from the control (a trainer
    experiment), or environment variables changed from the control's env (a script experiment)."""

    model_config = ConfigDict(extra="forbid")

    name: VariantName
    config: ConfigOverrides = Field(default_factory=dict)
    env: ScriptEnv = Field(default_factory=dict)

    def check_kind(self, kind: str) -> None:
        """A trainer arm changes config, a script arm env; an arm that changes nothing is refused."""
        used, other = ("env", "config") if kind == "script" else ("config", "env")
        if getattr(self, other):
            raise ValueError(f"variants.{self.name}.{other}: a {kind} experiment's variants set {used}, "
                             f"not {other}")
        if not getattr(self, used):
            raise ValueError(f"variants.{self.name}.{used}: a variant must change at least one "
                             f"{'variable' if used == 'env' else 'field'} from the control")


# Properties to receive on creation: ExperimentBase's, each narrowed to what a submission may
# hold, and the script's files.
class ExperimentCreate(ExperimentBase):
    model_config = SQLModelConfig(extra="forbid")

    name: Name
    author: Author = ""
    config: ConfigOverrides = Field(default_factory=dict)
    seeds: Seeds
    provider: Literal["local", "ssh", "runpod"] = "local"
    reference_experiment_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    reference_bpb: float | None = Field(default=None, gt=0, lt=10)
    kind: Literal["trainer", "script"] = "trainer"
    env: ScriptEnv = Field(default_factory=dict)
    failure_policy: Literal["none", "retry", "replace"] = "none"
    max_retries: int = Field(default=2, ge=0, le=MAX_RETRIES)
    alpha: float = Field(default=0.01, gt=0, le=0.5)
    max_seeds: int | None = Field(default=None, ge=1, le=MAX_SEEDS)
    priority: int = Field(default=0, ge=-100, le=100)
    budget_usd: float | None = Field(default=None, ge=0, le=1_000_000)
    gpu_type: GpuType | None = None
    gpu_count: int | None = Field(default=None, ge=1, le=8)
    # Narrowed to the arms' schema; stored as the plain dicts ExperimentBase types (mypy holds a
    # field's type to its base's, pydantic validates the narrower one).
    variants: list[VariantSpec] = Field(default_factory=list, max_length=MAX_VARIANTS)  # type: ignore[assignment]
    # A systems-only change of this finished experiment: the 0.005-nat test is waived and
    # server/waiver.py checks the ML, score and speed against it instead.
    systems_only_of: int | None = Field(default=None, ge=1, le=2**31 - 1)
    files: dict[str, str] = Field(default_factory=dict)  # a script's files: name -> text

    @field_validator("files")
    @classmethod
    def _valid_files(cls, value: dict[str, str]) -> dict[str, str]:
        return scripts.check_files(value)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {repeated}")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "ExperimentCreate":
        # A re-run's files (relative paths, any bytes, its own entry point) are checked by
        # `scripts.check_carried` and stored apart: its spec comes with context files_checked.
        carried = bool((info.context or {}).get("files_checked"))
        if self.kind == "script":
            if scripts.ENTRYPOINT not in self.files and not carried:
                raise ValueError(f"files: a script experiment needs {scripts.ENTRYPOINT}")
            if self.config:
                raise ValueError("config: a script experiment takes env, not config")
        elif self.files or self.env:
            raise ValueError("files: only a script experiment (kind 'script') takes files and env")
        for variant in self.variants:
            variant.check_kind(self.kind)
        if self.max_seeds is not None and self.max_seeds < len(self.seeds):
            raise ValueError(f"max_seeds: must be at least the {len(self.seeds)} seeds given")
        if self.kind == "trainer":
            self._check_rules()
        return self

    def _check_rules(self) -> None:
        """The trainer's cross-field rules, for the control and each variant on top of it,
        so a combination the trainer would refuse is a 422 now, not a failed run later."""
        presets.check_combination(self.preset, self.config)
        for variant in self.variants:
            try:
                presets.check_combination(self.preset, {**self.config, **variant.config})
            except ValueError as exc:
                raise ValueError(f"variants.{variant.name}.{exc}") from None

    @field_validator("provider")
    @classmethod
    def _provider_configured(cls, value: str) -> str:
        """ssh runs on the operator's hosts: with none configured every seed would fail at
        provisioning, so refuse now."""
        if value == "ssh" and not get_settings().ssh_hosts.strip():
            raise ValueError("provider: 'ssh' has no hosts here: the operator lists them in "
                             "CADDIE_SSH_HOSTS (user@host:port, comma-separated); "
                             "pick 'local' or 'runpod', or ask for hosts")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return presets.check_preset(value)


class SeedsAdd(BaseModel):
    """Seeds to add to an experiment: each runs in every arm."""

    model_config = ConfigDict(extra="forbid")

    seeds: Seeds


class FilePublic(ExperimentFileBase):
    pass


# Properties to return via API.
class ExperimentPublic(ExperimentBase):
    id: int
    owner: str  # the token user who submitted it
    status: ExperimentStatus
    created_at: datetime
    finished_at: datetime | None
    n_succeeded: int
    mean_val_bpb: float | None
    std_val_bpb: float | None
    eligible: bool
    reasons: list[str]
    stats: dict[str, Any] | None  # the significance test against the reference, when finished
    files: list[FilePublic] = Field(default_factory=list)  # a script experiment's files
    source: dict[str, Any] | None  # where an imported experiment came from
    track: str  # track_10min_16mb (the record track) or track_non_record_16mb
    accepted: bool | None  # an import: listed on the challenge's leaderboard; None: our own
    record_date: datetime  # an import's record date; our own: its submission time
    reproduces_id: int | None = None  # the imported record a re-run reproduces
    seed_env: dict[str, dict[str, str]] = Field(default_factory=dict)  # a re-run's env per seed
    cost_usd: float | None = None  # dollars its pods have cost so far

    @model_validator(mode="after")
    def _as_shown(self) -> "ExperimentPublic":
        """A script experiment is labelled `script` whatever an older row's preset column holds,
        and env values whose names look like secrets are hidden (server.scripts.shown_env)."""
        if self.kind == "script":
            self.preset = SCRIPT_PRESET
        self.env = scripts.shown_env(self.env)
        self.variants = [{**v, "env": scripts.shown_env(v["env"])} if v.get("env") else v for v in self.variants]
        return self


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int  # matching experiments over all pages


class RunPublic(RunBase):
    id: int
    cost_usd: float | None = None  # dollars its pod has cost so far


class RunEventPublic(RunEventBase):
    id: int


class ExperimentPublicWithRuns(ExperimentPublic):
    runs: list[RunPublic]


class RunPublicWithEvents(RunPublic):
    last_log_lines: str | None
    results: dict[str, Any] | None  # results.json as the trainer wrote it
    events: list[RunEventPublic]
