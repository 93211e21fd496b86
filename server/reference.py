"""What an experiment must beat, and the test that says whether it did.

The reference is, in order: another experiment named at submission (Welch's t-test against its
per-seed scores), a value named at submission, the best record-eligible experiment on the
leaderboard (Welch), or CADDIE_RECORD_BPB, the standing record (one-sample t-test against it
minus 0.005 nats). Scores are val_bpb; the 0.005-nat margin is 0.005 / ln 2 bits per byte.
"""

import math
import posixpath
from typing import Any

from sqlmodel import Session, col, select

from server import presets
from server.config import get_settings
from server.errors import NotFound
from server.models import Experiment, Run
from server.states import ExperimentStatus, RunStatus
from server.statistics import DEFAULT_ALPHA, Significance, Units, one_sample_test, welch_test


def reference_bpb(stats: dict[str, Any] | None) -> float | None:
    """The val_bpb an experiment was tested against, from its stored test: a Welch test's
    reference mean, else the reference value; None before a test."""
    stats = stats or {}
    value = stats.get("reference_mean")
    if value is None:
        value = (stats.get("reference") or {}).get("val_bpb")
    return float(value) if isinstance(value, (int, float)) else None


def seed_scores(session: Session, experiment_id: int) -> list[float]:
    """val_bpb of the experiment's succeeded seeds (its control arm; superseded runs failed)."""
    rows = session.exec(select(Run.val_bpb).where(
        Run.experiment_id == experiment_id, Run.status == RunStatus.succeeded.value,
        Run.variant == "", col(Run.val_bpb).is_not(None))).all()
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


def test_against_reference(session: Session, experiment: Experiment, scores: list[float], *,
                           alpha: float = DEFAULT_ALPHA) -> tuple[Significance, dict[str, Any]]:
    """The significance of `scores` (val_bpb) against the experiment's reference, and that
    reference."""
    against = resolve(session, experiment)
    if against["kind"] == "experiment":
        reference_scores = seed_scores(session, against["experiment_id"])
        return welch_test(scores, reference_scores, alpha=alpha), against
    return one_sample_test(scores, against["val_bpb"], alpha=alpha), against


def resolve(session: Session, experiment: Experiment) -> dict[str, Any]:
    """The experiment's reference: {"kind": "experiment", "experiment_id", "source"} or
    {"kind": "value", "val_bpb", "source"}."""
    if experiment.reference_experiment_id is not None:
        return _experiment(experiment.reference_experiment_id, "chosen at submission")
    if experiment.reference_bpb is not None:
        return {"kind": "value", "val_bpb": experiment.reference_bpb, "source": "chosen at submission"}
    best = best_eligible(session, excluding=experiment.id)
    if best is not None and best.id is not None:
        return _experiment(best.id, "best record-eligible experiment")
    return {"kind": "value", "val_bpb": get_settings().record_bpb,
            "source": "the standing record (CADDIE_RECORD_BPB)"}


def test_in_units(session: Session, experiment: Experiment,
                  units: Units | str) -> tuple[Significance, dict[str, Any]]:
    """The experiment's test in `units`, against the reference its stored result used (else
    the one it would use now). Raises ValueError naming `units` when the reference cannot be
    expressed in them (a val_bpb value has no per-token form)."""
    units = _units(units)
    assert experiment.id is not None
    against = (experiment.stats or {}).get("reference") or resolve(session, experiment)
    scores = _scores(session, experiment.id, units)
    if against["kind"] == "experiment":
        reference = session.get(Experiment, against["experiment_id"])
        if reference is None or reference.id is None:
            raise NotFound(f"reference experiment {against['experiment_id']} not found")
        tokenizers = {}
        if units is Units.NATS_PER_TOKEN:
            tokenizers = {"tokenizer": tokenizer(experiment),
                          "reference_tokenizer": tokenizer(reference)}
        return welch_test(scores, _scores(session, reference.id, units), units=units,
                          **tokenizers), against
    if units is Units.NATS_PER_TOKEN:
        raise ValueError("units: nats_per_token needs a reference experiment of the same "
                         "tokenizer; this experiment's reference is a val_bpb value")
    value = against["val_bpb"] * (math.log(2) if units is Units.NATS_PER_BYTE else 1.0)
    return one_sample_test(scores, value, units=units), against


def tokenizer(experiment: Experiment) -> str | None:
    """The file name of the tokenizer the experiment's runs use; None when unknown."""
    if experiment.kind == "script":
        path = experiment.env.get("TOKENIZER_PATH")
    elif experiment.source is None and experiment.preset in presets.preset_names():
        path = presets.resolved_config(experiment.preset, experiment.config).get("tokenizer_path")
    else:
        path = None
    return posixpath.basename(str(path)) if path else None


def _units(units: Units | str) -> Units:
    try:
        return Units(units)
    except ValueError:
        choices = ", ".join(u.value for u in Units)
        raise ValueError(f"units: {units!r} is not one of {choices}") from None


def _scores(session: Session, experiment_id: int, units: Units) -> list[float]:
    """The control's succeeded scores in `units`."""
    if units is Units.NATS_PER_TOKEN:
        rows = session.exec(select(Run.val_loss).where(
            Run.experiment_id == experiment_id, Run.status == RunStatus.succeeded.value,
            Run.variant == "", col(Run.val_loss).is_not(None))).all()
        return [float(loss) for loss in rows if loss is not None]
    scale = math.log(2) if units is Units.NATS_PER_BYTE else 1.0
    return [score * scale for score in seed_scores(session, experiment_id)]


def _experiment(reference_id: int, source: str) -> dict[str, Any]:
    return {"kind": "experiment", "experiment_id": reference_id, "source": source}
