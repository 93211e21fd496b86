"""Re-runs: the plan of a submission (preview), the linked experiment that reproduces it, its
verdict and its evidence (`server/reproduce.py`, `server/rerun.py`, `docs/validation.md`)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server import auth, experiments, quotas, reproduce, rerun
from server.api.deps import ApiPrincipalDep, IdPath, SessionDep
from server.api.experiments import check_provider
from server.models import ExperimentPublicWithRuns
from server.reproduce import GitSource, Overrides, Plan, SourceError

router = APIRouter(tags=["reproduce"])


class Source(BaseModel):
    """A records folder: a folder path on the server (admins), or a git repository at a commit."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, min_length=1, max_length=1000)
    git: GitSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "Source":
        if (self.path is None) == (self.git is None):
            raise ValueError("source: give exactly one of path and git")
        return self


class ReproduceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Source
    overrides: Overrides = Field(default_factory=Overrides)


class RerunCreated(BaseModel):
    experiment: ExperimentPublicWithRuns
    plan: dict[str, Any]


def invalid(error: ValueError) -> RequestValidationError:
    """A 422 whose loc is the field the message starts with (`source.url: ...`)."""
    if isinstance(error, ValidationError):
        return RequestValidationError([{**e, "loc": ("body", "overrides", *e["loc"])} for e in error.errors()])
    message = str(error)
    field = message.split(":", 1)[0] if ":" in message and " " not in message.split(":", 1)[0] else "source"
    return RequestValidationError([{"loc": ("body", *field.split(".")), "type": "value_error", "msg": message}])


@contextmanager
def _folder(source: Source, principal: auth.Principal) -> Iterator[Path]:
    """The source's records folder; folders on the server's own disk only for admins."""
    try:
        if source.path is not None:
            if not principal.is_admin:
                raise SourceError("source.path: reading a folder on the server is for admins")
            with reproduce.path_source(source.path) as folder:
                yield folder
        else:
            assert source.git is not None
            with reproduce.git_source(source.git, allow_file=principal.is_admin) as folder:
                yield folder
    except SourceError as error:
        raise invalid(error) from None


def _plan(folder: Path, origin: dict[str, Any], overrides: Overrides) -> Plan:
    try:
        return reproduce.apply(reproduce.plan_folder(folder, origin), overrides)
    except SourceError as error:
        raise invalid(error) from None


def _create(session: SessionDep, principal: auth.Principal, plan: Plan, overrides: Overrides) -> RerunCreated:
    check_provider(principal, overrides.provider)
    quotas.check_submission(session, principal, runs=len(plan.seeds))
    try:
        experiment = reproduce.create_rerun(session, plan, overrides, owner=principal.name)
    except ValueError as error:
        session.rollback()
        raise invalid(error) from None
    return RerunCreated(experiment=experiments.experiment_with_runs(session, experiment),
                        plan=plan.public(overrides.provider, overrides.budget_usd))


def _origin(source: Source) -> dict[str, Any]:
    if source.git is not None:
        return {"kind": "git", **source.git.model_dump()}
    return {"kind": "path", "path": source.path}


@router.post("/reproduce/preview")
def preview(principal: ApiPrincipalDep, request: ReproduceRequest) -> dict[str, Any]:
    """Everything the re-run would use, shown before anything is rented."""
    with _folder(request.source, principal) as folder:
        plan = _plan(folder, _origin(request.source), request.overrides)
    return plan.public(request.overrides.provider, request.overrides.budget_usd)


@router.post("/reproduce", status_code=201)
def create(session: SessionDep, principal: ApiPrincipalDep, request: ReproduceRequest) -> RerunCreated:
    """Create the script experiment that re-runs the folder, with the plan's values."""
    with _folder(request.source, principal) as folder:
        plan = _plan(folder, _origin(request.source), request.overrides)
    return _create(session, principal, plan, request.overrides)


def _overrides(text: str) -> Overrides:
    try:
        return Overrides.model_validate_json(text or "{}")
    except ValidationError as error:
        raise invalid(error) from None


def _zip_plan(data: bytes, path: str, overrides: Overrides) -> Plan:
    try:
        with reproduce.zip_source(data, path) as folder:
            return _plan(folder, {"kind": "zip", "path": path}, overrides)
    except SourceError as error:
        raise invalid(error) from None


ZipFile = Annotated[bytes, File(description="a zip of a records folder")]
ZipPath = Annotated[str, Form(max_length=300)]
OverridesForm = Annotated[str, Form(max_length=200_000, description="Overrides as JSON")]


@router.post("/reproduce/zip/preview")
def preview_zip(_principal: ApiPrincipalDep, file: ZipFile, path: ZipPath = "",
                overrides: OverridesForm = "{}") -> dict[str, Any]:
    settings = _overrides(overrides)
    return _zip_plan(file, path, settings).public(settings.provider, settings.budget_usd)


@router.post("/reproduce/zip", status_code=201)
def create_zip(session: SessionDep, principal: ApiPrincipalDep, file: ZipFile, path: ZipPath = "",
               overrides: OverridesForm = "{}") -> RerunCreated:
    settings = _overrides(overrides)
    return _create(session, principal, _zip_plan(file, path, settings), settings)


def record_plan(session: SessionDep, experiment_id: int, overrides: Overrides) -> Plan:
    try:
        return reproduce.apply(reproduce.plan_record(session, experiment_id), overrides)
    except SourceError as error:
        raise invalid(error) from None


@router.post("/experiments/{experiment_id}/reproduce/preview")
def preview_record(session: SessionDep, _principal: ApiPrincipalDep, experiment_id: IdPath,
                   overrides: Overrides | None = None) -> dict[str, Any]:
    """The plan of a re-run of an imported record."""
    settings = overrides or Overrides()
    return record_plan(session, experiment_id, settings).public(settings.provider, settings.budget_usd)


@router.post("/experiments/{experiment_id}/reproduce", status_code=201)
def reproduce_record(session: SessionDep, principal: ApiPrincipalDep, experiment_id: IdPath,
                     overrides: Overrides | None = None) -> RerunCreated:
    """Re-run an imported record: a linked script experiment (`reproduces_id`)."""
    settings = overrides or Overrides()
    return _create(session, principal, record_plan(session, experiment_id, settings), settings)


@router.get("/experiments/{experiment_id}/verdict")
def read_verdict(session: SessionDep, experiment_id: IdPath) -> dict[str, Any]:
    """A re-run's verdict (null for other experiments) and the re-runs of this experiment."""
    experiment = experiments.get_experiment(session, experiment_id)
    own = rerun.verdict(session, experiment).to_dict() if rerun.is_rerun(experiment) else None
    reruns = [{"id": other.id, "name": other.name, **_summary(session, other)}
              for other in rerun.reruns_of(session, experiment_id)]
    return {"verdict": own, "reruns": reruns}


def _summary(session: SessionDep, experiment: Any) -> dict[str, Any]:
    found = rerun.verdict(session, experiment)
    return {"outcome": found.outcome, "headline": found.headline, "failed": found.failed}


@router.get("/experiments/{experiment_id}/evidence", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def read_evidence(session: SessionDep, experiment_id: IdPath) -> Response:
    """The re-run's evidence folder as a zip: logs, measured table, test, commands, pod facts."""
    experiment = experiments.get_experiment(session, experiment_id)
    if not rerun.is_rerun(experiment):
        raise RequestValidationError([{"loc": ("path", "experiment_id"), "type": "value_error",
                                       "msg": f"experiment {experiment_id} is not a re-run"}])
    return Response(rerun.evidence_zip(session, experiment), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="rerun-{experiment_id}-evidence.zip"'})
