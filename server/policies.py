"""What an experiment does when its runs end, before it may finish: a stand-in for each failed
run (its failure policy) and more seeds while its test is not yet significant (adaptive seeds).

Only `finalize_experiment` calls the deciding functions, under the experiment's row lock, so
each decision is taken exactly once however many callers race; the caller commits, then wakes
the runs returned. An experiment's own numbers come from its control arm (variant "") without
superseded runs; a new seed runs in every arm so that the seeds of an ablation stay paired.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from sqlmodel import Session

from server.models import SEED_LIMIT, Experiment, Run, RunEvent
from server.states import RunStatus
from server.statistics import Significance

CONTROL = ""  # the variant name of an ablation's control arm (and of a plain experiment's runs)


def counted_runs(runs: Iterable[Run]) -> list[Run]:
    """The runs whose results are the experiment's own: the control arm, less superseded runs."""
    return [run for run in runs if run.variant == CONTROL and not run.superseded]


def arms(experiment: Experiment) -> list[str]:
    """The control, then each ablation variant by name."""
    return [CONTROL, *(variant["name"] for variant in experiment.variants)]


def arm_changes(experiment: Experiment, arm: str) -> dict[str, Any]:
    """What an arm changes from the control: the variant's {"config": {...}} or, for a script
    experiment, {"env": {...}}; {} for the control. An arm the experiment does not name is a
    ValueError, so a run never silently falls back to the control's settings."""
    if arm == CONTROL:
        return {}
    for variant in experiment.variants:
        if variant["name"] == arm:
            return {key: dict(variant.get(key) or {}) for key in ("config", "env")}
    raise ValueError(f"variant {arm!r} is not one of the experiment's variants")


def stopped(runs: Iterable[Run]) -> bool:
    """A user cancelled one of its runs: the experiment no longer grows."""
    return any(run.cancel_requested or run.status == RunStatus.cancelled for run in runs)


def stand_ins(session: Session, experiment: Experiment, runs: Sequence[Run]) -> list[Run]:
    """New queued runs for failed runs that have none yet, per the failure policy, within
    `max_retries` stand-ins in all; each failed run they stand in for becomes superseded."""
    if experiment.failure_policy not in ("retry", "replace") or stopped(runs):
        return []
    covered = {run.retry_of for run in runs if run.retry_of is not None}
    left = experiment.max_retries - len(covered)
    used = {run.seed for run in runs}
    added: list[Run] = []
    for failed in runs:
        if left <= 0:
            break
        if failed.status != RunStatus.failed or failed.superseded or failed.id in covered:
            continue
        left -= 1
        failed.superseded = True
        session.add(failed)
        if experiment.failure_policy == "retry":
            added.append(_run(experiment, failed.seed, failed.variant, retry_of=failed.id))
            continue
        (seed,) = next_seeds(used, 1)
        used.add(seed)
        added += [_run(experiment, seed, arm, retry_of=failed.id if arm == failed.variant else None)
                  for arm in arms(experiment)]
    return _queued(session, experiment, runs, added)


def more_seeds(session: Session, experiment: Experiment, runs: Sequence[Run],
               significance: Significance | None) -> list[Run]:
    """New seeds (a run in every arm) while the test's p >= alpha and the experiment has fewer
    than `max_seeds` seeds: as many as the estimate says would reach p < alpha, else one, capped.

    None when the experiment is not adaptive, was cancelled, is significant, or its mean is not
    below the threshold (more seeds of a config that does not beat the threshold cannot help)."""
    if experiment.max_seeds is None or stopped(runs):
        return []
    room = experiment.max_seeds - len(experiment.seeds)
    if room <= 0 or (significance is not None and significance.significant):
        return []
    if significance is not None and significance.t is not None and significance.t <= 0:
        return []
    estimate = significance.more_seeds if significance is not None else None
    seeds = next_seeds({run.seed for run in runs}, min(estimate or 1, room))
    added = [_run(experiment, seed, arm) for seed in seeds for arm in arms(experiment)]
    return _queued(session, experiment, runs, added)


def queue_runs(session: Session, runs: Sequence[Run]) -> None:
    """Store new runs with their first event (queued), in the caller's transaction."""
    session.add_all(runs)
    session.flush()
    session.add_all(RunEvent(run_id=run.id, from_status=None, to_status=RunStatus.queued)
                    for run in runs)


def next_seeds(used: set[int], count: int) -> list[int]:
    """`count` unused seeds: the smallest above the largest used, wrapping to the smallest
    unused ones when the int32 range runs out."""
    seeds: list[int] = []
    candidate = max(used, default=-1) + 1
    while len(seeds) < count:
        if candidate >= SEED_LIMIT:
            candidate = 0
        if candidate not in used and candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def seeds_in_play(experiment: Experiment, runs: Iterable[Run]) -> list[int]:
    """Seeds with a run that is not superseded: the submitted order, then new seeds as added."""
    live = [run.seed for run in runs if not run.superseded]
    alive = set(live)
    return [seed for seed in dict.fromkeys([*experiment.seeds, *live]) if seed in alive]


def _run(experiment: Experiment, seed: int, variant: str, *, retry_of: int | None = None) -> Run:
    assert experiment.id is not None
    return Run(experiment_id=experiment.id, seed=seed, variant=variant, retry_of=retry_of)


def _queued(session: Session, experiment: Experiment, runs: Sequence[Run],
            added: list[Run]) -> list[Run]:
    if added:
        queue_runs(session, added)
        experiment.seeds = seeds_in_play(experiment, [*runs, *added])
        session.add(experiment)
    return added
