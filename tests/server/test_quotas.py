"""A member's limits (server/quotas.py) and the fast bulk cancel: a flood is refused with
the setting named, an honest member's experiment still gets in near the front, and a
cancelled flood ends in one statement."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.main import create_app
from server.auth import create_token
from server.config import get_settings
from server.models import Run, RunEvent


@pytest.fixture
def limits(settings_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_MEMBER_MAX_ACTIVE_RUNS", "20")
    monkeypatch.setenv("CADDIE_MEMBER_EXPERIMENTS_PER_HOUR", "4")
    get_settings.cache_clear()


def member(session: Session, name: str) -> Iterator[TestClient]:
    token = create_token(session, name=name)[1]
    with TestClient(create_app(), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.fixture
def mallory(limits: None, session: Session) -> Iterator[TestClient]:
    yield from member(session, "mallory")


@pytest.fixture
def grace(limits: None, session: Session) -> Iterator[TestClient]:
    yield from member(session, "grace")


def spec(name: str, seeds: int, **fields: object) -> dict[str, object]:
    return {"name": name, "preset": "tiny", "seeds": list(range(seeds)), **fields}


def test_only_an_admin_sets_a_priority(mallory: TestClient, client: TestClient,
                                       session: Session) -> None:
    response = mallory.post("/api/experiments", json=spec("jump", 1, priority=100))
    assert response.status_code == 403
    assert response.json()["detail"].startswith("priority:")
    assert session.exec(select(Run)).all() == []
    session.rollback()  # end the read: on SQLite the test's open transaction holds the lock
    assert client.post("/api/experiments", json=spec("urgent", 1, priority=100)).status_code == 201


def test_a_flood_is_limited_and_an_honest_run_waits_behind_at_most_the_cap(
        mallory: TestClient, grace: TestClient, session: Session) -> None:
    answers = [mallory.post("/api/experiments", json=spec(f"flood {n}", 8)).status_code
               for n in range(6)]
    assert answers == [201, 201, 429, 429, 429, 429]  # 16 runs; 8 more would pass 20
    refused = mallory.post("/api/experiments", json=spec("one more", 5))
    assert "CADDIE_MEMBER_MAX_ACTIVE_RUNS=20" in refused.json()["detail"]
    assert mallory.post("/api/experiments", json=spec("fits", 4)).status_code == 201
    over_rate = mallory.post("/api/experiments", json=spec("fourth", 1))
    assert over_rate.status_code == 429  # 20 runs not ended already
    honest = grace.post("/api/experiments", json=spec("honest", 3))
    assert honest.status_code == 201

    honest_id = honest.json()["runs"][0]["id"]
    # Runs queue by priority (all 0 for members), then submission: ahead of grace's, at most
    # the cap of mallory's.
    ahead = session.exec(select(Run).where(col(Run.id) < honest_id,
                                           Run.status == "queued")).all()
    assert len(ahead) == 20


def test_submissions_per_hour(limits: None, session: Session,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_MEMBER_MAX_ACTIVE_RUNS", "1000")
    get_settings.cache_clear()
    for client in member(session, "mallory"):
        answers = [client.post("/api/experiments", json=spec(f"e{n}", 1)).status_code
                   for n in range(5)]
        assert answers == [201, 201, 201, 201, 429]
        assert "CADDIE_MEMBER_EXPERIMENTS_PER_HOUR=4" in client.post(
            "/api/experiments", json=spec("e", 1)).json()["detail"]


def test_cancelling_a_large_experiment_is_one_statement(
        client: TestClient, session: Session, engine: Engine) -> None:
    created = client.post("/api/experiments", json=spec("big", 64, variants=[
        {"name": f"v{n}", "config": {"num_layers": 3}} for n in range(3)]))
    assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    updates: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE run "):
            updates.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.post(f"/api/experiments/{experiment_id}/cancel")
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert response.status_code == 200
    runs = session.exec(select(Run).where(Run.experiment_id == experiment_id)).all()
    assert len(runs) == 256 and {r.status for r in runs} == {"cancelled"}
    assert len(updates) == 1  # not one per run
    events = session.exec(select(RunEvent).where(RunEvent.to_status == "cancelled")).all()
    assert sorted(e.run_id for e in events) == sorted(r.id for r in runs)
    assert {(e.from_status, e.reason) for e in events} == {("queued", "cancelled by user")}
