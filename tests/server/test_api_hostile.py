"""Hostile bodies for POST /api/experiments that pydantic's own checks let through: each is a
422 naming its field, and nothing is stored."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.models import Experiment, Run

BASE = '{"name": "hostile", "preset": "tiny", "seeds": [1, 2, 3], '


@pytest.mark.parametrize("tail, field", [
    # A lone surrogate is valid JSON but no UTF-8: it could be stored but never sent back.
    ('"config": {"data_path": "\\ud800"}}', "config"),
    ('"config": {"\\udc00": 1}}', "config"),
    ('"variants": [{"name": "v", "config": {"tokenizer_path": "x\\udfff"}}]}', "variants"),
    ('"reference_experiment_id": 999}', "reference_experiment_id"),
])
def test_hostile_bodies_are_422_naming_the_field(client: TestClient, session: Session, tail: str,
                                                 field: str) -> None:
    response = client.post("/api/experiments", content=BASE + tail,
                           headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]
    assert session.exec(select(Experiment)).all() == [] and session.exec(select(Run)).all() == []


def test_an_existing_reference_experiment_is_accepted(client: TestClient) -> None:
    first = client.post("/api/experiments", json={"name": "ref", "preset": "tiny", "seeds": [1]})
    assert first.status_code == 201
    second = client.post("/api/experiments", json={"name": "b", "preset": "tiny", "seeds": [1],
                                                   "reference_experiment_id": first.json()["id"]})
    assert second.status_code == 201, second.text


def _set_local(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from server.config import get_settings
    monkeypatch.setenv("CADDIE_LOCAL_PROVIDER", value)
    get_settings.cache_clear()


@pytest.mark.parametrize("provider", ["local", None])  # None: the spec's default provider, local
def test_local_is_refused_at_submit_unless_the_operator_turns_it_on(
        client: TestClient, session: Session, engine, monkeypatch: pytest.MonkeyPatch, provider: str | None) -> None:
    _set_local(monkeypatch, "off")
    spec = {"name": "on-the-host", "kind": "script", "files": {"train_gpt.py": "import os\n"}, "seeds": [1]}
    if provider:
        spec["provider"] = provider

    refused = client.post("/api/experiments", json=spec)  # even an admin

    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"][:2] == ["body", "provider"] and "CADDIE_LOCAL_PROVIDER=off" in detail["msg"]
    assert session.exec(select(Experiment)).all() == [] and session.exec(select(Run)).all() == []


def test_local_when_admin_only_refuses_members_and_takes_admins(
        client: TestClient, engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.auth import create_token
    _set_local(monkeypatch, "admin")
    with Session(engine) as own:
        member = create_token(own, name="mallory")[1]
    spec = {"name": "on-the-host", "preset": "tiny", "seeds": [1], "provider": "local"}

    refused = client.post("/api/experiments", json=spec, headers={"Authorization": f"Bearer {member}"})
    assert refused.status_code == 403, refused.text
    assert "provider" in refused.text and "CADDIE_LOCAL_PROVIDER=admin" in refused.text
    with Session(engine) as session:
        assert session.exec(select(Experiment)).all() == []

    assert client.post("/api/experiments", json=spec).status_code == 201  # the admin's
    _set_local(monkeypatch, "members")
    taken = client.post("/api/experiments", json=spec, headers={"Authorization": f"Bearer {member}"})
    assert taken.status_code == 201, taken.text


def test_a_rerun_on_local_is_refused_like_a_submit(client: TestClient, engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixture_files import FIXTURES
    _set_local(monkeypatch, "off")
    body = {"source": {"path": str(FIXTURES / "reproduce" / "records" / "good")}, "overrides": {"provider": "local"}}

    refused = client.post("/api/reproduce", json=body)

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"][:2] == ["body", "provider"]
    with Session(engine) as session:
        assert session.exec(select(Experiment)).all() == []
