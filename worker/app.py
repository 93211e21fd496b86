"""The Celery app of the worker and of beat.

    celery -A worker.app worker --pool prefork      # runs steps
    celery -A worker.app beat                       # exactly one: the periodic reconcile

Tasks are short idempotent steps (worker.tasks), so the configuration favours redelivery
over loss: acks after the step, one message per process, requeue when a process dies.
Redis when CADDIE_REDIS_URL is set, else Celery's filesystem transport in the data dir.
"""

import logging
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging

from server import logsetup
from server.config import Settings, get_settings
from server.dispatch import RECONCILE

SOFT_TIME_LIMIT_S = 240  # a step raises SoftTimeLimitExceeded; its lease then expires
HARD_TIME_LIMIT_S = 300  # the process running the step is killed
# Redis redelivers an unacked message after this long; it must exceed any step's duration,
# or a step still running gets a second copy. Set in all three places Celery reads it.
VISIBILITY_TIMEOUT_S = 3600


def make_app(settings: Settings) -> Celery:
    app = Celery("caddie", broker=settings.broker_url(), include=["worker.tasks"])
    transport = dict(settings.broker_transport_options())
    transport["visibility_timeout"] = max(int(transport.get("visibility_timeout", 0)),
                                          VISIBILITY_TIMEOUT_S)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.conf.update(
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": transport["visibility_timeout"]},
        visibility_timeout=transport["visibility_timeout"],
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # safe only because every step re-checks its lease
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=60,
        task_soft_time_limit=SOFT_TIME_LIMIT_S,
        task_time_limit=HARD_TIME_LIMIT_S,
        task_ignore_result=True,  # the database holds every outcome
        task_serializer="json",
        accept_content=["json"],
        # Each reconcile expires one interval after beat sends it: a worker busy with long steps
        # discards stale ones rather than run a growing backlog that holds every run's next step.
        beat_schedule={"reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_s,
                                     "options": {"expires": settings.reconcile_interval_s}}},
        beat_schedule_filename=str(settings.data_dir.resolve() / "celerybeat-schedule"),
    )
    return app


app = make_app(get_settings())


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, logfile: str | None = None,
                       **_kwargs: object) -> None:
    """Our handlers instead of Celery's (worker and beat): the chosen format, the ids of the
    work in hand and the secret redactor on every record (server/logsetup.py)."""
    settings = get_settings()
    logsetup.configure(settings, level=loglevel or logging.INFO, filename=logfile or None)
    if settings.log_format == "json":
        # Anything a library prints becomes a record rather than a stray non-JSON line.
        app.log.redirect_stdouts_to_logger(logging.getLogger("celery.redirected"), loglevel=logging.WARNING)


@celeryd_init.connect
def _json_from_the_start(instance: Any = None, **_kwargs: object) -> None:
    """In json mode, before the worker says anything: no printed banner, and warnings it
    raises while starting (e.g. running as root) as records. Beat prints its banner before
    any signal, so run it as `celery --quiet beat`."""
    settings = get_settings()
    if settings.log_format != "json":
        return
    if instance is not None:
        instance.quiet = True
    logsetup.configure(settings)
    logging.captureWarnings(True)
