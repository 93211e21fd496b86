"""Experiments: submit, list, read, cancel, add seeds, the significance test in chosen units."""

from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from server import auth, experiments, quotas, reference, waiver
from server.api.deps import ApiPrincipalDep, FilterText, IdPath, Limit, Offset, SessionDep
from server.config import get_settings
from server.errors import Forbidden, NotFound
from server.models import (
    ExperimentCreate,
    ExperimentPublic,
    ExperimentPublicWithRuns,
    ExperimentsPublic,
    SeedsAdd,
)
from server.states import ExperimentStatus
from server.statistics import DEFAULT_UNITS, Units

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=201)
def create_experiment(
    session: SessionDep, principal: ApiPrincipalDep, experiment_in: ExperimentCreate
) -> ExperimentPublicWithRuns:
    """Submit an experiment: one run per seed, queued at once."""
    check_provider(principal, experiment_in.provider)
    _check_reference(session, experiment_in.reference_experiment_id)
    _check_systems_only(session, experiment_in)
    quotas.check_submission(session, principal, runs=experiments.run_count(experiment_in),
                            priority=experiment_in.priority)
    experiment = experiments.create_experiment(session, experiment_in, owner=principal.name)
    return experiments.experiment_with_runs(session, experiment)


def check_provider(principal: auth.Principal, provider: str) -> None:
    """403 or 422 naming `provider` when this principal may not run there (local, mostly)."""
    refusal = experiments.provider_refusal(provider, admin=principal.is_admin, settings=get_settings())
    if refusal is None:
        return
    status, message = refusal
    if status == 403:
        raise Forbidden(message)
    raise RequestValidationError([{"loc": ("body", "provider"), "type": "value_error", "msg": message}])


def _check_reference(session: SessionDep, reference_id: int | None) -> None:
    """A reference experiment must exist: its seeds are what the test compares with."""
    if reference_id is None:
        return
    try:
        experiments.get_experiment(session, reference_id)
    except NotFound:
        raise RequestValidationError([{
            "loc": ("body", "reference_experiment_id"), "type": "value_error",
            "msg": f"reference_experiment_id: experiment {reference_id} not found"}]) from None


def _check_systems_only(session: SessionDep, experiment_in: ExperimentCreate) -> None:
    """A declared systems-only change names a finished, scored experiment the verdict can use
    (server/waiver.py); 422 naming `systems_only_of` otherwise. The new experiment has no id
    yet, so naming itself is naming an experiment that does not exist."""
    try:
        waiver.check_declared(session, experiment_in.systems_only_of, kind=experiment_in.kind)
    except ValueError as exc:
        raise RequestValidationError([{"loc": ("body", waiver.FIELD), "type": "value_error",
                                       "msg": str(exc)}]) from None


@router.get("")
def read_experiments(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    author: FilterText = None,
    status: ExperimentStatus | None = None,
) -> ExperimentsPublic:
    """List experiments, newest first."""
    page, count = experiments.list_experiments(session, limit=limit, offset=offset,
                                               author=author, status=status)
    return ExperimentsPublic(data=[ExperimentPublic.model_validate(e) for e in page], count=count)


@router.get("/{experiment_id}")
def read_experiment(session: SessionDep, experiment_id: IdPath) -> ExperimentPublicWithRuns:
    """Read an experiment with its runs."""
    experiment = experiments.get_experiment(session, experiment_id)
    return experiments.experiment_with_runs(session, experiment)


@router.post("/{experiment_id}/cancel")
def cancel_experiment(session: SessionDep, principal: ApiPrincipalDep,
                      experiment_id: IdPath) -> ExperimentPublicWithRuns:
    """Cancel every run of the experiment that has not ended (its owner or an admin)."""
    auth.authorize_experiment(session, principal, experiment_id)
    experiment = experiments.cancel_experiment(session, experiment_id)
    return experiments.experiment_with_runs(session, experiment)



@router.post("/{experiment_id}/seeds")
def add_seeds(session: SessionDep, principal: ApiPrincipalDep, experiment_id: IdPath,
              seeds_in: SeedsAdd) -> ExperimentPublicWithRuns:
    """Run more seeds, each in every arm (its owner or an admin). A finished experiment runs
    again until they end; 409 if it was cancelled; 422 for a seed it already used."""
    auth.authorize_experiment(session, principal, experiment_id)
    quotas.check_more_runs(session, principal, experiments.added_runs(
        session, experiment_id, seeds_in.seeds))
    try:
        experiment = experiments.add_seeds(session, experiment_id, seeds_in.seeds)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("body", "seeds"), "msg": str(exc), "type": "value_error"}]) from None
    return experiments.experiment_with_runs(session, experiment)


@router.get("/{experiment_id}/significance")
def read_significance(session: SessionDep, experiment_id: IdPath,
                      units: Units = DEFAULT_UNITS) -> dict[str, Any]:
    """The experiment's one-sided test in `units` (nats_per_token by default, the unit the
    challenge states its 0.005-nat margin in; nats_per_byte or bits_per_byte on request),
    against the reference its stored test used, with the difference of the means."""
    experiment = experiments.get_experiment(session, experiment_id)
    try:
        significance, against = reference.test_in_units(session, experiment, units)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("query", "units"), "msg": str(exc), "type": "value_error"}]) from None
    return reference.stored(significance, against)
