"""The app as a whole: health, OpenAPI, and no traceback ever reaching a user."""

import logging
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlmodel import Session

from app.main import create_app
from server.db import get_session


def test_healthz_answers_when_the_database_does(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_is_gone(settings_env: None) -> None:
    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app()

    def session_on_dead_database():  # type: ignore[no-untyped-def]
        with Session(dead) as session:
            yield session

    app.dependency_overrides[get_session] = session_on_dead_database
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert (response.status_code, response.json()) == (503, {"detail": "database unavailable"})


def test_unexpected_errors_are_500_without_a_traceback(
    settings_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app()

    def broken_session():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret connection string postgres://u:pw@db")
        yield

    app.dependency_overrides[get_session] = broken_session
    with caplog.at_level(logging.ERROR, logger="app.main"), \
            TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/experiments")
    assert (response.status_code, response.json()) == (500, {"detail": "internal error"})
    assert "pw@db" not in response.text
    assert "GET /api/experiments" in caplog.text


def test_openapi_lists_every_operation(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/api/experiments", "/api/experiments/{experiment_id}",
        "/api/experiments/{experiment_id}/cancel", "/api/experiments/{experiment_id}/seeds",
        "/api/experiments/{experiment_id}/significance", "/api/queue", "/api/estimate",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/log", "/api/runs/{run_id}/logs/stream", "/api/runs/{run_id}/cancel",
        "/api/leaderboard", "/api/compare", "/healthz", "/readyz", "/metrics",
        "/api/reproduce/preview", "/api/reproduce", "/api/reproduce/zip/preview",
        "/api/reproduce/zip", "/api/experiments/{experiment_id}/reproduce/preview",
        "/api/experiments/{experiment_id}/reproduce", "/api/experiments/{experiment_id}/verdict",
        "/api/experiments/{experiment_id}/evidence",
    }
    assert set(paths["/api/experiments"]) == {"get", "post"}
    assert client.get("/docs").status_code == 200


def test_api_docs_load_swagger_ui_from_this_server(client: TestClient) -> None:
    page = client.get("/docs").text
    scripts_and_styles = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/docs/assets/swagger-ui-bundle.js" in scripts_and_styles
    assert "/docs/assets/swagger-ui.css" in scripts_and_styles
    assert not [url for url in scripts_and_styles if "://" in url]  # no CDN
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/docs/assets/index.html").status_code == 404  # only the files the page needs
    assert client.get("/redoc").status_code == 404
