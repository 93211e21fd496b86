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
    assert sample(body, "caddie_queue_depth") == 0
    assert sample(body, "caddie_pods_alive") == 0
    assert sample(body, "caddie_log_lag_seconds") == 0
