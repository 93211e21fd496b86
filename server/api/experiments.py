"""Experiments: submit, list, read, cancel."""

from fastapi import APIRouter

from server import auth, experiments
from server.api.deps import FilterText, IdPath, Limit, Offset, PrincipalDep, SessionDep
from server.experiments import (
    ExperimentCreate,
    ExperimentPublic,
    ExperimentPublicWithRuns,
    ExperimentsPublic,
)
from server.states import ExperimentStatus

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=201)
def create_experiment(
    session: SessionDep, principal: PrincipalDep, experiment_in: ExperimentCreate
) -> ExperimentPublicWithRuns:
    """Submit an experiment: one run per seed, queued at once."""
    experiment = experiments.create_experiment(session, experiment_in, owner=principal.name)
    return experiments.experiment_with_runs(session, experiment)


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
def cancel_experiment(session: SessionDep, principal: PrincipalDep,
                      experiment_id: IdPath) -> ExperimentPublicWithRuns:
    """Cancel every run of the experiment that has not ended (its owner or an admin)."""
    auth.authorize_experiment(session, principal, experiment_id)
    experiment = experiments.cancel_experiment(session, experiment_id)
    return experiments.experiment_with_runs(session, experiment)

