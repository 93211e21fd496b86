"""What an experiment must beat, and the test that says whether it did.

The reference is, in order: another experiment named at submission (Welch's t-test against its
per-seed scores), a value named at submission, the best record-eligible experiment on the
leaderboard (Welch), or CADDIE_RECORD_BPB, the standing record (one-sample t-test against it
minus 0.005 nats). Scores are val_bpb; the 0.005-nat margin is 0.005 / ln 2 bits per byte.
"""

from typing import Any

from sqlmodel import Session, col, select

from server.config import get_settings
from server.models import Experiment, Run
from server.states import ExperimentStatus, RunStatus
from server.statistics import Significance, one_sample_test, welch_test


def seed_scores(session: Session, experiment_id: int) -> list[float]:
    """val_bpb of the experiment's succeeded seeds."""
    rows = session.exec(select(Run.val_bpb).where(
        Run.experiment_id == experiment_id, Run.status == RunStatus.succeeded.value,
        col(Run.val_bpb).is_not(None))).all()
    return [float(score) for score in rows if score is not None]


def best_eligible(session: Session, *, excluding: int | None) -> Experiment | None:
    """The record-eligible finished experiment with the lowest mean val_bpb."""
    query = (select(Experiment)
             .where(Experiment.eligible == True,  # noqa: E712 - SQL, not Python truth
                    Experiment.status == ExperimentStatus.finished.value,
                    col(Experiment.mean_val_bpb).is_not(None))
             .order_by(col(Experiment.mean_val_bpb)))
    if excluding is not None:
        query = query.where(Experiment.id != excluding)
    return session.exec(query).first()


def test_against_reference(session: Session, experiment: Experiment,
                           scores: list[float]) -> tuple[Significance, dict[str, Any]]:
    """The significance of `scores` against the experiment's reference, and that reference."""
    if experiment.reference_experiment_id is not None:
        return _welch(session, scores, experiment.reference_experiment_id, "chosen at submission")
    if experiment.reference_bpb is not None:
        return (one_sample_test(scores, experiment.reference_bpb),
                {"kind": "value", "val_bpb": experiment.reference_bpb, "source": "chosen at submission"})
    best = best_eligible(session, excluding=experiment.id)
    if best is not None and best.id is not None:
        return _welch(session, scores, best.id, "best record-eligible experiment")
    record = get_settings().record_bpb
    return (one_sample_test(scores, record),
            {"kind": "value", "val_bpb": record, "source": "the standing record (CADDIE_RECORD_BPB)"})


def _welch(session: Session, scores: list[float], reference_id: int,
           source: str) -> tuple[Significance, dict[str, Any]]:
    reference_scores = seed_scores(session, reference_id)
    return (welch_test(scores, reference_scores),
            {"kind": "experiment", "experiment_id": reference_id, "source": source})
