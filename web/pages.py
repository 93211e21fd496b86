"""The HTML pages: leaderboard, experiments, one experiment, one run (live log, loss curves,
downloads), the submit form and the comparison of two experiments.

Handlers read through the server's service functions and render a template; they own no
queries. Errors on these routes (an unknown id, a bad query parameter, a conflict, a bug)
come back as styled HTML pages instead of the API's JSON. Every POST needs the form's CSRF
token (web/csrf.py).
"""

import logging
import statistics
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from sqlmodel import Session
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import (
    auth,
    comparison,
    experiments,
    export,
    presets,
    quotas,
    runlog,
    scripts,
    waitlist,
    waiver,
)
from server.api.deps import MAX_ID, FilterText, IdPath, PrincipalDep, SessionDep, read_access
from server.config import get_settings
from server.db import read_session
from server.errors import CaddieError, NotFound, Unauthorized
from server.leaderboard import TRACK_LABELS, Track
from server.models import RunEventPublic, RunPublic
from server.reference import reference_bpb
from server.runs import get_run
from server.states import ENDED_EXPERIMENT_STATUSES, FINAL_RUN_STATUSES, ExperimentStatus, RunStatus
from web import csrf, downloads, experiment_view, overlay, signin, submission
from web import reproduce as reproduce_pages
from web.board import (
    DEFAULT_PER_PAGE,
    DEFAULT_SORT,
    MAX_PER_PAGE,
    SORT_PATTERN,
    UNIT_WORDS,
    BoardView,
    against_text,
    read_board,
)
from web.charts import seed_plot
from web.checklist import run_checks
from web.curves import run_curves
from web.rendering import STATIC_DIR, as_utc, templates

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 64 * 1024  # of train.log shown on the run page; the rest is a download away
STATIC_FILES = frozenset(path.name for path in STATIC_DIR.iterdir() if path.is_file())

Page = Annotated[int, Query(ge=1, le=MAX_ID)]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]


class PageRoute(APIRoute):
    """A route whose errors are rendered as HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def render_errors(request: Request) -> Response:
            response = await _render(request)
            csrf.set_cookie(request, response)
            return response

        async def _render(request: Request) -> Response:
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


OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="experiment id")]

# Pages that read are open unless CADDIE_PUBLIC_READ is off; signing in and assets always are.
router = APIRouter(route_class=PageRoute, include_in_schema=False, default_response_class=HTMLResponse,
                   dependencies=[Depends(read_access), Depends(signin.remember_user)])
open_router = APIRouter(route_class=PageRoute, include_in_schema=False,
                        default_response_class=HTMLResponse, dependencies=[Depends(signin.remember_user)])
Csrf = Depends(csrf.verify)  # on every POST of a page form
templates.env.globals.update(csrf_field=csrf.hidden_field, signed_in_user=signin.user_of,
                             against_text=against_text, UNIT_WORDS=UNIT_WORDS)
reproduce_pages.register(router, Csrf)


def include_pages(app: FastAPI) -> None:
    """Add the pages to `app`, and HTML 404 pages for unknown URLs outside /api."""
    app.include_router(router)
    app.include_router(open_router)
    # Starlette types a handler as taking any Exception; this one is registered for HTTPException.
    # Starlette types a handler as taking any Exception; this one is registered for HTTPException.
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
    track: Track = Track.record,
    eligible: bool = False,
    unverified: bool = False,
    failed: bool = False,
    preset: FilterText = None,
    author: FilterText = None,
    page: Page = 1,
    per_page: PerPage = DEFAULT_PER_PAGE,
) -> HTMLResponse:
    """Finished experiments ranked by mean val_bpb, each expandable to its seeds. A page
    past the last is a 404 that links to the last."""
    view = BoardView(track=track.value, sort=sort, eligible=eligible, unverified=unverified, failed=failed,
                     preset=preset or None, author=author or None, page=page, per_page=per_page)
    board = read_board(session, view)
    last_page = view.last_page(board.count)
    if view.page > last_page:
        return past_last_page(request, view, last_page)
    return templates.TemplateResponse(request, "leaderboard.html", {
        "view": view, "board": board, "presets": presets.preset_names(),
        "tracks": TRACK_LABELS,
        "last_page": last_page})


def past_last_page(request: Request, view: BoardView, last_page: int) -> HTMLResponse:
    return templates.TemplateResponse(request, "error.html", {
        "status_code": 404, "title": "Not Found",
        "problems": [f"There is no page {view.page}: this board has {last_page} "
                     f"page{'' if last_page == 1 else 's'}."],
        "link": (view.url(page=last_page), f"Go to page {last_page}")}, status_code=404)


@router.get("/queue")
def read_queue_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Experiments waiting for pods, with their position and estimated start."""
    return templates.TemplateResponse(request, "queue.html",
                                      {"entries": waitlist.queue(session)})


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
    """An experiment's spec, its seeds, their statistics and the actions on it."""
    return experiment_page(request, session, experiment_id)


def experiment_page(request: Request, session: Session, experiment_id: int, *,
                    seeds_entered: str = "", seeds_error: str | None = None,
                    status_code: int = 200) -> HTMLResponse:
    experiment = experiments.experiment_with_runs(
        session, experiments.get_experiment(session, experiment_id))
    scores = [(r.seed, r.val_bpb) for r in experiment.runs
              if r.status == RunStatus.succeeded and r.val_bpb is not None and not r.variant]
    reference = reference_bpb(experiment.stats)
    return templates.TemplateResponse(request, "experiment.html", {
        "experiment": experiment, "stats": seed_stats(experiment.runs),
        "test": experiment.stats or {}, "reference": reference,
        "threshold": experiment_view.threshold_bpb(experiment.stats),
        "plot": seed_plot(scores, f"val_bpb per seed of {experiment.name}", reference=reference,
                          threshold=experiment_view.threshold_bpb(experiment.stats)),
        "hardware": experiment_view.hardware(experiment),
        "imported": experiment_view.import_facts(experiment),
        "ablation": experiment_view.ablation_table(experiment.stats),
        "curves": overlay.overlay_charts(
            overlay.run_series(session, experiment.runs, ablation=overlay.is_ablation(experiment.runs)),
            f"the runs of {experiment.name}"),
        # secret-looking values already hidden (server.scripts.shown_env)
        "env_shown": experiment.env, "hidden_value": scripts.HIDDEN_VALUE,
        "view": experiment_view, "seeds_entered": seeds_entered, "seeds_error": seeds_error,
        "can_add_seeds": experiment.status != ExperimentStatus.cancelled,
        "cancellable": ExperimentStatus(experiment.status) not in ENDED_EXPERIMENT_STATUSES,
        **reproduce_pages.verdict_context(session, experiment_id)},
        status_code=status_code)


@router.get("/compare")
def read_compare_page(request: Request, session: SessionDep, a: OptionalId = None, b: OptionalId = None,
                      ids: Annotated[list[int] | None, Query(max_length=64)] = None,
                      pick: bool = False) -> HTMLResponse:
    """Experiments side by side: their curves on one chart and their config diff; for two,
    Welch's test between them. With fewer than two chosen, a list to pick them from."""
    picked = [i for i in [a, b, *(ids or [])] if i is not None and 1 <= i <= MAX_ID]
    chosen = list(dict.fromkeys(picked))
    chosen = chosen[:comparison.MAX_COMPARED]
    if len(chosen) < 2 or pick:
        return compare_picker(request, session, chosen, problem=len(chosen) == 1)
    compared = [comparison.with_runs(session, experiment_id) for experiment_id in chosen]
    result = comparison.compare(session, chosen[0], chosen[1]) if len(chosen) == 2 else None
    series = [s for e in compared for s in overlay.run_series(
        session, e.runs, prefix=f"#{e.id} ", ablation=overlay.is_ablation(e.runs))]
    return templates.TemplateResponse(request, "compare.html", {
        "result": result, "welch": result.welch if result else None, "compared": compared,
        "curves": overlay.overlay_charts(series, "the experiments compared"),
        "diff": overlay.config_diff(compared),
        "plots": [seed_plot(side.scores, f"val_bpb per seed of {side.experiment.name}")
                  for side in (result.a, result.b)] if result else []})


def compare_picker(request: Request, session: Session, chosen: list[int], *, problem: bool) -> HTMLResponse:
    """The newest experiments with a box each, to choose which to compare."""
    listed, _ = experiments.list_experiments(session, limit=comparison.PICKER_ROWS, offset=0)
    return templates.TemplateResponse(request, "compare_pick.html", {
        "experiments": listed, "chosen": set(chosen),
        "problem": "Choose at least two experiments." if problem else ""})


def seed_stats(runs: list[RunPublic]) -> dict[str, Any]:
    """val_bpb over the seeds that succeeded so far: n, mean, sample std, best, worst."""
    scores = [r.val_bpb for r in runs if r.status == RunStatus.succeeded and r.val_bpb is not None]
    return {"n": len(scores), "mean": statistics.fmean(scores) if scores else None,
            "std": statistics.stdev(scores) if len(scores) > 1 else None,
            "best": min(scores, default=None), "worst": max(scores, default=None)}


@router.post("/experiments/{experiment_id}/cancel", dependencies=[Csrf])
def cancel_experiment_page(session: SessionDep, principal: PrincipalDep,
                           experiment_id: IdPath) -> RedirectResponse:
    """Cancel the experiment's unfinished runs, then show it again."""
    auth.authorize_experiment(session, principal, experiment_id)
    experiments.cancel_experiment(session, experiment_id)
    return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)


@router.post("/experiments/{experiment_id}/seeds", dependencies=[Csrf])
def add_seeds_page(request: Request, session: SessionDep, principal: PrincipalDep,
                   experiment_id: IdPath,
                   seeds: Annotated[str, Form(max_length=1000)] = "") -> Response:
    """Queue runs for more seeds, then show the experiment; or the page again with the
    problem under the field (422)."""
    auth.authorize_experiment(session, principal, experiment_id)
    parsed = submission.parse_seeds(seeds)
    try:
        if isinstance(parsed, str):
            raise ValueError(parsed)
        quotas.check_more_runs(session, principal,
                               experiments.added_runs(session, experiment_id, parsed))
        experiments.add_seeds(session, experiment_id, parsed)
    except ValueError as exc:
        message = str(exc).removeprefix("seeds: ")
        return experiment_page(request, session, experiment_id, seeds_entered=seeds,
                               seeds_error=message, status_code=422)
    return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)


@router.post("/experiments/{experiment_id}/export", dependencies=[Csrf])
def export_experiment_page(session: SessionDep, principal: PrincipalDep,
                           experiment_id: IdPath) -> Response:
    """The experiment's records folder (README.md, submission.json, logs, code) as a .zip."""
    auth.authorize_experiment(session, principal, experiment_id)
    experiment = experiments.get_experiment(session, experiment_id)
    data = export.export_zip(session, experiment_id)
    name = export.folder_name(experiment)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}.zip"'})


@router.get("/submit")
def read_submit_page(
    request: Request, _principal: PrincipalDep,
    preset: Annotated[str, Query(max_length=64, pattern=r"^[\w.-]*$")] = "baseline",
) -> HTMLResponse:
    """The form that submits an experiment: a preset, field overrides, seeds, provider."""
    values = {"preset": preset, "seeds": submission.DEFAULT_SEEDS, "provider": "local"}
    return submit_form(request, submission.Submission(values=values))


async def form_fields(request: Request) -> dict[str, str]:
    """The posted form's text fields."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def form_uploads(request: Request) -> dict[str, bytes]:
    """The posted form's files by field, each read to one byte past the size limit at most."""
    form = await request.form()  # parsed once per request; Starlette keeps it
    return {key: await value.read(scripts.MAX_FILE_BYTES + 1) for key, value in form.items()
            if isinstance(value, UploadFile)}


@router.post("/submit", dependencies=[Csrf])
def submit_experiment_page(
    request: Request, session: SessionDep, principal: PrincipalDep,
    form: Annotated[dict[str, str], Depends(form_fields)],
    uploads: Annotated[dict[str, bytes], Depends(form_uploads)],
) -> Response:
    """Create the experiment and show it; or show the form again with each problem next to
    its field (422)."""
    spec, entered = submission.read_form(form, uploads)
    refusal = spec and experiments.provider_refusal(spec.provider, admin=principal.is_admin, settings=get_settings())
    if refusal:
        entered.errors["provider"] = refusal[1]
        return submit_form(request, entered, status_code=refusal[0])
    if spec is None:
        return submit_form(request, entered, status_code=422)
    try:
        waiver.check_declared(session, spec.systems_only_of, kind=spec.kind)
    except ValueError as exc:
        entered.errors[waiver.FIELD] = str(exc).removeprefix(f"{waiver.FIELD}: ")
        return submit_form(request, entered, status_code=422)
    quotas.check_submission(session, principal, runs=experiments.run_count(spec),
                            priority=spec.priority)
    experiment = experiments.create_experiment(session, spec, owner=principal.name)
    return RedirectResponse(f"/experiments/{experiment.id}", status_code=303)


def submit_form(request: Request, entered: submission.Submission,
                status_code: int = 200) -> HTMLResponse:
    inputs = submission.config_inputs()
    return templates.TemplateResponse(request, "submit.html", {
        "entered": entered, "field_defaults": {i.name: i.default for i in inputs},
        "presets": presets.preset_names(), "preset_values": presets.load_schema()["presets"],
        "inputs": inputs, "providers": submission.PROVIDERS,
        "uploads": submission.UPLOADS,
        "open_overrides": submission.touches_config(entered),
        "estimate": submission.estimate(entered.values),
    }, status_code=status_code)


@router.get("/runs/{run_id}")
def read_run_page(request: Request, session: SessionDep, run_id: IdPath) -> HTMLResponse:
    """A run: status, timeline, verification checklist, loss curves, downloads and the tail
    of its log, which the page's script then follows live from where the tail ends."""
    run = experiments.run_with_events(session, run_id)
    experiment = experiments.get_experiment(session, run.experiment_id)
    tail_from = max(0, run.log_offset - LOG_TAIL_BYTES)
    tail = runlog.read_log(session, run_id, offset=tail_from, limit=LOG_TAIL_BYTES)
    return templates.TemplateResponse(request, "run.html", {
        "run": run, "experiment": experiment, "checks": run_checks(run),
        "timeline": timeline(run.events), "log_text": _whole_lines(tail.text, tail_from),
        "log_cut": tail_from > 0, "log_end": tail.next_offset,
        "curves": run_curves(session, run_id, run.log_offset),
        "downloads": downloads.available(run_id, run.results),
        "final": RunStatus(run.status) in FINAL_RUN_STATUSES,
        "cancellable": RunStatus(run.status) not in FINAL_RUN_STATUSES})


def log_file(run_id: int) -> Iterator[bytes]:
    """The run's stored train.log, a read (and a short read-only session) at a time, so a
    download holds one batch in memory whatever the log's size."""
    offset = 0
    while True:
        with read_session() as session:
            piece = runlog.read_log(session, run_id, offset=offset, limit=runlog.MAX_READ_BYTES)
        if piece.next_offset == offset:
            return
        yield piece.text.encode("utf-8")
        offset = piece.next_offset


@router.post("/runs/{run_id}/cancel", dependencies=[Csrf])
def cancel_run_page(session: SessionDep, principal: PrincipalDep, run_id: IdPath) -> RedirectResponse:
    """Cancel the run, then show it again."""
    auth.authorize_run(session, principal, run_id)
    experiments.cancel_run(session, run_id)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.get("/runs/{run_id}/train.log")
def read_run_log_file(session: SessionDep, run_id: IdPath) -> Response:
    """The run's whole stored train.log as plain text, streamed (404 for an unknown run)."""
    get_run(session, run_id)
    session.commit()  # end the read before the stream's own reads
    return StreamingResponse(log_file(run_id), media_type="text/plain; charset=utf-8",
                             headers={"Content-Disposition": f'inline; filename="run-{run_id}-train.log"'})


@router.get("/runs/{run_id}/results.json")
def read_run_results_file(session: SessionDep, run_id: IdPath) -> FileResponse:
    """results.json as the worker downloaded it from the pod."""
    get_run(session, run_id)
    return _run_download(run_id, downloads.RESULTS_FILE, "application/json")


@router.get("/runs/{run_id}/artifact")
def read_run_artifact(session: SessionDep, run_id: IdPath) -> FileResponse:
    """The compressed model the worker downloaded and measured."""
    run = get_run(session, run_id)
    return _run_download(run_id, downloads.artifact_name(run.results), "application/octet-stream")


def _run_download(run_id: int, name: str, media_type: str) -> FileResponse:
    path = downloads.run_file(run_id, name)
    if path is None:
        raise NotFound(f"run {run_id} has no downloaded {name}")
    return FileResponse(path, media_type=media_type, filename=f"run-{run_id}-{path.name}")


@open_router.get("/static/{name}")
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


@open_router.get("/signin")
def read_signin_page(request: Request,
                     next_path: Annotated[str | None, Query(alias="next", max_length=500)] = None,
                     ) -> HTMLResponse:
    """Sign in with an API token; the forms then act as its user."""
    return signin.form(request, next_path)


@open_router.post("/signin", dependencies=[Csrf])
def sign_in(request: Request, session: SessionDep, token: Annotated[str, Form(max_length=200)],
            next_path: Annotated[str, Form(alias="next", max_length=500)] = "/") -> Response:
    try:
        auth.authenticate(session, token.strip())
    except Unauthorized as exc:
        return signin.form(request, next_path, exc.message, status_code=401)
    return signin.signed_in(request, token.strip(), next_path)


@open_router.post("/signout", dependencies=[Csrf])
def sign_out() -> Response:
    return signin.signed_out()
