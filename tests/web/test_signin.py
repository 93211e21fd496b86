"""Signing in to the pages with an API token, and forms refusing anyone not signed in."""

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.main import create_app
from server.auth import create_token
from server.config import get_settings
from tests.factories import make_experiment, make_run
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


def signed_in_browser(token: str) -> TestClient:
    return TestClient(create_app(), headers={"accept": "text/html"},
                      cookies={"caddie_token": token})


def cancel_with(browser: TestClient, run_id: int, csrf: str) -> int:
    browser.cookies.set("caddie_csrf", csrf)
    return browser.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf},
                        follow_redirects=False).status_code


def test_a_form_token_is_bound_to_the_signed_in_session(
        settings_env: None, session: Session) -> None:
    """Alice's token pair does not work with Bob's cookie, nor once she signed out."""
    alice, bob = create_token(session, name="alice")[1], create_token(session, name="bob")[1]
    run = make_run(session, make_experiment(session, owner="bob"), seed=1, status="queued")
    with signed_in_browser(alice) as browser:
        alices = form_token(browser, f"/runs/{run.id}")
        # Not followed: the client's cookie from the constructor has no domain, so the server's
        # deletion does not reach it and the next page would sign in (and set a form token) again.
        browser.post("/signout", data={"csrf_token": alices}, follow_redirects=False)
        assert "caddie_csrf" not in browser.cookies  # signing out drops it
    with signed_in_browser(bob) as browser:
        assert cancel_with(browser, run.id, alices) == 403
    with TestClient(create_app(), headers={"accept": "text/html"}) as browser:  # signed out
        assert cancel_with(browser, run.id, alices) == 403
    with signed_in_browser(bob) as browser:
        assert cancel_with(browser, run.id, form_token(browser, f"/runs/{run.id}")) == 303


def test_a_form_token_expires(settings_env: None, session: Session,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    token = create_token(session, name="bob")[1]
    run = make_run(session, make_experiment(session, owner="bob"), seed=1, status="queued")
    with signed_in_browser(token) as browser:
        csrf = form_token(browser, f"/runs/{run.id}")
        later = time.time() + get_settings().csrf_ttl_s + 1
        monkeypatch.setattr(time, "time", lambda: later)
        assert cancel_with(browser, run.id, csrf) == 403
        assert form_token(browser, f"/runs/{run.id}") != csrf  # the page hands out a new one
