"""Readiness and Prometheus metrics, on SQLite and PostgreSQL."""

import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from server.models import LogChunk, Pod, utcnow
from tests.factories import make_experiment, make_run


def sample(body: str, metric: str, labels: str = "") -> float:
    """The value of one sample line of the exposition, e.g. caddie_runs{state="queued"}."""
    key = f"{metric}{{{labels}}}" if labels else metric
    match = re.search(rf"^{re.escape(key)} (\S+)$", body, re.M)
    assert match, f"{key} missing from:\n{body}"
    return float(match.group(1))


def test_ready_when_migrated_to_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_not_ready_when_the_schema_is_behind(client: TestClient, session: Session) -> None:
    session.connection().execute(text("UPDATE alembic_version SET version_num = 'older'"))
    session.commit()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "older" in response.json()["detail"]


def test_metrics_count_runs_pods_queue_and_log_lag(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session)
    for seed, status in enumerate(["queued", "queued", "running", "succeeded", "failed"]):
        make_run(session, experiment, seed=seed, status=status)
    running = make_run(session, experiment, seed=9, status="running")
    session.add(LogChunk(run_id=running.id, offset=0, nbytes=6, text="hello\n",
                         created_at=utcnow() - timedelta(seconds=90)))
    session.add(Pod(provider="ssh", name="caddie-run-9", status="busy"))
    session.add(Pod(provider="ssh", name="caddie-run-8", status="terminated"))
    session.commit()

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert sample(body, "caddie_runs", 'state="queued"') == 2
    assert sample(body, "caddie_runs", 'state="running"') == 2
    assert sample(body, "caddie_runs", 'state="cancelled"') == 0
    assert sample(body, "caddie_queue_depth") == 2
    assert sample(body, "caddie_pods_alive", 'provider="ssh"') == 1
    assert 89 <= sample(body, "caddie_log_lag_seconds") < 200
    assert "# TYPE caddie_runs gauge" in body


def test_metrics_on_an_empty_database(client: TestClient) -> None:
    body = client.get("/metrics").text
    for name in ("caddie_queue_depth", "caddie_pods_alive", "caddie_log_lag_seconds",
                 "caddie_spend_dollars_per_hour", "caddie_spent_dollars"):
        assert sample(body, name) == 0, name


def test_metrics_spend_per_hour_and_dollars_spent(client: TestClient, session: Session) -> None:
    """Live pods count at their price per hour; every priced pod counts toward dollars spent.
    A pod's own price wins; without one, the price kept on its run (server/costs.py)."""
    experiment = make_experiment(session, provider="runpod")
    now = utcnow()
    priced_run = make_run(session, experiment, seed=1, status="running",
                          results={"worker": {"pod": {"cost_per_hour": 99.0}}})
    run_priced_only = make_run(session, experiment, seed=2, status="running",
                               results={"worker": {"pod": {"cost_per_hour": 10.0}}})
    ended = make_run(session, experiment, seed=3, status="succeeded")
    local = make_run(session, experiment, seed=4, status="running")
    session.add(Pod(run_id=priced_run.id, provider="runpod", name="caddie-run-1", status="busy",
                    cost_per_hour=20.0, created_at=now - timedelta(hours=1)))
    session.add(Pod(run_id=run_priced_only.id, provider="runpod", name="caddie-run-2", status="ready",
                    created_at=now - timedelta(minutes=30)))
    session.add(Pod(run_id=ended.id, provider="runpod", name="caddie-run-3", status="terminated",
                    cost_per_hour=12.0, created_at=now - timedelta(hours=3),
                    terminated_at=now - timedelta(hours=1)))
    session.add(Pod(run_id=local.id, provider="local", name="caddie-run-4", status="busy",
                    created_at=now - timedelta(hours=5)))
    session.commit()

    body = client.get("/metrics").text
    assert sample(body, "caddie_spend_dollars_per_hour") == 30.0  # 20 (its own price) + 10 (its run's)
    # 20 $/h x 1 h + 10 $/h x 0.5 h + 12 $/h x 2 h, give or take the seconds of the test
    assert 49.0 <= sample(body, "caddie_spent_dollars") < 49.2
    assert "# TYPE caddie_spend_dollars_per_hour gauge" in body
