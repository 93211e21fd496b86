"""Helpers of the worker tests: make a run, read it back, drive it with the step function."""

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from server.models import Pod, Run, utcnow
from server.states import RunStatus
from tests.factories import make_experiment, make_run
from worker.director import RunDirector

FAKE_TRAINER = Path(__file__).parent / "fake_trainer" / "trainer"


def new_run(engine: Engine, *, provider: str = "local", seed: int = 7, **config: Any) -> int:
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny", provider=provider, config=config)
        run = make_run(session, experiment, seed=seed)
        assert run.id is not None
        return run.id


def read_run(engine: Engine, run_id: int) -> Run:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        return run


def drive(director: RunDirector, run_id: int, *, until: set[RunStatus], timeout_s: float = 30.0) -> Run:
    """Call the step function until the run reaches one of `until` (no broker involved)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_run(director.engine, run_id)
        if RunStatus(run.status) in until:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stuck in {run.status} (reason: {run.reason})")
        if not director.advance(run_id):
            time.sleep(0.02)


def running_past_its_deadline(director: RunDirector, engine: Engine) -> tuple[int, str | None]:
    """A runpod run whose trainer sleeps, its only pod's deadline just passed:
    (run id, the pod's external id)."""
    run_id = new_run(engine, provider="runpod", fake_mode="sleep")
    drive(director, run_id, until={RunStatus.running})
    with Session(engine) as session:
        pod = session.exec(select(Pod)).one()
        pod.deadline_at = utcnow() - timedelta(seconds=1)
        session.add(pod)
        session.commit()
        return run_id, pod.external_id
