"""Celery entry points. Thin: they find the director and hand it the run id.

Named by `server.queue` (the server enqueues by name and never imports this module).
"""

from functools import lru_cache

import httpx

from server.config import get_settings
from server.db import get_engine
from server.queue import ADVANCE_RUN, NOTIFY, RECONCILE
from worker import reconciler
from worker.app import app
from worker.director import RunDirector


@lru_cache
def get_director() -> RunDirector:
    return RunDirector(get_settings(), get_engine())


@app.task(name=ADVANCE_RUN)
def advance_run(run_id: int) -> None:
    """One step of a run; enqueues the next at once when the run can go straight on."""
    if get_director().advance(run_id):
        advance_run.delay(run_id)


@app.task(name=RECONCILE)
def reconcile() -> None:
    """Wake due runs, release pods of ended runs, finalize ended experiments."""
    reconciler.reconcile(get_director(), enqueue=advance_run.delay)


@app.task(name=NOTIFY, autoretry_for=(httpx.HTTPError,), retry_backoff=True, max_retries=5)
def send_notification(payload: dict[str, object]) -> None:
    """POST one notification to the configured webhook; retried with backoff on failure."""
    url = get_settings().webhook_url
    if url is None:
        return
    response = httpx.post(url.get_secret_value(), json=payload, timeout=10)
    response.raise_for_status()
