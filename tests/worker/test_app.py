"""The Celery app and its tasks: configuration, names, and one run through a real worker."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlmodel import Session, SQLModel, select

from server.config import Settings
from server.db import make_engine
from server.dispatch import ADVANCE_RUN, RECONCILE
from server.models import Run, RunEvent
from tests.databases import redis_url as shared_redis_url
from tests.factories import make_experiment, make_run
from worker.app import HARD_TIME_LIMIT_S, SOFT_TIME_LIMIT_S, make_app

REPO = Path(__file__).resolve().parents[2]


def test_app_is_configured_for_short_idempotent_steps(tmp_path):
    app = make_app(Settings(data_dir=tmp_path, reconcile_interval_s=7))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert SOFT_TIME_LIMIT_S == conf.task_soft_time_limit < conf.task_time_limit == HARD_TIME_LIMIT_S
    # Redelivery must never catch a step that is still running: above the hard limit everywhere.
    for timeout in (conf.broker_transport_options["visibility_timeout"],
                    conf.result_backend_transport_options["visibility_timeout"],
                    conf.visibility_timeout):
        assert timeout > HARD_TIME_LIMIT_S
    assert conf.beat_schedule["reconcile"] == {"task": RECONCILE, "schedule": 7.0, "options": {"expires": 7.0}}
    assert conf.beat_schedule_filename == str(tmp_path.resolve() / "celerybeat-schedule")
    assert conf.broker_url == "caddiefs://"
    assert (tmp_path / "broker" / "queue").is_dir()


def test_redis_broker_when_configured(tmp_path):
    app = make_app(Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/5"))
    assert app.conf.broker_url == "redis://127.0.0.1:6379/5"
    assert app.conf.broker_transport_options["visibility_timeout"] >= 3600


def test_tasks_are_registered_under_the_servers_names():
    from worker import tasks
    from worker.app import app

    assert tasks.advance_run.name == ADVANCE_RUN and tasks.reconcile.name == RECONCILE
    assert {ADVANCE_RUN, RECONCILE} <= set(app.tasks)


@pytest.mark.e2e
@pytest.mark.parametrize("broker", ["filesystem", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_real_worker_takes_runs_to_their_end(tmp_path, broker):
    """Beat's message (RECONCILE) wakes two queued runs; the worker steps them to the end."""
    data_dir, database = tmp_path / "data", f"sqlite:///{tmp_path / 'caddie.db'}"
    # Databases 8-11 of the shared Redis: 12-14 belong to the e2e tests, which may run at
    # the same time under pytest -n.
    redis_url = shared_redis_url(os.getpid() % 4 + 8) if broker == "redis" else ""
    settings = Settings(data_dir=data_dir, database_url=database, redis_url=redis_url or None)
    engine = make_engine(database)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        lost = make_run(session, make_experiment(session, provider="moon"), seed=1)
        stopped = make_run(session, make_experiment(session), seed=2, cancel_requested=True)
        ids = (lost.id, stopped.id)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CADDIE_DATA_DIR": str(data_dir),
           "CADDIE_DATABASE_URL": database, "CADDIE_REDIS_URL": redis_url}
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                               "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        producer = Celery("test-producer", broker=settings.broker_url())
        producer.conf.broker_transport_options = settings.broker_transport_options()
        producer.send_task(RECONCILE)
        runs = wait_for_end(engine, ids, timeout_s=60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert [(r.status, r.reason) for r in runs] == [
        ("failed", "unknown provider 'moon' (known: local, runpod, ssh)"), ("cancelled", "cancelled on request")], (
        (tmp_path / "worker.log").read_text())
    with Session(engine) as session:
        events = session.exec(select(RunEvent.to_status).where(RunEvent.run_id == ids[0]).order_by(RunEvent.id)).all()
    assert events == ["queued", "provisioning", "failed"]


@pytest.mark.e2e
def test_a_backlog_of_stale_reconciles_is_discarded_and_a_fresh_one_runs(tmp_path):
    """A worker that was busy finds beat's old reconciles in its queue: it drops each one past
    its expiry rather than run them all before the next step of any run; the fresh one runs."""
    data_dir, database = tmp_path / "data", f"sqlite:///{tmp_path / 'caddie.db'}"
    settings = Settings(data_dir=data_dir, database_url=database, reconcile_interval_s=1)
    engine = make_engine(database)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        run_id = make_run(session, make_experiment(session, provider="moon"), seed=1).id
    beat = make_app(settings).conf.beat_schedule["reconcile"]
    producer = Celery("test-producer", broker=settings.broker_url())
    producer.conf.broker_transport_options = settings.broker_transport_options()
    for _ in range(20):
        producer.send_task(beat["task"], **beat["options"])
    time.sleep(1.5)  # all twenty are now past their expiry
    env = {**os.environ, "PYTHONPATH": str(REPO), "CADDIE_DATA_DIR": str(data_dir),
           "CADDIE_DATABASE_URL": database, "CADDIE_REDIS_URL": ""}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                                   "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    discarded = f"Discarding revoked task: {RECONCILE}["
    try:
        deadline = time.monotonic() + 60
        while (tmp_path / "worker.log").read_text().count(discarded) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        producer.send_task(beat["task"], **beat["options"])  # beat's next one, on time
        (run,) = wait_for_end(engine, [run_id], timeout_s=60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    text = (tmp_path / "worker.log").read_text()
    assert text.count(discarded) == 20, text
    assert run.status == "failed", text  # the fresh reconcile woke it; its provider is unknown


def wait_for_end(engine, ids, *, timeout_s: float) -> list[Run]:
    deadline = time.monotonic() + timeout_s
    while True:
        with Session(engine) as session:
            runs = [session.get(Run, i) for i in ids]
            if all(r.status in ("succeeded", "failed", "cancelled") for r in runs) or time.monotonic() > deadline:
                return runs
        time.sleep(0.2)


CELERY_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")  # printed, not logged


@pytest.mark.e2e
def test_a_real_worker_logs_one_json_object_per_line(tmp_path):
    """CADDIE_LOG_FORMAT=json in a prefork worker: every line parses, a step's lines carry the
    run and experiment ids, and a secret in a record comes out redacted."""
    secret = "rpa_WORKERLOGSECRET42"
    data_dir, database = tmp_path / "data", f"sqlite:///{tmp_path / 'caddie.db'}"
    engine = make_engine(database)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        experiment = make_experiment(session, provider=secret)  # named in the failure it logs
        run = make_run(session, experiment, seed=1)
        run_id, experiment_id = run.id, experiment.id
    env = {**os.environ, "PYTHONPATH": str(REPO), "CADDIE_DATA_DIR": str(data_dir),
           "CADDIE_DATABASE_URL": database, "CADDIE_REDIS_URL": "", "CADDIE_LOG_FORMAT": "json",
           "CADDIE_RUNPOD_API_KEY": secret}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool",
                                   "prefork", "--concurrency", "1", "--loglevel", "INFO",
                                   "--without-gossip", "--without-mingle"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        producer = Celery("test-producer", broker=Settings(data_dir=data_dir).broker_url())
        producer.conf.broker_transport_options = Settings(data_dir=data_dir).broker_transport_options()
        producer.send_task(ADVANCE_RUN, args=[run_id])
        (ended,) = wait_for_end(engine, [run_id], timeout_s=60)
        time.sleep(0.5)  # the step's last lines
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    text = log_path.read_text()
    assert ended.status == "failed", text
    assert secret not in text
    lines = [line for line in text.splitlines() if line and not CELERY_NOTICE.match(line)]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["message"].endswith("ready.") for r in records)  # Celery's own records too
    failed = [r for r in records if r["logger"] == "worker.director" and "failed" in r["message"]]
    assert failed and failed[0]["run_id"] == run_id and failed[0]["experiment_id"] == experiment_id
    assert "unknown provider '[redacted]'" in failed[0]["message"]
