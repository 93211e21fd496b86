"""Experiments: a trainer config run once per seed. Create, read, cancel and finalize them.

Service layer: takes a Session, raises `server.errors` types, knows nothing of HTTP.
Writes commit here, and the broker is told only after the commit, because the database
is the source of truth and a lost message is picked up by the periodic reconcile.
"""

import logging
import statistics
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from server import ablation, costs, notify, policies, reference, scripts, tracks, waiver
from server.config import Settings
from server.dispatch import enqueue_advance
from server.eligibility import MAX_BYTES_TOTAL
from server.errors import Conflict, InvalidTransition, LeaseLost, NotFound
from server.models import (
    MAX_SEEDS,
    SCRIPT_PRESET,
    Experiment,
    ExperimentCreate,
    ExperimentPublic,
    ExperimentPublicWithRuns,
    FilePublic,
    Run,
    RunEvent,
    RunEventPublic,
    RunPublic,
    RunPublicWithEvents,
    SeedsAdd,
    table_of,
    utcnow,
)
from server.runs import get_run, transition, transition_free, update_run
from server.states import (
    ENDED_EXPERIMENT_STATUSES,
    FINAL_RUN_STATUSES,
    ExperimentStatus,
    RunStatus,
    experiment_sources,
)
from server.statistics import Significance, bytes_per_token

log = logging.getLogger(__name__)

MIN_RECORD_SEEDS = 3  # the challenge asks for several seeds; 3 is the usual count


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
        conditions.append(Experiment.status == status)
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
    if experiment.status == to_status:
        return
    experiment_id, before = experiment.id, experiment.status
    table = table_of(Experiment)
    result = session.execute(update(table).where(table.c.id == experiment_id,
                                                 table.c.status.in_(experiment_sources(to_status)))
                             .values(status=to_status.value))
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
        session.rollback()
        raise InvalidTransition(f"experiment {experiment_id}: {before} -> {to_status} is not allowed")
    set_committed_value(experiment, "status", to_status)
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
    if experiment.status in ENDED_EXPERIMENT_STATUSES:
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
    if experiment.status in ENDED_EXPERIMENT_STATUSES:
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
    waived = None
    if experiment.systems_only_of is not None:
        waived = waiver.judge(session, experiment, runs, _bytes_per_token(runs))
        experiment.stats = {**(experiment.stats or {}), "systems_waiver": waived}
    if experiment.track == tracks.NON_RECORD_TRACK:
        # Judged by its own track's rules: the byte cap and a score; no caps on time, no seed
        # count, no record to beat (docs/validation.md, "Non-record track").
        experiment.reasons = non_record_reasons(runs)
        if not experiment.reasons:
            experiment.stats = {**(experiment.stats or {}), "rule": non_record_rule(runs)}
    else:
        experiment.reasons = experiment_reasons(runs)
        if waived is not None:  # its checks stand in for the record test's reason
            experiment.reasons = [*experiment.reasons, *waived["reasons"]]
        elif why:
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
