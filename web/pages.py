"""The HTML pages: leaderboard, experiments, one experiment, one run, its log.

Handlers read through the server's service functions and render a template; they own no
queries. Errors on these routes (an unknown id, a bad query parameter, a conflict, a bug)
come back as styled HTML pages instead of the API's JSON.
"""

import logging
import statistics
from collections.abc import Callable, Coroutine
from functools import partial
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import experiments, logs, presets
from server.api.deps import MAX_ID, FilterText, IdPath, SessionDep
from server.errors import CaddieError, NotFound
from server.experiments import RunEventPublic, RunPublic
from server.states import FINAL_RUN_STATUSES, ExperimentStatus, RunStatus
from web.board import (
    DEFAULT_PER_PAGE,
    DEFAULT_SORT,
    MAX_PER_PAGE,
    SORT_PATTERN,
    BoardView,
    read_board,
)
from web.checklist import run_checks
from web.rendering import STATIC_DIR, as_utc, templates

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 64 * 1024  # of train.log shown on the run page; the rest is a download away
STATIC_FILES = frozenset(path.name for path in STATIC_DIR.iterdir() if path.is_file())
ENDED_EXPERIMENT_STATUSES = (ExperimentStatus.finished, ExperimentStatus.cancelled)

Page = Annotated[int, Query(ge=1, le=MAX_ID)]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]


class PageRoute(APIRoute):
    """A route whose errors are rendered as HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def render_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except CaddieError as exc:
                return error_page(request, exc.status_code, [exc.message])
            except RequestValidationError as exc:
                return error_page(request, 400, [_problem(e) for e in exc.errors()])
            except StarletteHTTPException as exc:
                return error_page(request, exc.status_code, [str(exc.detail)])
            except Exception:
                log.exception("page %s %s failed", request.method, request.url.path)
                return error_page(request, 500, ["Something went wrong on our side."])

        return render_errors


router = APIRouter(route_class=PageRoute, include_in_schema=False,
                   default_response_class=HTMLResponse)


def include_pages(app: FastAPI) -> None:
    """Add the pages to `app`, and HTML 404 pages for unknown URLs outside /api."""
    app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]


def error_page(request: Request, status_code: int, problems: list[str]) -> HTMLResponse:
    try:
        title = HTTPStatus(status_code).phrase
    except ValueError:
        title = "Error"
    return templates.TemplateResponse(
        request, "error.html", {"status_code": status_code, "title": title, "problems": problems},
        status_code=status_code)


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """HTML for a browser outside /api; the API keeps its JSON errors."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if wants_html and not request.url.path.startswith("/api"):
        problem = f"No page at {request.url.path}." if exc.status_code == 404 else str(exc.detail)
        return error_page(request, exc.status_code, [problem])
    return await http_exception_handler(request, exc)


@router.get("/")
def read_leaderboard_page(
    request: Request,
    session: SessionDep,
    sort: Annotated[str, Query(pattern=SORT_PATTERN)] = DEFAULT_SORT,
    eligible: bool = False,
    preset: FilterText = None,
    author: FilterText = None,
    page: Page = 1,
    per_page: PerPage = DEFAULT_PER_PAGE,
) -> HTMLResponse:
    """Finished experiments ranked by mean val_bpb, each expandable to its seeds."""
    view = BoardView(sort=sort, eligible=eligible, preset=preset or None,
                     author=author or None, page=page, per_page=per_page)
    board = read_board(session, view)
    return templates.TemplateResponse(request, "leaderboard.html", {
        "view": view, "board": board, "presets": presets.preset_names(),
        "last_page": view.last_page(board.count)})


@router.get("/experiments")
def read_experiments_page(
    request: Request,
    session: SessionDep,
    status: ExperimentStatus | None = None,
    page: Page = 1,
    per_page: PerPage = DEFAULT_PER_PAGE,
) -> HTMLResponse:
    """Every experiment, newest first, whatever its status."""
    rows, total = experiments.list_experiments(
        session, limit=per_page, offset=(page - 1) * per_page, status=status)
    return templates.TemplateResponse(request, "experiments.html", {
        "experiments": rows, "count": total, "status": status, "statuses": list(ExperimentStatus),
        "page": page, "last_page": max(1, -(-total // per_page)),
        "list_url": partial(experiments_url, status=status, per_page=per_page)})


def experiments_url(*, status: ExperimentStatus | None = None, page: int = 1,
                    per_page: int = DEFAULT_PER_PAGE) -> str:
    """The experiments list's URL; parameters at their defaults are left out."""
    params = {"status": status.value if status else None, "page": page if page > 1 else None,
              "per_page": per_page if per_page != DEFAULT_PER_PAGE else None}
    query = urlencode({name: value for name, value in params.items() if value is not None})
    return "/experiments" + (f"?{query}" if query else "")


@router.get("/experiments/{experiment_id}")
def read_experiment_page(request: Request, session: SessionDep,
                         experiment_id: IdPath) -> HTMLResponse:
    """An experiment's spec, its seeds and their statistics."""
    experiment = experiments.experiment_with_runs(
        session, experiments.get_experiment(session, experiment_id))
    return templates.TemplateResponse(request, "experiment.html", {
        "experiment": experiment, "stats": seed_stats(experiment.runs),
        "cancellable": ExperimentStatus(experiment.status) not in ENDED_EXPERIMENT_STATUSES})


def seed_stats(runs: list[RunPublic]) -> dict[str, Any]:
    """val_bpb over the seeds that succeeded so far: n, mean, sample std, best, worst."""
    scores = [r.val_bpb for r in runs if r.status == RunStatus.succeeded and r.val_bpb is not None]
    return {"n": len(scores), "mean": statistics.fmean(scores) if scores else None,
            "std": statistics.stdev(scores) if len(scores) > 1 else None,
            "best": min(scores, default=None), "worst": max(scores, default=None)}


@router.post("/experiments/{experiment_id}/cancel")
def cancel_experiment_page(session: SessionDep, experiment_id: IdPath) -> RedirectResponse:
    """Cancel the experiment's unfinished runs, then show it again."""
    experiments.cancel_experiment(session, experiment_id)
    return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)


@router.get("/runs/{run_id}")
def read_run_page(request: Request, session: SessionDep, run_id: IdPath) -> HTMLResponse:
    """A run: status, timeline, verification checklist and the tail of its log."""
    run = experiments.run_with_events(session, run_id)
    experiment = experiments.get_experiment(session, run.experiment_id)
    tail_from = max(0, run.log_offset - LOG_TAIL_BYTES)
    tail = logs.read_log(session, run_id, offset=tail_from, limit=LOG_TAIL_BYTES)
    return templates.TemplateResponse(request, "run.html", {
        "run": run, "experiment": experiment, "checks": run_checks(run),
        "timeline": timeline(run.events), "log_text": _whole_lines(tail.text, tail_from),
        "log_cut": tail_from > 0,
        "cancellable": RunStatus(run.status) not in FINAL_RUN_STATUSES})


@router.post("/runs/{run_id}/cancel")
def cancel_run_page(session: SessionDep, run_id: IdPath) -> RedirectResponse:
    """Cancel the run, then show it again."""
    experiments.cancel_run(session, run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.get("/runs/{run_id}/train.log")
def read_run_log_file(session: SessionDep, run_id: IdPath) -> Response:
    """The run's whole stored train.log as plain text."""
    pieces, offset = [], 0
    while True:
        piece = logs.read_log(session, run_id, offset=offset, limit=logs.MAX_READ_BYTES)
        if piece.next_offset == offset:
            break
        pieces.append(piece.text)
        offset = piece.next_offset
    return Response("".join(pieces), media_type="text/plain; charset=utf-8", headers={
        "Content-Disposition": f'inline; filename="run-{run_id}-train.log"'})


@router.get("/static/{name}")
def read_static_file(name: str) -> FileResponse:
    """CSS and JS of the pages, served from web/static."""
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name)


def timeline(events: list[RunEventPublic]) -> list[tuple[RunEventPublic, float | None]]:
    """Each status change with the seconds since the one before it (None for the first)."""
    steps: list[tuple[RunEventPublic, float | None]] = []
    for index, event in enumerate(events):
        previous = events[index - 1].created_at if index else None
        if previous is None:
            steps.append((event, None))
        else:
            steps.append((event, (as_utc(event.created_at) - as_utc(previous)).total_seconds()))
    return steps


def _whole_lines(text: str, offset: int) -> str:
    """Drop the cut first line of a log read from the middle (`offset` > 0)."""
    if offset == 0:
        return text
    _, newline, rest = text.partition("\n")
    return rest if newline else text
