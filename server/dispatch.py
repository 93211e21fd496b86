"""Enqueue worker tasks by name. The server never imports the worker."""

from functools import lru_cache

from celery import Celery

from server.config import get_settings

ADVANCE_RUN = "caddie.advance_run"  # args: run_id. One short step of a run's lifecycle.
RECONCILE = "caddie.reconcile"  # periodic: wake runs whose next_check_at has passed.
NOTIFY = "caddie.notify"  # args: a webhook payload. Posted by a worker, retried on failure.


@lru_cache
def get_producer() -> Celery:
    settings = get_settings()
    app = Celery("caddie-producer", broker=settings.broker_url())
    app.conf.broker_transport_options = settings.broker_transport_options()
    app.conf.broker_connection_retry_on_startup = True
    return app


def enqueue_advance(run_id: int) -> None:
    """Wake a run. Safe to call twice: the step takes the run's lease and re-reads its state."""
    get_producer().send_task(ADVANCE_RUN, args=[run_id])


def enqueue_notification(payload: dict[str, object]) -> None:
    get_producer().send_task(NOTIFY, args=[payload])
