"""What an experiment must beat, and the tests that say whether it did.

Two references, each stated in the stored test (`stats["reference"]`: kind, source, and for
a record its experiment id, name, val_bpb and date):

- the **standing record** of the experiment's track at its date (`standing_record`): the best
  (lowest mean val_bpb) finished experiment of the same track dated strictly before it
  (`Experiment.record_date`: an import's record date, our own experiment's submission), never
  itself, that the challenge accepted (`accepted`) or, where the challenge has not judged it
  (our own runs, imports without a leaderboard), that is record-eligible. For our own
  record-track experiments CADDIE_RECORD_BPB stands when it is better (or nothing is stored).
  An import older than every record of its track has no reference: it is the first.
  Record-eligibility is only ever decided against it ("As the challenge's README has it:
  submissions should exceed the SOTA record");
- a reference **chosen at submission** (`reference_experiment_id`: Welch's t-test against its
  seeds; `reference_bpb`: one-sample), which then is the test shown, while eligibility stays
  with the record test (`stats["record_test"]`).

A record is tested one-sample against its mean (the score it stands at). Scores are val_bpb,
converted to the test's units (`server.statistics`, nats per token by default).
"""

from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from server import tracks
from server.config import get_settings
from server.errors import NotFound
from server.models import Experiment, Run, as_utc
from server.states import ExperimentStatus, RunStatus
from server.statistics import (
    DEFAULT_ALPHA,
    DEFAULT_UNITS,
    Significance,
    Units,
    bytes_per_token,
    checked_units,
    one_sample_test,
    scale,
    welch_test,
)


def reference_bpb(stats: dict[str, Any] | None) -> float | None:
    """The val_bpb an experiment was tested against, from its stored test: a Welch test's
    reference mean, else the reference value; None before a test."""
    stats = stats or {}
    value = (stats.get("reference") or {}).get("val_bpb")
    if value is None and stats.get("units") in (Units.BITS_PER_BYTE, None):
        value = stats.get("reference_mean")
    return float(value) if isinstance(value, (int, float)) else None


def seed_scores(session: Session, experiment_id: int) -> list[float]:
    """val_bpb of the experiment's succeeded seeds (its control arm; superseded runs failed)."""
    return [bpb for _loss, bpb in _seed_pairs(session, experiment_id) if bpb is not None]


def _seed_pairs(session: Session, experiment_id: int) -> list[tuple[float | None, float | None]]:
    rows = session.exec(select(Run.val_loss, Run.val_bpb).where(
        Run.experiment_id == experiment_id, Run.status == RunStatus.succeeded,
        Run.variant == "", col(Run.superseded).is_(False), col(Run.val_bpb).is_not(None))).all()
    return [(loss, bpb) for loss, bpb in rows]


def experiment_bytes_per_token(session: Session, experiment_id: int) -> float | None:
    """Bytes per token of the experiment's validation set, from its seeds."""
    return bytes_per_token(_seed_pairs(session, experiment_id))


def best_eligible(session: Session, *, excluding: int | None) -> Experiment | None:
    """The record-eligible finished experiment with the lowest mean val_bpb."""
    query = (select(Experiment)
             .where(Experiment.eligible == True,  # noqa: E712 - SQL, not Python truth
                    Experiment.status == ExperimentStatus.finished,
                    col(Experiment.mean_val_bpb).is_not(None))
             .order_by(col(Experiment.mean_val_bpb)))
    if excluding is not None:
        query = query.where(Experiment.id != excluding)
    return session.exec(query).first()


def standing_record(session: Session, experiment: Experiment) -> Experiment | None:
    """The best record of the experiment's track dated strictly before it (never itself)."""
    judged = or_(col(Experiment.accepted).is_(True),
                 and_(col(Experiment.accepted).is_(None),
                      col(Experiment.eligible).is_(True)))
    query = (select(Experiment)
             .where(Experiment.track == experiment.track, judged,
                    Experiment.status == ExperimentStatus.finished,
                    col(Experiment.mean_val_bpb).is_not(None),
                    col(Experiment.record_date) < experiment.record_date)
             .order_by(col(Experiment.mean_val_bpb), col(Experiment.id)))
    if experiment.id is not None:
        query = query.where(Experiment.id != experiment.id)
    return session.exec(query).first()


def record_reference(session: Session, experiment: Experiment) -> dict[str, Any]:
    """The standing record as a stored reference: {"kind": "record", "experiment_id", "name",
    "val_bpb", "date", "track", "source"}, {"kind": "value", ...} for CADDIE_RECORD_BPB, or
    {"kind": "none", "source"} when nothing stands before it."""
    best = standing_record(session, experiment)
    configured = get_settings().record_bpb
    own_record_track = experiment.source is None and experiment.track == tracks.RECORD_TRACK
    if own_record_track and (best is None or (best.mean_val_bpb or 0) >= configured):
        return {"kind": "value", "val_bpb": configured, "track": experiment.track,
                "source": "the standing record (CADDIE_RECORD_BPB)"}
    if best is None or best.id is None:
        return {"kind": "none", "track": experiment.track,
                "source": f"no record of {experiment.track} is dated before "
                          f"{as_utc(experiment.record_date).date().isoformat()}"}
    date = as_utc(best.record_date).date().isoformat()
    return {"kind": "record", "experiment_id": best.id, "name": best.name,
            "val_bpb": best.mean_val_bpb, "date": date, "track": best.track,
            "source": f"the standing record of {best.track} on "
                      f"{as_utc(experiment.record_date).date().isoformat()}"}


def chosen_reference(session: Session, experiment: Experiment) -> dict[str, Any] | None:
    """The reference named at submission, or None."""
    if experiment.reference_experiment_id is not None:
        return _experiment(session, experiment.reference_experiment_id, "chosen at submission")
    if experiment.reference_bpb is not None:
        return {"kind": "value", "val_bpb": experiment.reference_bpb, "source": "chosen at submission"}
    return None


def resolve(session: Session, experiment: Experiment) -> dict[str, Any]:
    """The reference the experiment's shown test uses: the chosen one, else the record."""
    return chosen_reference(session, experiment) or record_reference(session, experiment)


def test_against_reference(session: Session, experiment: Experiment, scores: list[float], *,
                           alpha: float = DEFAULT_ALPHA, against: dict[str, Any] | None = None,
                           units: Units | str = DEFAULT_UNITS,
                           per_token_bytes: float | None = None,
                           ) -> tuple[Significance | None, dict[str, Any]]:
    """The significance of `scores` (val_bpb) against `against` (default: `resolve`), in
    `units`; None for the test when there is nothing to test against. Per token without
    known bytes per token falls back to nats per byte (the stored units say so)."""
    against = against or resolve(session, experiment)
    if against["kind"] == "none":
        return None, against
    units = Units(units)
    if units is Units.NATS_PER_TOKEN and per_token_bytes is None:
        units = Units.NATS_PER_BYTE
    factor = scale(units, per_token_bytes)
    mine = [score * factor for score in scores]
    bytes_per_token = per_token_bytes if units is Units.NATS_PER_TOKEN else None
    if against["kind"] == "experiment":
        theirs = [score * factor for score in seed_scores(session, against["experiment_id"])]
        return welch_test(mine, theirs, alpha=alpha, units=units,
                          bytes_per_token=bytes_per_token), against
    return one_sample_test(mine, against["val_bpb"] * factor, alpha=alpha, units=units,
                           bytes_per_token=bytes_per_token), against


def stored(significance: Significance, against: dict[str, Any]) -> dict[str, Any]:
    """A test as `Experiment.stats` keeps it: the numbers, the reference, and the difference
    of the means (`delta`, in the test's units; `delta_bpb`, bits per byte)."""
    result = {**significance.to_dict(), "reference": against, "delta": None, "delta_bpb": None}
    reference_mean = significance.reference_mean
    if reference_mean is None and significance.threshold is not None:
        reference_mean = significance.threshold + significance.margin
    if significance.mean is not None and reference_mean is not None:
        delta = significance.mean - reference_mean
        factor = scale(significance.units, significance.bytes_per_token)
        result |= {"delta": delta, "delta_bpb": delta / factor}
    return result


def test_in_units(session: Session, experiment: Experiment,
                  units: Units | str) -> tuple[Significance, dict[str, Any]]:
    """The experiment's test in `units`, against the reference its stored result used (else
    the one it would use now). Raises ValueError naming `units` when the test cannot be made
    in them (per token without seeds that state val_loss, or no reference at all)."""
    units = checked_units(units)
    assert experiment.id is not None
    against = (experiment.stats or {}).get("reference") or resolve(session, experiment)
    if against["kind"] == "experiment" and session.get(Experiment, against["experiment_id"]) is None:
        raise NotFound(f"reference experiment {against['experiment_id']} not found")
    per_token = experiment_bytes_per_token(session, experiment.id)
    if units is Units.NATS_PER_TOKEN and per_token is None:
        raise ValueError("units: nats_per_token needs seeds that state both val_loss and val_bpb")
    significance, against = test_against_reference(
        session, experiment, seed_scores(session, experiment.id), against=against, units=units,
        per_token_bytes=per_token)
    if significance is None:
        raise ValueError(f"units: nothing to test against ({against['source']})")
    return significance, against


def _experiment(session: Session, reference_id: int, source: str) -> dict[str, Any]:
    found = session.get(Experiment, reference_id)
    reference: dict[str, Any] = {"kind": "experiment", "experiment_id": reference_id, "source": source}
    if found is not None:
        reference |= {"name": found.name, "val_bpb": found.mean_val_bpb,
                      "date": as_utc(found.record_date).date().isoformat()}
    return reference
