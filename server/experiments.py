"""Experiments: a trainer config run once per seed. Create, read, cancel and finalize them.

Service layer: takes a Session, raises `server.errors` types, knows nothing of HTTP.
Writes commit here, and the broker is told only after the commit, because the database
is the source of truth and a lost message is picked up by the periodic reconcile.
"""

import logging
import statistics
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import func, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from server import ablation, costs, notify, policies, presets, reference, scripts, tracks
from server.config import Settings, get_settings
from server.eligibility import MAX_BYTES_TOTAL
from server.errors import Conflict, InvalidTransition, LeaseLost, NotFound
from server.models import Experiment, Run, RunEvent, table_of, utcnow
from server.queue import enqueue_advance
from server.runs import get_run, transition, transition_free, update_run
from server.states import FINAL_RUN_STATUSES, ExperimentStatus, RunStatus, experiment_sources
from server.statistics import Significance, bytes_per_token

log = logging.getLogger(__name__)

MIN_RECORD_SEEDS = 3  # the challenge asks for several seeds; 3 is the usual count
MAX_SEEDS = 64
SCRIPT_PRESET = "script"  # the preset column of a script experiment (as of an imported record)
FINISHED_EXPERIMENT_STATUSES = (ExperimentStatus.finished, ExperimentStatus.cancelled)

# Surrounding blanks are dropped; NUL is refused because PostgreSQL text cannot hold it.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                        pattern=r"^[^\x00]*$")]
Author = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100,
                                          pattern=r"^[^\x00]*$")]
Seed = Annotated[StrictInt, Field(ge=0, lt=policies.SEED_LIMIT)]
MAX_VARIANTS = 16
MAX_RETRIES = 16
VariantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
GpuType = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                           pattern=r"^[A-Za-z0-9 ._()/-]+$")]


class VariantSpec(BaseModel):
    """One arm of an ablation study: config fields changed from the control (a trainer
    experiment), or environment variables changed from the control's env (a script experiment)."""

    model_config = ConfigDict(extra="forbid")

    name: VariantName
    config: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _valid_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        return presets.check_config(_unicode_only(value, "config"))

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        return scripts.check_env(value)

    def check_kind(self, kind: str) -> None:
        """A trainer arm changes config, a script arm env; an arm that changes nothing is refused."""
        used, other = ("env", "config") if kind == "script" else ("config", "env")
        if getattr(self, other):
            raise ValueError(f"variants.{self.name}.{other}: a {kind} experiment's variants set {used}, "
                             f"not {other}")
        if not getattr(self, used):
            raise ValueError(f"variants.{self.name}.{used}: a variant must change at least one "
                             f"{'variable' if used == 'env' else 'field'} from the control")


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


# Properties to receive on creation.
class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    author: Author = ""
    preset: str = "baseline"
    # Field overrides on top of the preset (see trainer/schema.json).
    config: dict[str, Any] = Field(default_factory=dict)
    seeds: list[Seed] = Field(min_length=1, max_length=MAX_SEEDS)
    provider: Literal["local", "ssh", "runpod"] = "local"
    # What it must beat (server/reference.py): an experiment's seeds, or a val_bpb.
    reference_experiment_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    reference_bpb: float | None = Field(default=None, gt=0, lt=10)

    # "script": the participant's own train_gpt.py (server/scripts.py), run with `env`.
    kind: Literal["trainer", "script"] = "trainer"
    files: dict[str, str] = Field(default_factory=dict)  # file name -> text
    env: dict[str, str] = Field(default_factory=dict)
    # A failed seed: left as is, run again, or replaced by a new seed; `max_retries` extra runs.
    failure_policy: Literal["none", "retry", "replace"] = "none"
    max_retries: int = Field(default=2, ge=0, le=MAX_RETRIES)
    # While the test's p >= alpha once every seed ended, add seeds up to `max_seeds`.
    alpha: float = Field(default=0.01, gt=0, le=0.5)
    max_seeds: int | None = Field(default=None, ge=1, le=MAX_SEEDS)
    priority: int = Field(default=0, ge=-100, le=100)
    budget_usd: float | None = Field(default=None, ge=0, le=1_000_000)
    gpu_type: GpuType | None = None
    gpu_count: int | None = Field(default=None, ge=1, le=8)
    share_pods: bool = False
    variants: list[VariantSpec] = Field(default_factory=list, max_length=MAX_VARIANTS)

    @field_validator("files")
    @classmethod
    def _valid_files(cls, value: dict[str, str]) -> dict[str, str]:
        return scripts.check_files(value)

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        return scripts.check_env(value)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {repeated}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentCreate":
        if self.kind == "script":
            if scripts.ENTRYPOINT not in self.files:
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

    @field_validator("config")
    @classmethod
    def _valid_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        return presets.check_config(_unicode_only(value, "config"))

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds must be unique; repeated: {repeated}")
        return value


class SeedsAdd(BaseModel):
    """Seeds to add to an experiment: each runs in every arm."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[Seed] = Field(min_length=1, max_length=MAX_SEEDS)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        return ExperimentCreate._unique_seeds(value)


class FilePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    nbytes: int
    sha256: str


# Properties to return via API.
class ExperimentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    author: str
    preset: str
    config: dict[str, Any]
    seeds: list[int]
    provider: str
    owner: str  # the token user who submitted it
    reference_experiment_id: int | None
    reference_bpb: float | None
    stats: dict[str, Any] | None  # the significance test against the reference, when finished
    status: str
    created_at: datetime
    finished_at: datetime | None
    n_succeeded: int
    mean_val_bpb: float | None
    std_val_bpb: float | None
    eligible: bool
    reasons: list[str]
    kind: str
    env: dict[str, str]
    files: list[FilePublic] = Field(default_factory=list)  # a script experiment's files
    failure_policy: str
    max_retries: int
    alpha: float
    max_seeds: int | None
    priority: int
    budget_usd: float | None
    gpu_type: str | None
    gpu_count: int | None
    share_pods: bool
    variants: list[dict[str, Any]]
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


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    experiment_id: int
    seed: int
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    cancel_requested: bool
    log_offset: int  # bytes of train.log stored so far
    exit_code: int | None
    val_loss: float | None  # nats per token
    val_bpb: float | None  # bits per byte
    pre_quant_val_bpb: float | None
    steps: int | None
    train_time_s: float | None
    eval_time_s: float | None
    code_bytes: int | None
    model_bytes: int | None
    bytes_total: int | None
    artifact_sha256: str | None
    code_sha256: str | None
    val_tokens: int | None
    gpu_name: str | None
    gpu_count: int | None
    eligible: bool | None
    reasons: list[str]
    variant: str  # ablation variant; "" is the control
    retry_of: int | None  # the failed run this one stands in for
    superseded: bool  # failed, and a retry or replacement stands in for it
    flags: list[str]  # informational, e.g. a slow node
    cost_usd: float | None = None  # dollars its pod has cost so far


class RunEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    from_status: str | None
    to_status: str
    reason: str | None
    created_at: datetime


class ExperimentPublicWithRuns(ExperimentPublic):
    runs: list[RunPublic]


class RunPublicWithEvents(RunPublic):
    last_log_lines: str | None
    results: dict[str, Any] | None  # results.json as the trainer wrote it
    events: list[RunEventPublic]


def provider_refusal(provider: str, *, admin: bool, settings: Settings) -> tuple[int, str] | None:
    """(HTTP status, message) when this principal may not run on `provider`, else None: the local provider runs code on the
    server's own host, so it is off unless the operator turns it on, and then for admins only
    unless CADDIE_LOCAL_PROVIDER=members (docs/security.md)."""
    if provider != "local" or settings.local_provider == "members":
        return None
    if settings.local_provider == "off":
        return 422, ("provider: the local provider is off on this server (CADDIE_LOCAL_PROVIDER=off); "
                     "use ssh or runpod")
    if not admin:
        return 403, ("provider: the local provider is for admins on this server "
                     "(CADDIE_LOCAL_PROVIDER=admin); use ssh or runpod")
    return None


def run_count(spec: ExperimentCreate) -> int:
    """Runs the spec queues at once: every seed in the control and each variant."""
    return len(spec.seeds) * (1 + len(spec.variants))


def added_runs(session: Session, experiment_id: int, seeds: list[int]) -> int:
    """Runs that adding `seeds` queues: each seed in every arm."""
    return len(seeds) * len(policies.arms(get_experiment(session, experiment_id)))


def create_experiment(session: Session, spec: ExperimentCreate, *, owner: str = "") -> Experiment:
    """Store the experiment with one queued run per seed (and per ablation variant), then
    wake each run."""
    fields = spec.model_dump(exclude={"files"})
    if spec.kind == "script":  # a participant's script runs no preset: label it as what it is
        fields["preset"] = SCRIPT_PRESET
    # A stored arm keeps what it changes: {"name", "config"} or, for a script, {"name", "env"}.
    fields["variants"] = [{"name": v.name, **({"env": v.env} if spec.kind == "script" else {"config": v.config})}
                          for v in spec.variants]
    track = tracks.from_limits(kind=spec.kind, preset=spec.preset, config=spec.config, env=spec.env,
                               gpu_count=spec.gpu_count)
    experiment = Experiment(**fields, owner=owner, track=track)
    experiment.record_date = experiment.created_at
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    scripts.store_files(session, experiment.id, spec.files)
    runs = [Run(experiment_id=experiment.id, seed=seed, variant=arm)
            for seed in spec.seeds for arm in policies.arms(experiment)]
    policies.queue_runs(session, runs)
    session.commit()
    for run in runs:
        _wake(run.id)
    session.refresh(experiment)
    return experiment


def list_experiments(
    session: Session,
    *,
    limit: int,
    offset: int,
    author: str | None = None,
    status: ExperimentStatus | None = None,
) -> tuple[list[Experiment], int]:
    """Newest first, with the count of all matches."""
    conditions = []
    if author is not None:
        conditions.append(Experiment.author == author)
    if status is not None:
        conditions.append(Experiment.status == status.value)
    count = session.exec(select(func.count()).select_from(Experiment).where(*conditions)).one()
    page = session.exec(
        select(Experiment).where(*conditions)
        .order_by(col(Experiment.created_at).desc(), col(Experiment.id).desc())
        .offset(offset).limit(limit)
    ).all()
    return list(page), count


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def list_runs(session: Session, experiment_id: int) -> list[Run]:
    """The experiment's runs in the order of its seeds."""
    return list(session.exec(
        select(Run).where(Run.experiment_id == experiment_id).order_by(col(Run.id))
    ).all())


def list_run_events(session: Session, run_id: int) -> list[RunEvent]:
    return list(session.exec(
        select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id))
    ).all())


def experiment_with_runs(session: Session, experiment: Experiment) -> ExperimentPublicWithRuns:
    """The experiment as the API shows it, with its runs."""
    assert experiment.id is not None
    public = ExperimentPublic.model_validate(experiment)
    public.files = [FilePublic.model_validate(f) for f in scripts.list_files(session, experiment.id, content=False)]
    rows = list_runs(session, experiment.id)
    run_costs = costs.run_costs(session, rows)
    public.cost_usd = costs.costs_by_experiment(session, [experiment.id]).get(experiment.id)
    runs = [RunPublic.model_validate(run).model_copy(update={"cost_usd": run_costs[run.id]})
            for run in rows]
    return ExperimentPublicWithRuns(**dict(public), runs=runs)


def run_with_events(session: Session, run_id: int) -> RunPublicWithEvents:
    """The run as the API shows it, with its status changes; 404 if unknown."""
    run = get_run(session, run_id)
    events = [RunEventPublic.model_validate(e) for e in list_run_events(session, run_id)]
    return RunPublicWithEvents(**dict(RunPublic.model_validate(run)),
                               last_log_lines=run.last_log_lines, results=run.results,
                               events=events).model_copy(
        update={"cost_usd": costs.run_cost(session, run)})


def add_seeds(session: Session, experiment_id: int, seeds: list[int]) -> Experiment:
    """Queue one run per new seed in every arm, and wake them. A finished experiment opens
    again (running, its results cleared until the new seeds end); 409 if it was cancelled.

    Raises ValueError naming `seeds` when a seed is not a new int32 seed (checked under the
    experiment's row lock, so two callers cannot add the same seed)."""
    seeds = _checked_seeds(seeds)
    experiment = _locked_experiment(session, experiment_id)
    runs = list_runs(session, experiment_id)
    cancelling = any(run.cancel_requested and RunStatus(run.status) not in FINAL_RUN_STATUSES
                     for run in runs)
    if experiment.status == ExperimentStatus.cancelled or cancelling:
        session.rollback()
        raise Conflict(f"experiment {experiment_id} was cancelled" if not cancelling
                       else f"experiment {experiment_id} is being cancelled")
    used = sorted({run.seed for run in runs} & set(seeds))
    too_many = len(experiment.seeds) + len(seeds) > MAX_SEEDS
    if used or too_many:
        session.rollback()
        raise ValueError(f"seeds: already used by this experiment: {used}" if used else
                         f"seeds: an experiment runs at most {MAX_SEEDS} seeds")
    if experiment.status == ExperimentStatus.finished:
        _clear_results(session, experiment)
    added = [Run(experiment_id=experiment_id, seed=seed, variant=arm)
             for seed in seeds for arm in policies.arms(experiment)]
    policies.queue_runs(session, added)
    experiment.seeds = policies.seeds_in_play(experiment, [*runs, *added])
    session.add(experiment)
    session.commit()
    for run in added:
        _wake(run.id)
    session.refresh(experiment)
    return experiment


def _checked_seeds(seeds: list[int]) -> list[int]:
    try:
        return SeedsAdd(seeds=seeds).seeds
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {str(error['msg']).removeprefix('Value error, ')}") from None


def move_experiment(session: Session, experiment: Experiment, to_status: ExperimentStatus) -> None:
    """Move the experiment to `to_status` in the caller's transaction (the caller commits).

    The only writer of Experiment.status: a conditional UPDATE that holds only while the stored
    status has a legal move to `to_status` (`server.states.EXPERIMENT_MOVES`). One already in
    `to_status` is left as it is. Raises InvalidTransition, rolling back, otherwise.
    """
    if experiment.status == to_status.value:
        return
    experiment_id, before = experiment.id, experiment.status
    table = table_of(Experiment)
    result = session.execute(update(table).where(table.c.id == experiment_id,
                                                 table.c.status.in_(experiment_sources(to_status)))
                             .values(status=to_status.value))
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
        session.rollback()
        raise InvalidTransition(f"experiment {experiment_id}: {before} -> {to_status} is not allowed")
    set_committed_value(experiment, "status", to_status.value)
    log.info("experiment %s: %s -> %s", experiment_id, before, to_status.value)


def _clear_results(session: Session, experiment: Experiment) -> None:
    """A finished experiment that gets new seeds is running again, without a result."""
    move_experiment(session, experiment, ExperimentStatus.running)
    experiment.finished_at = None
    experiment.n_succeeded = 0
    experiment.mean_val_bpb = experiment.std_val_bpb = None
    experiment.eligible = False
    experiment.reasons = []
    experiment.stats = None


def cancel_experiment(session: Session, experiment_id: int) -> Experiment:
    """Cancel every run that has not ended; 409 if the experiment already finished."""
    experiment = get_experiment(session, experiment_id)
    if experiment.status in FINISHED_EXPERIMENT_STATUSES:
        raise Conflict(f"experiment {experiment_id} is already {experiment.status}")
    # Queued runs no worker holds end in one statement; the few live ones are asked to stop.
    transition_free(session, experiment_id, RunStatus.queued, RunStatus.cancelled,
                    reason="cancelled by user")
    for run in list_runs(session, experiment_id):
        if RunStatus(run.status) not in FINAL_RUN_STATUSES:
            _cancel_live_or_queued(session, run)
    finalize_experiment(session, experiment_id)
    session.refresh(experiment)
    return experiment


def cancel_run(session: Session, run_id: int) -> Run:
    """End a queued run now; ask the worker to stop a live one. 409 if it already ended."""
    run = get_run(session, run_id)
    if RunStatus(run.status) in FINAL_RUN_STATUSES:
        raise Conflict(f"run {run_id} is already {run.status}")
    _cancel_live_or_queued(session, run)
    finalize_experiment(session, run.experiment_id)
    return get_run(session, run_id)


def _cancel_live_or_queued(session: Session, run: Run) -> None:
    run_id = run.id
    assert run_id is not None
    if run.status == RunStatus.queued and not _lease_held(run):
        try:
            transition(session, run_id, RunStatus.cancelled, fence=None, reason="cancelled by user")
            return
        except LeaseLost:
            # A worker moved it meanwhile: it is live now, so ask the worker to stop it.
            if RunStatus(get_run(session, run_id).status) in FINAL_RUN_STATUSES:
                return
    update_run(session, run_id, fence=None, cancel_requested=True)
    _wake(run_id)


def _lease_held(run: Run) -> bool:
    return run.lease_owner is not None and (
        run.lease_expires_at is None or run.lease_expires_at >= utcnow()
    )


def _wake(run_id: int | None) -> None:
    assert run_id is not None
    try:
        enqueue_advance(run_id)
    except Exception:
        # The row is stored; the periodic reconcile advances runs nobody woke.
        log.warning("could not enqueue run %s; the reconcile will pick it up", run_id,
                    exc_info=True)


wake = _wake  # for services that queue runs of their own (server/reproduce.py)


def finalize_experiment(session: Session, experiment_id: int, *, announce: bool = True) -> bool:
    """Fill in the experiment's results once every run has ended. True only for the call
    that finalized it, however many callers race (the experiment row is locked meanwhile).

    `announce=False` (imports) sends no webhook. While runs are still going it only moves a
    queued experiment to running. Under the same
    lock it adds the runs the experiment's policies ask for (`server/policies.py`): a stand-in
    for each failed run, and more seeds while p >= alpha; it then waits for those.
    """
    experiment = _locked_experiment(session, experiment_id)
    if experiment.status in FINISHED_EXPERIMENT_STATUSES:
        session.commit()  # ends the transaction, releasing the row lock
        return False
    runs = list(session.exec(
        select(Run).where(Run.experiment_id == experiment_id).order_by(col(Run.id))
        .execution_options(populate_existing=True)
    ).all())
    added = policies.stand_ins(session, experiment, runs)
    ended = all(RunStatus(run.status) in FINAL_RUN_STATUSES for run in runs)
    if ended and not added:
        added = policies.more_seeds(session, experiment, runs, _significance(session, experiment, runs))
    if added or not ended:
        if added or any(run.status != RunStatus.queued for run in runs):
            move_experiment(session, experiment, ExperimentStatus.running)
        session.commit()
        for run in added:
            _wake(run.id)
        return False
    _fill_results(session, experiment, runs)
    session.commit()
    if announce:
        notify.experiment_ended(experiment_id, experiment.name, experiment.status,
                                experiment.mean_val_bpb, experiment.eligible)
    return True


def _locked_experiment(session: Session, experiment_id: int) -> Experiment:
    """The experiment row, locked until the caller's transaction ends; 404 if unknown."""
    experiment = session.exec(
        select(Experiment).where(Experiment.id == experiment_id)
        .with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if experiment is None:
        session.rollback()
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def _control_scores(runs: list[Run]) -> list[float]:
    """val_bpb of the counted runs (control arm, not superseded) that succeeded."""
    return [run.val_bpb for run in policies.counted_runs(runs)
            if run.status == RunStatus.succeeded and run.val_bpb is not None]


def _significance(session: Session, experiment: Experiment,
                  runs: list[Run]) -> Significance | None:
    scores = _control_scores(runs)
    if not scores:
        return None
    # Adaptive seeding aims at the experiment's own alpha; the stored result keeps the record's.
    return reference.test_against_reference(session, experiment, scores, alpha=experiment.alpha,
                                            per_token_bytes=_bytes_per_token(runs))[0]


def _bytes_per_token(runs: list[Run]) -> float | None:
    """Bytes per token of the validation set the counted seeds scored (per-token margin)."""
    return bytes_per_token((run.val_loss, run.val_bpb) for run in policies.counted_runs(runs)
                           if run.status == RunStatus.succeeded)


def _tests(session: Session, experiment: Experiment,
           runs: list[Run]) -> tuple[dict[str, Any] | None, str | None]:
    """The stored tests and the reason the record test gives (None when it passes or was not
    made). Eligibility is only ever against the standing record of the experiment's track; a
    reference chosen at submission is the test shown, with the record test beside it."""
    scores = _control_scores(runs)
    if not scores:
        return None, None
    per_token = _bytes_per_token(runs)
    record_against = reference.record_reference(session, experiment)
    record, record_against = reference.test_against_reference(
        session, experiment, scores, against=record_against, per_token_bytes=per_token)
    record_stats = (reference.stored(record, record_against) if record is not None
                    else {"reference": record_against, "note": record_against["source"]})
    why = record.reason() if record is not None else None
    if why and record is not None and record.p is None and len(scores) < MIN_RECORD_SEEDS:
        why = None  # below the seed minimum an undefined test adds nothing the count does not say
    if why:
        why = f"{why}, against {_against_text(record_against)}"
    chosen = reference.chosen_reference(session, experiment)
    if chosen is None:
        return record_stats, why
    shown, chosen = reference.test_against_reference(
        session, experiment, scores, against=chosen, per_token_bytes=per_token)
    assert shown is not None  # a chosen reference is never "none"
    return {**reference.stored(shown, chosen), "record_test": record_stats}, why


def _against_text(against: dict[str, Any]) -> str:
    """The reference in words, as a reason states it: name, id, score and date."""
    score = against.get("val_bpb")
    shown = f"val_bpb {score:.5f}" if isinstance(score, (int, float)) else "no score"
    if against["kind"] in ("record", "experiment"):
        return (f"{against.get('name')} (experiment {against['experiment_id']}, {shown}, "
                f"{against.get('date')})")
    return f"{shown} ({against['source']})"


def _fill_results(session: Session, experiment: Experiment, all_runs: list[Run]) -> None:
    # The experiment's own numbers: its control arm, without runs that a stand-in replaced.
    runs = policies.counted_runs(all_runs)
    succeeded = [run for run in runs if run.status == RunStatus.succeeded]
    scores = _control_scores(runs)
    experiment.n_succeeded = len(succeeded)
    experiment.mean_val_bpb = statistics.fmean(scores) if scores else None
    experiment.std_val_bpb = statistics.stdev(scores) if len(scores) >= 2 else None
    experiment.stats, why = _tests(session, experiment, runs)
    if experiment.track == tracks.NON_RECORD_TRACK:
        # Judged by its own track's rules: the byte cap and a score; no caps on time, no seed
        # count, no record to beat (docs/validation.md, "Non-record track").
        experiment.reasons = non_record_reasons(runs)
        if not experiment.reasons:
            experiment.stats = {**(experiment.stats or {}), "rule": non_record_rule(runs)}
    else:
        experiment.reasons = experiment_reasons(runs)
        if why:
            experiment.reasons = [*experiment.reasons, why]
    if experiment.variants:
        summary = ablation.summarize(experiment, all_runs)
        experiment.stats = {**(experiment.stats or {}), "ablation": summary}
    experiment.eligible = not experiment.reasons
    all_cancelled = all(run.status == RunStatus.cancelled for run in all_runs)
    move_experiment(session, experiment, ExperimentStatus.cancelled if all_cancelled
                    else ExperimentStatus.finished)
    # An imported record finished on its record's date, not on the day it was imported.
    experiment.finished_at = experiment.record_date if experiment.source is not None else utcnow()


def experiment_reasons(runs: list[Run]) -> list[str]:
    """Why the experiment is not record-eligible; empty when it is.

    The significance test against the current record adds its reasons here once it exists.
    """
    reasons = []
    n_succeeded = sum(run.status == RunStatus.succeeded for run in runs)
    if n_succeeded < MIN_RECORD_SEEDS:
        reasons.append(f"{MIN_RECORD_SEEDS} seeds needed, {n_succeeded} succeeded")
    for run in runs:
        why = _seed_reason(run)
        if why:
            reasons.append(f"seed {run.seed}: {why}")
    return reasons


# Reasons of a run that the non-record track waives ("not intended to meet the 10-minute
# cutoff", any hardware): the time caps, the hardware and the clock check between them.
WAIVED_OFF_RECORD = ("train time", "eval time", "hardware", "clocks disagree")


def non_record_reasons(runs: list[Run]) -> list[str]:
    """Why the experiment is not accepted on the non-record track; empty when it is: at
    least one scored seed, and every scored seed within the byte cap and the rules other than
    time and hardware (a full validation split, for our own runs)."""
    succeeded = [run for run in runs if run.status == RunStatus.succeeded]
    if not succeeded:
        return ["non-record: no scored seed (a non-record submission needs a scored log)"]
    reasons = []
    for run in succeeded:
        kept = [why for why in run.reasons if not why.startswith(WAIVED_OFF_RECORD)]
        if run.bytes_total is None and not kept:
            kept = ["artifact size unknown"]
        elif run.bytes_total is not None and run.bytes_total > MAX_BYTES_TOTAL and not kept:
            kept = [f"bytes_total {run.bytes_total:,} > {MAX_BYTES_TOTAL:,}"]
        reasons += [f"seed {run.seed}: {why}" for why in kept]
    return reasons


def non_record_rule(runs: list[Run]) -> str:
    """The verdict of an accepted non-record experiment in words: what was checked, what not."""
    largest = max(run.bytes_total or 0 for run in runs if run.status == RunStatus.succeeded)
    return (f"non-record: within {MAX_BYTES_TOTAL:,} bytes (largest {largest:,}); the 600 s "
            "caps, the seed count and the test against a record do not apply")


def _seed_reason(run: Run) -> str | None:
    if run.status != RunStatus.succeeded:
        return f"{run.status}: {run.reason}" if run.reason else str(run.status)
    if run.eligible:
        return None
    return "; ".join(run.reasons) if run.reasons else "not verified as eligible"
