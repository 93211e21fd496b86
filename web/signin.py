"""Signing in to the web UI with an API token, kept in an HttpOnly, SameSite=Strict cookie.

The pages' forms then act as that token's user; the cookie never reaches page scripts, and
SameSite=Strict plus the forms' CSRF token keep other sites from using it.
"""

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server.api.deps import TOKEN_COOKIE
from web import csrf
from web.rendering import templates

COOKIE_MAX_AGE_S = 30 * 24 * 3600


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an absolute URL that would send the user elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def form(request: Request, next_path: str | None, error: str | None = None,
         status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, "signin.html",
                                      {"next": safe_next(next_path), "error": error},
                                      status_code=status_code)


def signed_in(request: Request, token: str, next_path: str) -> Response:
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


def signed_out() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(TOKEN_COOKIE)
    response.delete_cookie(csrf.COOKIE)  # bound to the session that ended
    return response
