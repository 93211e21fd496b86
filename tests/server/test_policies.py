"""What finalizing does before an experiment may finish: control-only numbers for ablations,
a stand-in for each failed run (retry / replace, within max_retries), and adaptive seeds
while p >= alpha — each exactly once, also when two finalizers race on PostgreSQL."""

import statistics
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from server.experiments import finalize_experiment
from server.models import Experiment, Run, RunEvent
from server.runs import transition
from server.states import RunStatus
from server.statistics import Units, one_sample_test
from tests.factories import LOSS_PER_BPB, make_experiment, make_run, make_scored_run
from tests.server.broker import queued_tasks

WIDE = {"name": "wide", "config": {"model_dim": 640}}
# The record margin, 0.005 nats per token, in bits per byte of these tests' runs.
BPB_MARGIN = 0.005 / LOSS_PER_BPB


def reload(session: Session, experiment_id: int) -> tuple[Experiment, list[Run]]:
    session.expire_all()
    experiment = session.get(Experiment, experiment_id)
    assert experiment is not None
    runs = list(session.exec(select(Run).where(Run.experiment_id == experiment_id)
                             .order_by(col(Run.id))).all())
    session.commit()
    return experiment, runs


def succeed(session: Session, run: Run, val_bpb: float) -> None:
    """The worker's verifying step, as setup: the run succeeded with this score."""
    row = session.get(Run, run.id)
    assert row is not None
    row.status, row.val_bpb, row.eligible, row.reasons = "succeeded", val_bpb, True, []
    session.add(row)
    session.commit()


def failed_experiment(session: Session, **fields: Any) -> Experiment:
    """Seeds 1 and 2 succeeded, seed 3 failed."""
    experiment = make_experiment(session, seeds=[1, 2, 3], **fields)
    make_scored_run(session, experiment, seed=1, val_bpb=1.20)
    make_scored_run(session, experiment, seed=2, val_bpb=1.21)
    make_run(session, experiment, seed=3, status="failed", reason="trainer exited with code 1")
    return experiment


def test_ablation_variants_do_not_count_for_the_experiment(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2, 3], variants=[WIDE])
    control = [1.20, 1.21, 1.19]
    for seed, score in zip([1, 2, 3], control, strict=True):
        make_scored_run(session, experiment, seed=seed, val_bpb=score)
        make_scored_run(session, experiment, seed=seed, val_bpb=1.90, variant="wide")
    make_run(session, experiment, seed=4, status="failed", variant="wide")

    assert finalize_experiment(session, experiment.id) is True

    done, _ = reload(session, experiment.id)
    assert (done.n_succeeded, done.eligible, done.reasons) == (3, True, [])
    assert done.mean_val_bpb == pytest.approx(statistics.mean(control))
    assert done.stats is not None and done.stats["n"] == 3
    assert done.stats["mean"] == pytest.approx(statistics.mean(control) * LOSS_PER_BPB)
    assert done.stats["units"] == "nats_per_token"


def test_the_reference_experiment_counts_only_its_control(session: Session) -> None:
    reference = make_experiment(session, seeds=[1, 2, 3], variants=[WIDE], reference_bpb=9.0)
    for seed, score in zip([1, 2, 3], [1.30, 1.31, 1.29], strict=True):
        make_scored_run(session, reference, seed=seed, val_bpb=score)
        make_scored_run(session, reference, seed=seed, val_bpb=1.0 + seed / 1000, variant="wide")
    assert finalize_experiment(session, reference.id)
    better = make_experiment(session, seeds=[1, 2, 3], reference_bpb=None,
                             reference_experiment_id=reference.id)
    for seed, score in zip([1, 2, 3], [1.20, 1.21, 1.19], strict=True):
        make_scored_run(session, better, seed=seed, val_bpb=score)

    assert finalize_experiment(session, better.id)

    done, _ = reload(session, better.id)
    assert done.stats is not None
    assert (done.stats["reference_n"], done.stats["reference_mean"]) == (
        3, pytest.approx(1.30 * LOSS_PER_BPB))
    assert done.eligible is True


def test_retry_runs_the_failed_seed_again_and_waits_for_it(session: Session,
                                                          data_dir: Path) -> None:
    experiment = failed_experiment(session, failure_policy="retry")

    assert finalize_experiment(session, experiment.id) is False

    waiting, runs = reload(session, experiment.id)
    failed, retry = runs[2], runs[3]
    assert (failed.superseded, retry.seed, retry.variant, retry.retry_of, retry.status) == (
        True, 3, "", failed.id, "queued")
    assert (waiting.status, waiting.seeds, waiting.finished_at) == ("running", [1, 2, 3], None)
    assert ("caddie.advance_run", [retry.id]) in queued_tasks(data_dir)
    events = session.exec(select(RunEvent).where(RunEvent.run_id == retry.id)).all()
    assert [(e.from_status, e.to_status) for e in events] == [(None, "queued")]
    session.commit()
    assert finalize_experiment(session, experiment.id) is False  # nothing added twice
    assert len(reload(session, experiment.id)[1]) == 4

    succeed(session, retry, 1.19)
    assert finalize_experiment(session, experiment.id) is True

    done, _ = reload(session, experiment.id)
    assert (done.status, done.n_succeeded, done.eligible, done.reasons) == (
        "finished", 3, True, [])
    assert done.mean_val_bpb == pytest.approx(1.20)


def test_replace_runs_a_new_seed_in_every_arm(session: Session) -> None:
    experiment = make_experiment(session, seeds=[5, 9], variants=[WIDE], failure_policy="replace")
    for seed in (5, 9):
        make_scored_run(session, experiment, seed=seed, val_bpb=1.2 + seed / 1000, variant="wide")
    make_scored_run(session, experiment, seed=5, val_bpb=1.2)
    failed = make_run(session, experiment, seed=9, status="failed")

    assert finalize_experiment(session, experiment.id) is False

    waiting, runs = reload(session, experiment.id)
    new = [(run.seed, run.variant, run.retry_of) for run in runs if run.status == "queued"]
    assert new == [(10, "", failed.id), (10, "wide", None)]
    # Seed 9 stays in play through its succeeded variant run; 10 joins.
    assert waiting.seeds == [5, 9, 10]


def test_replace_without_variants_swaps_the_seed(session: Session) -> None:
    experiment = failed_experiment(session, failure_policy="replace")

    assert finalize_experiment(session, experiment.id) is False

    waiting, runs = reload(session, experiment.id)
    assert [(r.seed, r.status, r.superseded) for r in runs][2:] == [
        (3, "failed", True), (4, "queued", False)]
    assert waiting.seeds == [1, 2, 4]


def test_max_retries_caps_the_stand_ins(session: Session) -> None:
    experiment = failed_experiment(session, failure_policy="retry", max_retries=1)
    assert finalize_experiment(session, experiment.id) is False
    _, runs = reload(session, experiment.id)
    retry = session.get(Run, runs[3].id)
    assert retry is not None
    retry.status, retry.reason = "failed", "out of memory"
    session.add(retry)
    session.commit()

    assert finalize_experiment(session, experiment.id) is True

    done, runs = reload(session, experiment.id)
    assert len(runs) == 4 and runs[3].superseded is False
    assert done.reasons == ["3 seeds needed, 2 succeeded", "seed 3: failed: out of memory"]


def test_no_policy_and_cancelled_runs_add_nothing(session: Session) -> None:
    plain = failed_experiment(session)
    stopped = failed_experiment(session, failure_policy="retry")
    make_run(session, stopped, seed=4, status="cancelled")

    assert finalize_experiment(session, plain.id) is True
    assert finalize_experiment(session, stopped.id) is True

    for experiment_id in (plain.id, stopped.id):
        done, runs = reload(session, experiment_id)
        assert done.status == "finished" and not any(run.superseded for run in runs)


def adaptive(session: Session, *, max_seeds: int, scores: list[float],
             seeds: list[int] | None = None, **fields: Any) -> Experiment:
    """Seeds 1, 2, ... scored (by default: mean 0.01 below the threshold, std 0.01, p ~ 0.11)."""
    experiment = make_experiment(session, seeds=seeds or list(range(1, len(scores) + 1)),
                                 reference_bpb=1.21 + BPB_MARGIN, max_seeds=max_seeds, **fields)
    for seed, score in enumerate(scores, start=1):
        make_scored_run(session, experiment, seed=seed, val_bpb=score)
    return experiment


def test_adaptive_adds_the_estimated_seeds_within_max_seeds(session: Session,
                                                            data_dir: Path) -> None:
    scores = [1.20, 1.21, 1.19]
    estimate = one_sample_test([s * LOSS_PER_BPB for s in scores], 1.21 * LOSS_PER_BPB,
                               units=Units.NATS_PER_TOKEN).more_seeds
    assert estimate is not None and estimate > 2
    experiment = adaptive(session, max_seeds=5, scores=scores)

    assert finalize_experiment(session, experiment.id) is False

    waiting, runs = reload(session, experiment.id)
    assert [(run.seed, run.status) for run in runs][3:] == [(4, "queued"), (5, "queued")]
    assert (waiting.status, waiting.seeds) == ("running", [1, 2, 3, 4, 5])
    woken = [args for name, args in queued_tasks(data_dir) if name == "caddie.advance_run"]
    assert sorted(woken) == [[runs[3].id], [runs[4].id]]

    succeed(session, runs[3], 1.20)
    succeed(session, runs[4], 1.20)
    assert finalize_experiment(session, experiment.id) is True  # max_seeds reached
    done, _ = reload(session, experiment.id)
    assert done.n_succeeded == 5 and done.stats is not None and done.stats["p"] >= 0.01


def test_adaptive_adds_one_seed_when_the_test_is_undefined(session: Session) -> None:
    experiment = adaptive(session, max_seeds=3, scores=[1.20])

    assert finalize_experiment(session, experiment.id) is False

    assert reload(session, experiment.id)[0].seeds == [1, 2]


@pytest.mark.parametrize("scores", [[1.30, 1.31, 1.29], [1.10, 1.11, 1.09]],
                         ids=["mean above the threshold", "significant"])
def test_adaptive_finishes_when_more_seeds_cannot_help_or_are_not_needed(
        session: Session, scores: list[float]) -> None:
    experiment = adaptive(session, max_seeds=10, scores=scores)

    assert finalize_experiment(session, experiment.id) is True

    assert reload(session, experiment.id)[0].seeds == [1, 2, 3]


def test_concurrent_finalizers_add_one_retry(engine: Engine) -> None:
    """The last two seeds end together, one of them failed: one retry, no finish."""
    with Session(engine, expire_on_commit=False) as session:
        setups = []
        for _ in range(4):
            experiment = make_experiment(session, seeds=[1, 2, 3], failure_policy="retry")
            make_scored_run(session, experiment, seed=1, val_bpb=1.2)
            ok = make_scored_run(session, experiment, seed=2, val_bpb=1.21, status="verifying")
            bad = make_run(session, experiment, seed=3, status="running")
            setups.append((experiment.id, {ok.id: RunStatus.succeeded,
                                           bad.id: RunStatus.failed}))

    for experiment_id, ends in setups:
        assert race_to_finalize(engine, experiment_id, ends) == [False, False]
        with Session(engine) as session:
            waiting, runs = reload(session, experiment_id)
            assert [run.seed for run in runs] == [1, 2, 3, 3]
            assert (waiting.status, runs[3].retry_of) == ("running", runs[2].id)


def test_concurrent_finalizers_add_adaptive_seeds_once(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        setups = []
        for _ in range(4):
            experiment = adaptive(session, max_seeds=4, scores=[1.20], seeds=[1, 2, 3])
            last_two = [make_scored_run(session, experiment, seed=seed, val_bpb=score,
                                        status="verifying").id
                        for seed, score in ((2, 1.21), (3, 1.19))]
            setups.append((experiment.id, dict.fromkeys(last_two, RunStatus.succeeded)))

    for experiment_id, ends in setups:
        assert race_to_finalize(engine, experiment_id, ends) == [False, False]
        with Session(engine) as session:
            waiting, runs = reload(session, experiment_id)
            assert [run.seed for run in runs] == [1, 2, 3, 4]
            assert waiting.seeds == [1, 2, 3, 4]


def race_to_finalize(engine: Engine, experiment_id: int,
                     ends: dict[int, RunStatus]) -> list[bool]:
    """Each run ends in its own thread; all call finalize at the same moment."""
    barrier = threading.Barrier(len(ends))
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker(run_id: int, status: RunStatus) -> None:
        try:
            with Session(engine) as session:
                transition(session, run_id, status, fence=None)
                barrier.wait(timeout=30)
                results.append(finalize_experiment(session, experiment_id))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=item) for item in ends.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return sorted(results)
