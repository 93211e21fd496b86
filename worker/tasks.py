"""Celery entry points. Thin: they find the director and hand it the run id.

Named by `server.dispatch` (the server enqueues by name and never imports this module).
"""

from functools import lru_cache

import httpx

from server import logsetup
from server.config import get_settings
from server.db import get_engine
from server.dispatch import ADVANCE_RUN, NOTIFY, RECONCILE
from worker import reconciler
from worker.app import app
from worker.director import RunDirector


@lru_cache
def get_director() -> RunDirector:
    return RunDirector(get_settings(), get_engine())


@app.task(name=ADVANCE_RUN)
def advance_run(run_id: int) -> None:
    """One step of a run; enqueues the next at once when the run can go straight on."""
    with logsetup.work(run_id=run_id):
        if get_director().advance(run_id):
            advance_run.delay(run_id)


@app.task(name=RECONCILE)
def reconcile() -> None:
    """Wake due runs, release pods of ended runs, finalize ended experiments."""
    reconciler.reconcile(get_director(), enqueue=advance_run.delay)


class WebhookFailed(Exception):
    """The webhook refused or could not be reached; says so without its URL (a secret)."""


@app.task(name=NOTIFY, autoretry_for=(WebhookFailed,), retry_backoff=True, max_retries=5)
def send_notification(payload: dict[str, object]) -> None:
    """POST one notification to the configured webhook; retried with backoff on failure."""
    url = get_settings().webhook_url
    if url is None:
        return
    ids = {k: v for k, v in payload.items() if k in logsetup.IDS and isinstance(v, int)}
    with logsetup.work(**ids):
        try:
            httpx.post(url.get_secret_value(), json=payload, timeout=10).raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise WebhookFailed(f"the webhook answered {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise WebhookFailed(f"the webhook could not be reached ({type(exc).__name__})") from None
