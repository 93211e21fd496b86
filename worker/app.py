"""The Celery app of the worker and of beat.

    celery -A worker.app worker --pool prefork      # runs steps
    celery -A worker.app beat                       # exactly one: the periodic reconcile

Tasks are short idempotent steps (worker.tasks), so the configuration favours redelivery
over loss: acks after the step, one message per process, requeue when a process dies.
Redis when CADDIE_REDIS_URL is set, else Celery's filesystem transport in the data dir.
"""

import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from server import redaction
from server.config import Settings, get_settings
from server.queue import RECONCILE

SOFT_TIME_LIMIT_S = 240  # a step raises SoftTimeLimitExceeded; its lease then expires
HARD_TIME_LIMIT_S = 300  # the process running the step is killed
# Redis redelivers an unacked message after this long; it must exceed any step's duration,
# or a step still running gets a second copy. Set in all three places Celery reads it.
VISIBILITY_TIMEOUT_S = 3600


def make_app(settings: Settings) -> Celery:
    app = Celery("caddie", broker=settings.broker_url(), include=["worker.tasks"])
    transport = dict(settings.broker_transport_options())
    transport["visibility_timeout"] = max(int(transport.get("visibility_timeout", 0)),  # type: ignore[call-overload]
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
        beat_schedule={"reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_s}},
        beat_schedule_filename=str(settings.data_dir.resolve() / "celerybeat-schedule"),
    )
    return app


app = make_app(get_settings())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_secrets(logger: logging.Logger, **_kwargs: object) -> None:
    redaction.install(get_settings(), logger)
