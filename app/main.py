"""Builds the FastAPI app: API routers, the web pages and error handlers.

The composition root: it joins the server's API and the `web` pages (which use the server's
services), so that `server` itself never imports `web`. The schema is migrations' job.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server import body_limits, logsetup, redaction, runlog_stream, security_headers
from server.api import apidocs, health
from server.api.deps import read_access
from server.api.main import api_router
from server.config import get_settings
from server.errors import CaddieError
from web.pages import include_pages

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    app = FastAPI(
        title="Caddie",
        summary="Runs OpenAI's Parameter Golf challenge: seeds, pods, verification, leaderboard.",
        version="0.1.0",
        lifespan=_lifespan,
        dependencies=[Depends(logsetup.bind_path_ids)],
        # /openapi.json by _docs_router and /docs by server/api/apidocs.py (no CDN), both
        # following CADDIE_PUBLIC_READ; ReDoc is off.
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    app.add_middleware(body_limits.BodyLimit)
    app.add_middleware(security_headers.SecurityHeaders)
    app.include_router(api_router)
    app.include_router(_docs_router(app))
    app.include_router(health.router)
    app.include_router(apidocs.router, dependencies=[Depends(read_access)])
    # Starlette types a handler as taking any Exception; each is registered for its own class.
    app.add_exception_handler(CaddieError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_input)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    include_pages(app)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        redaction.install(get_settings(), logging.getLogger(name))
    return app


def _docs_router(app: FastAPI) -> APIRouter:
    """/openapi.json, readable by whoever may read the API."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(read_access)])

    @router.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return router


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with logsetup.api_lifespan(app):
        with runlog_stream.closed_on_stop():
            yield


async def _domain_error(_request: Request, exc: CaddieError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})


async def _invalid_input(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one entry per problem: where (`loc`, e.g. ["body", "seeds", 1]) and what.

    The submitted value is not echoed back: it may be large, and the location names it.
    """
    detail = [
        {"loc": list(error["loc"]), "msg": _message(error), "type": error["type"]}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


def _message(error: dict[str, Any]) -> str:
    # Our validators already start with the field (`config.num_layers: ...`).
    return str(error["msg"]).removeprefix("Value error, ")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


app = create_app()
