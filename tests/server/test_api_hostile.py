"""Hostile requests: bodies for POST /api/experiments that pydantic's own checks let through
(each a 422 naming its field, nothing stored), cross-site posts riding the sign-in cookie,
bodies too large or from strangers, and reads that CADDIE_PUBLIC_READ=false must close."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.config import get_settings
from server.models import Experiment, Run
from tests.factories import make_experiment, make_run

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


def test_a_cross_site_form_post_with_the_sign_in_cookie_changes_nothing(
        anonymous: TestClient, session: Session, admin_token: str) -> None:
    """A page on another site can make a signed-in browser POST a form to the API with its
    cookie; the API takes changes by bearer token only."""
    run = make_run(session, make_experiment(session), seed=1, status="queued")
    anonymous.cookies.set("caddie_token", admin_token)

    response = anonymous.post(f"/api/runs/{run.id}/cancel", content="x=1", headers={
        "origin": "https://evil.example", "content-type": "application/x-www-form-urlencoded"})

    assert response.status_code == 401
    assert "Bearer" in response.json()["detail"]
    session.refresh(run)
    assert run.status == "queued"


def test_an_unknown_token_is_refused_before_its_body_is_read(
        anonymous: TestClient, session: Session) -> None:
    received = 0

    def body() -> Iterator[bytes]:
        nonlocal received
        for _ in range(64):  # 64 MiB if it were all read
            received += 1
            yield b"x" * (1024 * 1024)

    response = anonymous.post("/api/experiments", content=body(), headers={
        "authorization": "Bearer cad_unknown", "content-type": "application/json"})

    assert response.status_code == 401
    assert received <= 2  # the first pieces may be in flight; the rest is never asked for
    assert session.exec(select(Experiment)).all() == []


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_is_413_before_it_is_parsed(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, declared: bool) -> None:
    """By Content-Length at once; without one (chunked), as it streams past the limit."""
    monkeypatch.setenv("CADDIE_MAX_BODY_BYTES", str(1024 * 1024))
    get_settings.cache_clear()
    limit = get_settings().max_body_bytes
    big = b'{"name": "' + b"x" * limit + b'"}'
    content = big if declared else iter([big[i:i + 65536] for i in range(0, len(big), 65536)])

    response = client.post("/api/experiments", content=content,
                           headers={"content-type": "application/json"})

    assert response.status_code == 413


def test_a_stranger_may_send_only_a_small_body(anonymous: TestClient) -> None:
    """Forms without a token (the sign-in form) need no more than the anonymous limit."""
    big = "x" * get_settings().anonymous_body_bytes
    response = anonymous.post("/signin", data={"token": big, "csrf_token": "x"})
    assert response.status_code == 413
    small = anonymous.post("/signin", data={"token": "cad_x", "csrf_token": "x"})
    assert small.status_code == 403  # read, then refused for its missing CSRF token


def test_private_read_covers_compare_metrics_and_the_api_description(
        anonymous: TestClient, client: TestClient, session: Session,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = make_experiment(session), make_experiment(session)
    paths = [f"/api/compare?a={a.id}&b={b.id}", "/metrics", "/openapi.json", "/docs",
             "/docs/assets/swagger-ui.css"]
    assert [anonymous.get(p).status_code for p in paths] == [200] * 5  # public by default

    monkeypatch.setenv("CADDIE_PUBLIC_READ", "false")
    get_settings.cache_clear()

    assert [anonymous.get(p).status_code for p in paths] == [401] * 5
    assert [client.get(p).status_code for p in paths] == [200] * 5
    assert anonymous.get("/healthz").status_code == 200  # for load balancers


@pytest.mark.parametrize("seconds, status", [(1e308, 422), (1e7, 422), (14400.5, 422),
                                             (14400, 201), (0, 201)])
def test_the_training_cap_is_bounded(client: TestClient, seconds: float, status: int) -> None:
    """A run's pod deadline follows the cap: 1e7 s would keep a rented pod 115 days."""
    response = client.post("/api/experiments", json={
        "name": "long", "preset": "tiny", "seeds": [1],
        "config": {"max_wallclock_seconds": seconds}})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["detail"][0]["msg"].startswith("config.max_wallclock_seconds")
