"""The periodic reconcile: which runs it wakes, which pods it gives back, which experiments
it finalizes."""

from datetime import timedelta

import pytest
from sqlmodel import Session

from server.models import Experiment, Pod, Run, utcnow
from tests.factories import make_experiment, make_run
from worker import reconciler

BOTH_DATABASES = pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def add_runs(engine, *specs: dict) -> list[int]:
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny")
        return [make_run(session, experiment, seed=i, **spec).id for i, spec in enumerate(specs)]


@BOTH_DATABASES
def test_wakes_due_runs_whose_lease_is_free_once(director, engine):
    now = utcnow()
    due, later, held, expired, ended = add_runs(
        engine,
        {"next_check_at": None},
        {"next_check_at": now + timedelta(minutes=5)},
        {"next_check_at": now - timedelta(seconds=1), "lease_owner": "w", "lease_expires_at": now + timedelta(minutes=1)},
        {"next_check_at": now - timedelta(seconds=1), "lease_owner": "w", "lease_expires_at": now - timedelta(seconds=1)},
        {"status": "succeeded", "next_check_at": None},
    )
    woken: list[int] = []
    assert reconciler.wake_due_runs(director, enqueue=woken.append) == [due, expired]
    assert woken == [due, expired]
    # The woken runs are held off until their step runs: a second pass wakes nothing.
    assert reconciler.wake_due_runs(director, enqueue=woken.append) == []
    with Session(engine) as session:
        assert session.get(Run, due).next_check_at > now + timedelta(seconds=20)


def test_gives_back_the_pod_of_a_run_that_ended_without_releasing_it(director, engine, finalized):
    (run_id,) = add_runs(engine, {"status": "failed"})
    with Session(engine) as session:
        pod = Pod(run_id=run_id, provider="local", name=f"caddie-run-{run_id}", host="localhost", status="busy")
        session.add(pod)
        session.commit()
        session.refresh(pod)
        run = session.get(Run, run_id)
        run.pod_id = pod.id
        session.add(run)
        session.commit()
        pod_id, experiment_id = pod.id, run.experiment_id
    reconciler.reconcile(director, enqueue=lambda _: None)
    with Session(engine) as session:
        pod = session.get(Pod, pod_id)
        assert pod.status == "terminated" and pod.terminated_at is not None
    assert experiment_id in finalized


def test_finalizes_only_open_experiments_whose_runs_all_ended(director, engine, finalized):
    with Session(engine) as session:
        done = make_experiment(session, name="done", status="running")
        going = make_experiment(session, name="going", status="running")
        closed = make_experiment(session, name="closed", status="finished")
        make_experiment(session, name="empty", status="queued")
        make_run(session, done, seed=1, status="succeeded")
        make_run(session, done, seed=2, status="failed")
        make_run(session, going, seed=1, status="succeeded")
        make_run(session, going, seed=2, status="running")
        make_run(session, closed, seed=1, status="succeeded")
        done_id = done.id
    reconciler.finalize_ended_experiments(director)
    assert finalized == [done_id]


@BOTH_DATABASES
def test_with_the_real_finalize_an_ended_experiment_is_finished(settings, engine):
    from worker.director import RunDirector

    with Session(engine) as session:
        experiment = make_experiment(session, status="running", seeds=[1, 2])
        make_run(session, experiment, seed=1, status="failed", reason="x")
        make_run(session, experiment, seed=2, status="cancelled")
        experiment_id = experiment.id
    reconciler.finalize_ended_experiments(RunDirector(settings, engine))
    with Session(engine) as session:
        assert session.get(Experiment, experiment_id).status == "finished"
