"""finalize_experiment: the numbers, the reasons, and exactly-once under concurrency."""

import statistics
import threading

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.errors import NotFound
from server.experiments import finalize_experiment
from server.models import Experiment
from server.runs import transition
from server.states import RunStatus
from tests.factories import make_experiment, make_run, make_scored_run


def reload(session: Session, experiment_id: int) -> Experiment:
    session.expire_all()
    experiment = session.get(Experiment, experiment_id)
    assert experiment is not None
    session.commit()
    return experiment


def test_three_eligible_seeds_make_an_eligible_experiment(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2, 3])
    scores = [1.2244, 1.2260, 1.2198]
    for seed, score in zip([1, 2, 3], scores, strict=True):
        make_scored_run(session, experiment, seed=seed, val_bpb=score)

    assert finalize_experiment(session, experiment.id) is True

    done = reload(session, experiment.id)
    assert (done.status, done.n_succeeded, done.eligible, done.reasons) == (
        "finished", 3, True, [])
    assert done.mean_val_bpb == pytest.approx(statistics.mean(scores))
    assert done.std_val_bpb == pytest.approx(statistics.stdev(scores))
    assert done.finished_at is not None
    assert finalize_experiment(session, experiment.id) is False


def test_reasons_name_each_seed_that_fails_a_rule(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2, 3], reference_bpb=9.0)  # beaten at p < 0.01
    make_scored_run(session, experiment, seed=1, val_bpb=1.20)
    make_scored_run(session, experiment, seed=2, val_bpb=1.30, eligible=False,
                    reasons=["bytes_total 16,000,001 > 16,000,000"])
    make_run(session, experiment, seed=3, status="failed", reason="trainer exited with code 1")

    assert finalize_experiment(session, experiment.id) is True

    done = reload(session, experiment.id)
    assert done.eligible is False
    assert done.reasons == [
        "3 seeds needed, 2 succeeded",
        "seed 2: bytes_total 16,000,001 > 16,000,000",
        "seed 3: failed: trainer exited with code 1",
    ]
    assert (done.n_succeeded, done.mean_val_bpb) == (2, pytest.approx(1.25))
    assert done.std_val_bpb == pytest.approx(statistics.stdev([1.20, 1.30]))


def test_two_eligible_seeds_are_too_few(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2])
    make_scored_run(session, experiment, seed=1, val_bpb=1.2)
    make_scored_run(session, experiment, seed=2, val_bpb=1.2)

    assert finalize_experiment(session, experiment.id) is True

    done = reload(session, experiment.id)
    assert (done.eligible, done.reasons) == (False, ["3 seeds needed, 2 succeeded"])
    assert done.std_val_bpb == 0.0


def test_single_score_has_no_std_and_all_cancelled_is_cancelled(session: Session) -> None:
    one = make_experiment(session, seeds=[1])
    make_scored_run(session, one, seed=1, val_bpb=1.21)
    cancelled = make_experiment(session, seeds=[1, 2])
    make_run(session, cancelled, seed=1, status="cancelled")
    make_run(session, cancelled, seed=2, status="cancelled")

    assert finalize_experiment(session, one.id) is True
    assert finalize_experiment(session, cancelled.id) is True

    assert (reload(session, one.id).mean_val_bpb, reload(session, one.id).std_val_bpb) == (
        pytest.approx(1.21), None)
    gone = reload(session, cancelled.id)
    assert (gone.status, gone.n_succeeded, gone.mean_val_bpb) == ("cancelled", 0, None)


def test_unfinished_experiment_is_not_finalized_but_marked_running(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2])
    make_scored_run(session, experiment, seed=1, val_bpb=1.2)
    make_run(session, experiment, seed=2, status="queued")

    assert finalize_experiment(session, experiment.id) is False

    still = reload(session, experiment.id)
    assert (still.status, still.finished_at, still.mean_val_bpb) == ("running", None, None)


def test_unknown_experiment_is_not_found(session: Session) -> None:
    with pytest.raises(NotFound, match="experiment 4242 not found"):
        finalize_experiment(session, 4242)


def test_concurrent_finalizers_of_the_last_two_seeds_finalize_once(engine: Engine) -> None:
    """Two workers end the last two seeds at the same moment and both call finalize."""
    rounds = 6
    with Session(engine, expire_on_commit=False) as session:
        setups = []
        for _ in range(rounds):
            experiment = make_experiment(session, seeds=[1, 2, 3])
            make_scored_run(session, experiment, seed=1, val_bpb=1.2)
            last_two = [make_scored_run(session, experiment, seed=seed, val_bpb=1.25,
                                        status="verifying").id for seed in (2, 3)]
            setups.append((experiment.id, last_two))

    for experiment_id, run_ids in setups:
        results = race_to_finalize(engine, experiment_id, run_ids)
        assert sorted(results) == [False, True], experiment_id
        with Session(engine) as session:
            done = reload(session, experiment_id)
            assert (done.status, done.n_succeeded) == ("finished", 3)
            assert done.mean_val_bpb == pytest.approx(statistics.mean([1.2, 1.25, 1.25]))


def race_to_finalize(engine: Engine, experiment_id: int, run_ids: list[int]) -> list[bool]:
    barrier = threading.Barrier(len(run_ids))
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker(run_id: int) -> None:
        try:
            with Session(engine) as session:
                transition(session, run_id, RunStatus.succeeded, fence=None)
                barrier.wait(timeout=30)
                results.append(finalize_experiment(session, experiment_id))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_the_non_record_track_waives_time_hardware_and_seed_count_not_the_rest(
        session: Session) -> None:
    from server.tracks import NON_RECORD_TRACK
    long_run = make_experiment(session, seeds=[1], track=NON_RECORD_TRACK)
    make_scored_run(session, long_run, seed=1, val_bpb=1.18, eligible=False,
                    reasons=["train time 7200.000 s > 600 s (step time unknown)",
                             "hardware 1×NVIDIA RTX 5090 is not 8×H100"])
    partial = make_experiment(session, seeds=[1, 2], track=NON_RECORD_TRACK)
    make_scored_run(session, partial, seed=1, val_bpb=1.30, eligible=False,
                    reasons=["val_tokens 1000 is not a full official validation split"])
    make_scored_run(session, partial, seed=2, val_bpb=1.31, bytes_total=16_000_001)
    assert finalize_experiment(session, long_run.id) and finalize_experiment(session, partial.id)

    accepted = reload(session, long_run.id)
    assert (accepted.eligible, accepted.reasons) == (True, [])
    assert (accepted.stats or {})["rule"].startswith("non-record: within 16,000,000 bytes (largest")
    refused = reload(session, partial.id)
    assert (refused.eligible, refused.reasons) == (False, [
        "seed 1: val_tokens 1000 is not a full official validation split",
        "seed 2: bytes_total 16,000,001 > 16,000,000"])
