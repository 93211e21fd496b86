"""Re-run pages: the plan of a re-run of an imported record, every value editable before
launch, and the verdict block on a re-run's page and on the record's page."""

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from server import experiments, quotas, records, reproduce, rerun
from server.api.deps import IdPath, PrincipalDep, SessionDep
from server.config import get_settings
from server.models import Experiment
from server.reproduce import Overrides, SourceError
from web.rendering import templates

Text = Annotated[str, Form(max_length=200_000)]


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


def read_plan_page(request: Request, session: SessionDep, experiment_id: IdPath) -> HTMLResponse:
    """The re-run's plan: files and sha256, env (common and per seed), data, seeds, cost."""
    return _plan_page(request, session, experiment_id, Overrides(), problems=[])


def _plan_page(request: Request, session: Session, experiment_id: int, overrides: Overrides,
               problems: list[str], status_code: int = 200) -> HTMLResponse:
    plan = reproduce.apply(reproduce.plan_record(session, experiment_id), overrides)
    public = plan.public(overrides.provider, overrides.budget_usd)
    return templates.TemplateResponse(request, "reproduce.html", {
        "record": experiments.get_experiment(session, experiment_id), "plan": public,
        "env_text": env_text(plan.env), "seed_env_text": seed_env_text(plan.seed_env),
        "seeds_text": ", ".join(str(s) for s in plan.seeds), "overrides": overrides,
        "problems": problems}, status_code=status_code)


def create_rerun_page(request: Request, session: SessionDep, principal: PrincipalDep,
                      experiment_id: IdPath, env: Text = "", seed_env: Text = "", seeds: Text = "",
                      provider: Text = "runpod", budget_usd: Text = "") -> Response:
    """Create the re-run from the edited plan, then show it; or the plan again with the problem."""
    try:
        # Validated as the API validates it: a provider outside its choices is a ValidationError.
        overrides = Overrides.model_validate({
            "env": parse_env(env), "seed_env": parse_seed_env(seed_env), "seeds": parse_seeds(seeds),
            "provider": provider, "budget_usd": float(budget_usd) if budget_usd.strip() else None})
        plan = reproduce.apply(reproduce.plan_record(session, experiment_id), overrides)
        refusal = experiments.provider_refusal(overrides.provider, admin=principal.is_admin, settings=get_settings())
        if refusal is not None:
            raise ValueError(refusal[1])
        quotas.check_submission(session, principal, runs=len(plan.seeds))
        created = reproduce.create_rerun(session, plan, overrides, owner=principal.name)
    except (ValueError, SourceError) as error:
        session.rollback()
        return _plan_page(request, session, experiment_id, Overrides(), [_message(error)], 422)
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

