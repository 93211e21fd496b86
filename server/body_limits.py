"""Request bodies: how large, and from whom, before any of them is read.

Every body is capped at CADDIE_MAX_BODY_BYTES (Starlette's limiter: by Content-Length at
once, else while it streams in; 413). A request that changes something through `/api`
needs a known bearer token before its body is read (401), and a body from a request
without a known token (bearer or the web UI's sign-in cookie: the sign-in form itself) is
held to CADDIE_ANONYMOUS_BODY_BYTES, so strangers cannot make the server parse megabytes.
"""

import anyio
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from server import auth
from server.config import get_settings
from server.db import get_engine, reader
from server.errors import Unauthorized

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_COOKIE = "caddie_token"  # the web UI's sign-in cookie (server.api.deps.TOKEN_COOKIE)


class BodyLimit:
    """ASGI middleware: checks who sends a body before the body is read, then caps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        bearer = _bearer(headers.get("authorization", ""))
        known = bool(bearer) and await anyio.to_thread.run_sync(_known, bearer)
        if scope["path"].startswith("/api/") and not known:
            message = ("an API token is required (Authorization: Bearer <token>)" if not bearer
                       else "the API token is unknown or revoked")
            await JSONResponse({"detail": message}, status_code=401)(scope, receive, send)
            return
        if not known:
            cookie = _cookie(headers.get("cookie", ""))
            known = bool(cookie) and await anyio.to_thread.run_sync(_known, cookie)
        settings = get_settings()
        limit = settings.max_body_bytes if known else settings.anonymous_body_bytes
        await RequestBodyLimitMiddleware(self.app, limit)(scope, receive, send)


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _cookie(header: str) -> str:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return value
    return ""


def _known(token: str) -> bool:
    with Session(reader(get_engine())) as session:
        try:
            auth.authenticate(session, token)
        except Unauthorized:
            return False
    return True
