"""Who may do what: tokens stored hashed, every change needs one, owners and admins."""

import hashlib
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from app.main import create_app
from server.auth import Role, create_token, revoke_token
from tests.factories import make_experiment, make_run

SPEC = {"name": "wd 0.04", "preset": "baseline", "seeds": [1, 2, 3]}


def client_for(token: str | None) -> TestClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(create_app(), headers=headers)


@pytest.fixture
def member(session: Session) -> str:
    return create_token(session, name="grace")[1]


@pytest.fixture
def other_member(session: Session) -> str:
    return create_token(session, name="linus")[1]


def test_tokens_are_stored_only_as_their_sha256(session: Session) -> None:
    _, token = create_token(session, name="grace", role=Role.admin)
    assert token.startswith("cad_") and len(token) > 40
    stored = session.execute(text("SELECT * FROM apitoken")).all()
    session.rollback()
    assert len(stored) == 1 and token not in str(stored)
    assert hashlib.sha256(token.encode()).hexdigest() in stored[0]


def test_every_change_refuses_a_missing_or_unknown_token(anonymous: TestClient, session: Session) -> None:
    experiment = make_experiment(session)
    run = make_run(session, experiment, seed=1)
    ids = {"experiment_id": experiment.id, "run_id": run.id}
    # Every operation that is not a read, as the schema lists them: a new endpoint is covered too.
    changes = [(method, path.format(**ids))
               for path, operations in anonymous.get("/openapi.json").json()["paths"].items()
               for method in operations if method in {"post", "put", "patch", "delete"}]
    assert ("post", f"/api/experiments/{experiment.id}/seeds") in changes
    for client in (anonymous, client_for("cad_not-a-real-token")):
        with client:
            for method, path in changes:
                body = SPEC if path == "/api/experiments" else {"seeds": [2]}
                assert client.request(method, path, json=body).status_code == 401, (method, path)
    assert session.execute(text("SELECT count(*) FROM experiment")).scalar() == 1
    assert session.execute(text("SELECT status FROM run")).scalar() == "queued"


def test_a_revoked_token_stops_working(settings_env: None, session: Session) -> None:
    row, token = create_token(session, name="grace")
    with client_for(token) as client:
        assert client.post("/api/experiments", json=SPEC).status_code == 201
        assert row.id is not None
        revoke_token(session, row.id)
        response = client.post("/api/experiments", json=SPEC)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_only_the_owner_or_an_admin_may_cancel(settings_env: None, member: str,
                                               other_member: str, admin_token: str) -> None:
    with client_for(member) as grace, client_for(other_member) as linus, \
            client_for(admin_token) as admin:
        mine = grace.post("/api/experiments", json=SPEC).json()
        assert mine["owner"] == "grace"
        run_id = mine["runs"][0]["id"]
        assert linus.post(f"/api/runs/{run_id}/cancel").status_code == 403
        refused = linus.post(f"/api/experiments/{mine['id']}/cancel")
        assert refused.status_code == 403 and "owner" in refused.json()["detail"]
        assert grace.post(f"/api/runs/{run_id}/cancel").status_code == 200
        assert admin.post(f"/api/experiments/{mine['id']}/cancel").status_code == 200
        assert grace.get(f"/api/experiments/{mine['id']}").json()["status"] == "cancelled"


@pytest.fixture
def private_reads(setting: Callable[[str, str], None]) -> None:
    setting("CADDIE_PUBLIC_READ", "false")


def test_reading_is_public_by_default(anonymous: TestClient) -> None:
    assert anonymous.get("/api/leaderboard").status_code == 200
    assert anonymous.get("/").status_code == 200


def test_private_reads_need_a_token(private_reads: None, member: str) -> None:
    with client_for(None) as anonymous, client_for(member) as grace:
        assert anonymous.get("/api/leaderboard").status_code == 401
        assert anonymous.get("/api/experiments").status_code == 401
        assert anonymous.get("/", headers={"accept": "text/html"}).status_code == 401
        assert anonymous.get("/signin").status_code == 200  # the way in stays open
        assert anonymous.get("/static/app.css").status_code == 200
        assert grace.get("/api/leaderboard").status_code == 200
