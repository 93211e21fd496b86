"""Re-run pages: the plan of a re-run of an imported record, of a zip of a records folder, or
of a folder of a git repository at a commit, every value editable before launch; and the
verdict block on a re-run's page and on the record's page.

A zip's plan page carries the zip itself (URL-safe base64, at most WEB_ZIP_BYTES) in its
launch form, so that the launch plans the same bytes again; in pieces of ZIP_PIECE characters,
each a form field under the form parser's 1 MiB per field. A folder on the server's own disk
stays with the API and the CLI (admins), as does a bigger zip.
"""

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from server import auth, experiments, quotas, records, reproduce, rerun
from server.api.deps import IdPath, PrincipalDep, SessionDep
from server.config import get_settings
from server.models import Experiment
from server.reproduce import GitSource, Overrides, Plan, SourceError
from web.rendering import templates

Text = Annotated[str, Form(max_length=200_000)]
Short = Annotated[str, Form(max_length=500)]
Hidden = dict[str, Any]  # the source's fields in the launch form: a string, or a list of pieces
WEB_ZIP_BYTES = 5_000_000  # a records folder's zip is ~100 KB; bigger ones go through the API
ZIP_PIECE = 512 * 1024  # base64 characters per hidden field (Starlette's limit is 1 MiB a field)
ZipPieces = Annotated[list[str] | None, Form(max_length=4 * WEB_ZIP_BYTES // 3 // ZIP_PIECE + 1)]


def verdict_context(session: Session, experiment_id: int) -> dict[str, Any]:
    """`verdict` (this experiment's, when it is a re-run), `reruns` (re-runs of it), and
    whether it can be re-run (an imported record)."""
    experiment = experiments.get_experiment(session, experiment_id)
    own = rerun.verdict(session, experiment) if rerun.is_rerun(experiment) else None
    reruns = [(other, rerun.verdict(session, other)) for other in rerun.reruns_of(session, experiment_id)]
    return {"verdict": own, "reruns": reruns, "reproducible": experiment.provider == records.IMPORT_PROVIDER,
            "reproduces": _reproduced(session, experiment)}


def _reproduced(session: Session, experiment: Experiment) -> Experiment | None:
    return session.get(Experiment, experiment.reproduces_id) if experiment.reproduces_id else None


def register(router: APIRouter, csrf_dependency: Any) -> None:
    """Add the re-run pages to the pages' router (its HTML error rendering and read access)."""
    router.add_api_route("/experiments/{experiment_id}/reproduce", read_plan_page, methods=["GET"])
    router.add_api_route("/experiments/{experiment_id}/reproduce", create_rerun_page, methods=["POST"],
                         dependencies=[csrf_dependency])
    router.add_api_route("/reproduce", read_source_page, methods=["GET"])
    router.add_api_route("/reproduce/zip", zip_plan_page, methods=["POST"], dependencies=[csrf_dependency])
    router.add_api_route("/reproduce/git", git_plan_page, methods=["POST"], dependencies=[csrf_dependency])
    router.add_api_route("/reproduce/create", create_from_source_page, methods=["POST"],
                         dependencies=[csrf_dependency])


def read_plan_page(request: Request, session: SessionDep, experiment_id: IdPath) -> HTMLResponse:
    """The re-run's plan: files and sha256, env (common and per seed), data, seeds, cost."""
    return _plan_page(request, session, experiment_id, Overrides(), problems=[])


def _plan_page(request: Request, session: Session, experiment_id: int, overrides: Overrides,
               problems: list[str], status_code: int = 200) -> HTMLResponse:
    plan = reproduce.apply(reproduce.plan_record(session, experiment_id), overrides)
    record = experiments.get_experiment(session, experiment_id)
    return _render_plan(request, plan, overrides, problems, status_code, record=record,
                        title=record.name, action=f"/experiments/{experiment_id}/reproduce", hidden={})


def _render_plan(request: Request, plan: Plan, overrides: Overrides, problems: list[str], status_code: int, *,
                 title: str, action: str, hidden: Hidden, record: Experiment | None = None) -> HTMLResponse:
    """The plan page: files with sha256, editable env, seeds, provider, budget; the launch form
    posts to `action` with `hidden` (the source) beside the edited values."""
    return templates.TemplateResponse(request, "reproduce.html", {
        "record": record, "title": title, "action": action, "hidden": hidden,
        "plan": plan.public(overrides.provider, overrides.budget_usd),
        "env_text": env_text(plan.env), "seed_env_text": seed_env_text(plan.seed_env),
        "seeds_text": ", ".join(str(s) for s in plan.seeds), "overrides": overrides,
        "problems": problems}, status_code=status_code)


def read_source_page(request: Request, principal: PrincipalDep) -> HTMLResponse:
    """The form: a zip of a records folder, or a git repository, commit and folder path."""
    return _source_page(request, principal, [])


def _source_page(request: Request, principal: auth.Principal, problems: list[str],
                 git: dict[str, str] | None = None, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, "reproduce_source.html", {
        "problems": problems, "git": git or {}, "web_zip_bytes": WEB_ZIP_BYTES,
        "admin": principal.is_admin}, status_code=status_code)


def zip_plan_page(request: Request, principal: PrincipalDep, file: Annotated[bytes, File()],
                  path: Short = "") -> HTMLResponse:
    """The plan of an uploaded zip, its launch form carrying the zip."""
    if len(file) > WEB_ZIP_BYTES:
        return _source_page(request, principal, [f"source.zip: {len(file):,} bytes; the page takes "
                                                 f"{WEB_ZIP_BYTES:,}, the API and the CLI more"], status_code=422)
    text = base64.urlsafe_b64encode(file).decode()
    hidden = {"source": "zip", "zip_data": [text[i:i + ZIP_PIECE] for i in range(0, len(text), ZIP_PIECE)],
              "path": path}
    return _source_plan(request, principal, hidden, Overrides(), [])


def git_plan_page(request: Request, principal: PrincipalDep, url: Short = "", commit: Short = "",
                  path: Short = "") -> HTMLResponse:
    """The plan of a records folder of a git repository at a commit."""
    hidden = {"source": "git", "url": url.strip(), "commit": commit.strip(), "path": path.strip()}
    return _source_plan(request, principal, hidden, Overrides(), [])


def _source_plan(request: Request, principal: auth.Principal, hidden: Hidden, overrides: Overrides,
                 problems: list[str], status_code: int = 200) -> HTMLResponse:
    """The plan of the source `hidden` names; the source form again with the problem when it
    cannot be read."""
    try:
        plan = reproduce.apply(_plan_of(hidden, principal), overrides)
    except (SourceError, ValueError) as error:
        git = hidden if hidden["source"] == "git" else None
        return _source_page(request, principal, [_message(error)], git, status_code=422)
    return _render_plan(request, plan, overrides, problems, status_code, title=plan.name.removeprefix("re-run: "),
                        action="/reproduce/create", hidden=hidden)


def _plan_of(hidden: Hidden, principal: auth.Principal) -> Plan:
    """Plan the source again from the fields the plan page carries."""
    if hidden.get("source") == "zip":
        try:
            data = base64.b64decode("".join(hidden.get("zip_data", [])), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise SourceError("source.zip: the page's copy of the zip is damaged; upload it again") from None
        path = str(hidden.get("path", ""))
        with reproduce.zip_source(data, path) as folder:
            return reproduce.plan_folder(folder, {"kind": "zip", "path": path})
    if hidden.get("source") == "git":
        source = GitSource(url=str(hidden.get("url", "")), commit=str(hidden.get("commit", "")),
                           path=str(hidden.get("path", "")))
        with reproduce.git_source(source, allow_file=principal.is_admin) as folder:
            return reproduce.plan_folder(folder, {"kind": "git", **source.model_dump()})
    raise SourceError("source: a zip or a git repository is needed")


def create_from_source_page(request: Request, session: SessionDep, principal: PrincipalDep,
                            source: Short = "", zip_data: ZipPieces = None, url: Short = "",
                            commit: Short = "", path: Short = "", env: Text = "", seed_env: Text = "",
                            seeds: Text = "", provider: Text = "runpod", budget_usd: Text = "") -> Response:
    """Create the re-run of a zip or git source from the edited plan; or the plan again."""
    hidden: Hidden = {"source": source, "path": path,
                      **({"zip_data": zip_data or []} if source == "zip" else {"url": url, "commit": commit})}
    return _create(request, session, principal, lambda: _plan_of(hidden, principal),
                   lambda problems: _source_plan(request, principal, hidden, Overrides(), problems, 422),
                   env, seed_env, seeds, provider, budget_usd)


def create_rerun_page(request: Request, session: SessionDep, principal: PrincipalDep,
                      experiment_id: IdPath, env: Text = "", seed_env: Text = "", seeds: Text = "",
                      provider: Text = "runpod", budget_usd: Text = "") -> Response:
    """Create the re-run from the edited plan, then show it; or the plan again with the problem."""
    return _create(request, session, principal, lambda: reproduce.plan_record(session, experiment_id),
                   lambda problems: _plan_page(request, session, experiment_id, Overrides(), problems, 422),
                   env, seed_env, seeds, provider, budget_usd)


def _create(request: Request, session: Session, principal: auth.Principal, planned: Callable[[], Plan],
            again: Callable[[list[str]], Response], env: str, seed_env: str, seeds: str, provider: str,
            budget_usd: str) -> Response:
    """The re-run of `planned()` with the edited values, then its page; else `again` with the problem."""
    try:
        # Validated as the API validates it: a provider outside its choices is a ValidationError.
        overrides = Overrides.model_validate({
            "env": parse_env(env), "seed_env": parse_seed_env(seed_env), "seeds": parse_seeds(seeds),
            "provider": provider, "budget_usd": float(budget_usd) if budget_usd.strip() else None})
        plan = reproduce.apply(planned(), overrides)
        refusal = experiments.provider_refusal(overrides.provider, admin=principal.is_admin, settings=get_settings())
        if refusal is not None:
            raise ValueError(refusal[1])
        quotas.check_submission(session, principal, runs=len(plan.seeds))
        created = reproduce.create_rerun(session, plan, overrides, owner=principal.name)
    except (ValueError, SourceError) as error:
        session.rollback()
        return again([_message(error)])
    return RedirectResponse(f"/experiments/{created.id}", status_code=303)


def _message(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return str(error)


def env_text(env: dict[str, str]) -> str:
    return "\n".join(f"{name}={value}" for name, value in env.items())


def seed_env_text(seed_env: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"{seed}: " + " ".join(f"{k}={v}" for k, v in env.items()) for seed, env in seed_env.items())


def parse_env(text: str) -> dict[str, str]:
    """`NAME=value` per line; blank lines skipped."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.strip().partition("=")
        if not sep:
            raise ValueError(f"env: line {number} is not NAME=value")
        env[name.strip()] = value.strip()
    return env


def parse_seed_env(text: str) -> dict[str, dict[str, str]]:
    """`SEED: NAME=value NAME=value` per line."""
    found: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        seed, sep, rest = line.partition(":")
        if not sep or not seed.strip().isdigit():
            raise ValueError(f"seed_env: line {number} is not 'SEED: NAME=value ...'")
        found[seed.strip()] = parse_env("\n".join(rest.split()))
    return found


def parse_seeds(text: str) -> list[int] | None:
    words = text.replace(",", " ").split()
    if not all(word.isdigit() for word in words):
        raise ValueError("seeds: whole numbers separated by commas")
    return [int(word) for word in words] or None

