"""Error pages, static files and what every page carries (assets, times, landmarks)."""

from collections.abc import Iterator
from datetime import UTC

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.main import create_app
from tests.factories import make_experiment, make_run
from tests.web.dom import fetch, parse
from web import pages


def test_unknown_url_is_a_styled_404_page(client: TestClient) -> None:
    page = fetch(client, "/no/such/page", status=404)

    assert page.find("h1").text() == "404 Not Found"
    assert page.find("ul", class_="problems").text() == "No page at /no/such/page."
    assert page.find("link", rel="stylesheet").attrs["href"] == "/static/app.css"
    assert [a.attrs["href"] for a in page.find("section", class_="error").find_all("a")] == [
        "/", "/experiments"]


def test_the_api_keeps_its_json_errors(client: TestClient) -> None:
    for url, detail in [("/api/no/such/thing", "Not Found"),
                        ("/api/runs/999", "run 999 not found")]:
        response = client.get(url)
        assert response.status_code == 404
        assert response.json() == {"detail": detail}
    # A client that does not ask for HTML gets JSON for unknown pages too.
    response = client.get("/no/such/page", headers={"accept": "application/json"})
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


def test_a_failing_page_is_a_500_page_without_internals(settings_env: None) -> None:
    failing = APIRouter(route_class=pages.PageRoute)

    @failing.get("/explode")
    def explode() -> None:
        raise RuntimeError("secret internals")

    app = create_app()
    app.include_router(failing)
    with TestClient(app) as client:
        response = client.get("/explode")

    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert parse(response.text).find("h1").text() == "500 Internal Server Error"


@pytest.fixture
def router_only_client(settings_env: None) -> Iterator[TestClient]:
    """The app with the pages included the plain way, `app.include_router(router)`."""
    app = create_app()
    app.include_router(pages.router)
    with TestClient(app) as client:
        yield client


def test_pages_work_when_only_the_router_is_included(router_only_client: TestClient,
                                                     session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1)

    assert fetch(router_only_client, "/").find("h1").text() == "Leaderboard"
    assert fetch(router_only_client, f"/runs/{run.id}").find("h1").text() == "Seed 1 queued"
    assert fetch(router_only_client, "/runs/77", status=404).find("h1").text() == "404 Not Found"
    schema_paths = router_only_client.get("/openapi.json").json()["paths"]
    assert "/runs/{run_id}" not in schema_paths and "/api/runs/{run_id}" in schema_paths


def test_static_files_are_served_locally(client: TestClient) -> None:
    css = client.get("/static/app.css")
    js = client.get("/static/app.js")

    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.text == (pages.STATIC_DIR / "app.js").read_text()
    assert client.get("/static/missing.css").status_code == 404
    assert client.get("/static/..%2Fpages.py").status_code == 404


def test_every_page_links_its_assets_and_writes_utc_times(client: TestClient,
                                                          session: Session) -> None:
    experiment = make_experiment(session, name="times")
    run = make_run(session, experiment, seed=1)
    created = experiment.created_at.astimezone(UTC)

    for url in ["/", "/experiments", f"/experiments/{experiment.id}", f"/runs/{run.id}"]:
        page = fetch(client, url)
        assert page.find("html").attrs["lang"] == "en"
        assert page.find("link", rel="stylesheet").attrs["href"] == "/static/app.css"
        assert [s.attrs["src"] for s in page.find_all("script") if "src" in s.attrs] == [
            "/static/app.js"]
        assert page.find("main").attrs["id"] == "main"
        assert page.find("a", class_="skip").attrs["href"] == "#main"

    spec = fetch(client, f"/experiments/{experiment.id}").find(
        "section", aria_labelledby="spec-heading")
    submitted = spec.find("time")  # the experiment has not finished: one time only
    assert submitted.attrs["datetime"] == created.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert submitted.text() == created.strftime("%Y-%m-%d %H:%M:%S UTC")
