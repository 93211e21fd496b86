"""`python -m tests.faults.celery_worker worker ...`: the real Celery worker (worker.app,
worker.tasks, the real director), whose trainer bundle is the fake trainer of the worker tests,
so a run takes as long as the test asks and counts its trainer starts."""

import sys
from functools import lru_cache

from server.config import get_settings
from server.db import get_engine
from tests.worker.harness import FAKE_TRAINER
from worker import tasks
from worker.app import app
from worker.bundle import TrainerBundle
from worker.director import RunDirector


@lru_cache
def fake_trainer_director() -> RunDirector:
    return RunDirector(get_settings(), get_engine(), bundle=TrainerBundle(FAKE_TRAINER))


if __name__ == "__main__":
    tasks.get_director = fake_trainer_director  # type: ignore[assignment]
    app.worker_main(sys.argv[1:])
