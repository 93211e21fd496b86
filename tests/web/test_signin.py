"""Signing in to the pages with an API token, and forms refusing anyone not signed in."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.auth import create_token
from server.main import create_app
from tests.web.dom import form_token, parse


@pytest.fixture
def browser(settings_env: None) -> Iterator[TestClient]:
    """A browser-like client that has not signed in."""
    with TestClient(create_app(), headers={"accept": "text/html"}) as client:
        yield client


def test_sign_in_sets_a_private_cookie_and_goes_back(browser: TestClient, session: Session) -> None:
    token = create_token(session, name="grace")[1]
    csrf = form_token(browser, "/signin?next=/submit")
    response = browser.post("/signin", data={"csrf_token": csrf, "token": token, "next": "/submit"},
                            follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/submit"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("caddie_token="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert browser.get("/submit").status_code == 200  # now signed in


def test_a_wrong_token_is_refused_with_the_reason(browser: TestClient) -> None:
    csrf = form_token(browser, "/signin")
    response = browser.post("/signin", data={"csrf_token": csrf, "token": "cad_nope"})
    assert response.status_code == 401
    assert parse(response.text).find("p", id="token-error").text() == "the API token is unknown or revoked"
    assert "caddie_token" not in response.cookies


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "javascript:alert(1)"])
def test_next_never_leaves_the_site(browser: TestClient, session: Session, target: str) -> None:
    token = create_token(session, name="grace")[1]
    csrf = form_token(browser, "/signin")
    response = browser.post("/signin", data={"csrf_token": csrf, "token": token, "next": target},
                            follow_redirects=False)
    assert response.headers["location"] == "/"


def test_forms_need_a_signed_in_user(browser: TestClient) -> None:
    page = browser.get("/submit")
    assert page.status_code == 401
    link = parse(page.text).find("a", href="/signin?next=/submit")
    assert link is not None
