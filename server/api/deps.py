"""Annotated aliases that route signatures share."""

from typing import Annotated

from fastapi import Cookie, Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from server import auth
from server.config import get_settings
from server.db import get_session
from server.errors import Unauthorized

SessionDep = Annotated[Session, Depends(get_session)]

TOKEN_COOKIE = "caddie_token"  # set by the web UI's sign-in page (HttpOnly, SameSite=Strict)
_bearer = HTTPBearer(auto_error=False, description="An API token from `caddie token create`.")


def current_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    caddie_token: Annotated[str | None, Cookie()] = None,
) -> auth.Principal:
    """Who the request acts for: the bearer token, else the web UI's sign-in cookie."""
    token = credentials.credentials if credentials else caddie_token
    return auth.authenticate(session, token)


PrincipalDep = Annotated[auth.Principal, Depends(current_principal)]


def api_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> auth.Principal:
    """Who an API change acts for: the bearer token only. The sign-in cookie is not taken
    here: a browser sends it along with any site's request, and only the pages' forms carry
    the CSRF token that tells the user's own requests apart."""
    if credentials is None:
        raise Unauthorized("an API token is required (Authorization: Bearer <token>); the "
                           "sign-in cookie is accepted by the pages' forms, not by the API")
    return auth.authenticate(session, credentials.credentials)


ApiPrincipalDep = Annotated[auth.Principal, Depends(api_principal)]


def read_access(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    caddie_token: Annotated[str | None, Cookie()] = None,
) -> None:
    """Reading is open unless CADDIE_PUBLIC_READ is off; then it needs a token too."""
    if not get_settings().public_read:
        current_principal(session, credentials, caddie_token)

# Ids are 32-bit INTEGER columns; larger numbers are refused here rather than by the database.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
# PostgreSQL text cannot hold NUL, so a filter carrying one is refused as invalid input.
FilterText = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")]
