"""Two experiments side by side, with Welch's test of whether the first beats the second
by the record margin (0.005 nats): the service behind /api/compare and the compare page."""

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel
from sqlmodel import Session

from server import experiments, statistics
from server.api.deps import MAX_ID
from server.models import ExperimentPublic
from server.states import RunStatus

ExperimentId = Annotated[int, Query(ge=1, le=MAX_ID, description="experiment id")]
MAX_COMPARED = 8  # experiments on one /compare page
PICKER_ROWS = 100  # newest experiments offered to pick from


class ComparedExperiment(BaseModel):
    experiment: ExperimentPublic
    scores: list[tuple[int, float]]  # (seed, val_bpb) of the seeds that succeeded


class ComparisonPublic(BaseModel):
    a: ComparedExperiment
    b: ComparedExperiment
    # Does a's mean val_bpb lie below b's minus 0.005 nats? (see server.statistics)
    welch: dict[str, Any]


def compare(session: Session, a_id: int, b_id: int) -> ComparisonPublic:
    """404 if either experiment is unknown."""
    a, b = _compared(session, a_id), _compared(session, b_id)
    test = statistics.welch_test([s for _, s in a.scores], [s for _, s in b.scores])
    return ComparisonPublic(a=a, b=b, welch=test.to_dict())


def with_runs(session: Session, experiment_id: int) -> experiments.ExperimentPublicWithRuns:
    """One experiment of /compare with its runs; 404 if unknown."""
    return experiments.experiment_with_runs(session, experiments.get_experiment(session, experiment_id))


def _compared(session: Session, experiment_id: int) -> ComparedExperiment:
    experiment = experiments.experiment_with_runs(
        session, experiments.get_experiment(session, experiment_id))
    scores = [(run.seed, run.val_bpb) for run in experiment.runs
              if run.status == RunStatus.succeeded and run.val_bpb is not None]
    summary = ExperimentPublic.model_validate(dict(experiment))
    return ComparedExperiment(experiment=summary, scores=scores)
