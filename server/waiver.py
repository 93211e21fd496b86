"""The challenge's waiver for systems optimization, and what Caddie checks in its place.

The challenge's README: "They must beat the existing SOTA by at least 0.005 nats. ... all
submissions must provide enough run logs to show at p < 0.01 that they achieved the required
0.005-nat improvement. For submissions that improve speed through systems optimization
without changing the ML, this requirement is waived."

An experiment declares itself a systems-only change of an earlier finished, scored
experiment (`Experiment.systems_only_of`). On the record track its verdict then drops the
test against the standing record (still computed and stored) and asks instead (`judge`):

- the ML unchanged: for a trainer experiment, verified: its resolved config (schema
  defaults, preset, overrides) equals the named experiment's in every field that
  trainer/schema.json does not list under "systems_fields"; for a script experiment, the
  submitter's declaration, shown as "declared, not verified";
- the score not worse beyond the noise, stated simply: its mean is at most the named
  experiment's mean plus the 0.005-nat margin (in the record test's units, nats per token by
  default; no t-test, so a mean within the margin passes however few seeds it has);
- actually faster: its seeds' mean training step time (train_time_s / steps) is lower than
  the named experiment's seeds'.

Every other rule (seed count, bytes, time caps, hardware, full validation split) holds as
for any experiment. The non-record track tests no record, so nothing is waived there.
"""

import statistics
from typing import Any

from sqlmodel import Session, col, select

from server import nodes, policies, presets, tracks
from server.models import Experiment, Run
from server.states import ExperimentStatus, RunStatus
from server.statistics import DEFAULT_UNITS, Units, record_margin, scale

FIELD = "systems_only_of"  # the spec's and the table's name for the declaration
DECLARED = "declared, not verified"  # the ML check of a script experiment
VERIFIED = "verified"
DIFFERS = "differs"


def systems_fields() -> list[str]:
    """The trainer fields that change only speed (compilation, batching of evaluation,
    logging), as trainer/schema.json lists them."""
    return list(presets.load_schema().get("systems_fields", []))


def check_declared(session: Session, named_id: int | None, *, kind: str) -> None:
    """Refuse a declaration the verdict could not use; ValueError naming the field. The named
    experiment must exist, be finished and scored, and for a trainer experiment be another
    trainer experiment (a config can only be compared with a config)."""
    if named_id is None:
        return
    named = session.get(Experiment, named_id)
    if named is None:
        raise ValueError(f"{FIELD}: experiment {named_id} not found")
    if named.status != ExperimentStatus.finished or named.mean_val_bpb is None:
        state = "finished without a score" if named.status == ExperimentStatus.finished else named.status
        raise ValueError(f"{FIELD}: experiment {named_id} is {state}; a systems-only change is "
                         "judged against a finished experiment with a score")
    if kind == "trainer" and named.kind != "trainer":
        raise ValueError(f"{FIELD}: experiment {named_id} is a {named.kind} experiment; a trainer "
                         "experiment's ML can only be verified against another trainer experiment")


def ml_differences(experiment: Experiment, named: Experiment) -> list[str]:
    """The ML fields whose resolved values differ, as "field: theirs → ours"; [] when the ML is
    the same. Both must be trainer experiments."""
    known = presets.load_schema()["presets"]
    gone = [p for p in (named.preset, experiment.preset) if p not in known]
    if gone:  # a preset removed from the schema since: its fields cannot be resolved
        return [f"preset: {gone[0]!r} is no longer in trainer/schema.json, so the configs cannot be compared"]
    ours = presets.resolved_config(experiment.preset, experiment.config)
    theirs = presets.resolved_config(named.preset, named.config)
    skipped = set(systems_fields())
    return [f"{name}: {theirs.get(name)!r} → {ours.get(name)!r}"
            for name in sorted(set(ours) | set(theirs))
            if name not in skipped and ours.get(name) != theirs.get(name)]


def judge(session: Session, experiment: Experiment, runs: list[Run],
          per_token_bytes: float | None) -> dict[str, Any]:
    """The waiver's verdict for a finished experiment's counted runs: {"of", "applies",
    "granted", "ml", "ml_differences", "units", "margin", "mean", "reference_mean", "delta",
    "step_ms", "reference_step_ms", "reasons", "rule"}; scores in `units`, step times in ms.
    `per_token_bytes`: of the experiment's validation set (None: nats per byte)."""
    assert experiment.systems_only_of is not None
    named = session.get(Experiment, experiment.systems_only_of)
    of = _named_text(experiment.systems_only_of, named)
    verdict: dict[str, Any] = {"of": _named_facts(experiment.systems_only_of, named)}
    if experiment.track == tracks.NON_RECORD_TRACK:
        return verdict | {"applies": False, "granted": False, "reasons": [],
                          "rule": f"systems-only change of {of}: the non-record track tests no "
                                  "record, so there is nothing to waive"}
    if named is None or named.status != ExperimentStatus.finished or named.mean_val_bpb is None:
        reason = f"systems-only change of {of}: it is not finished with a score now"
        return verdict | {"applies": True, "granted": False, "reasons": [reason], "rule": reason}
    ml, differences = _ml(experiment, named)
    verdict |= {"applies": True, "ml": ml, "ml_differences": differences}
    verdict |= _score(runs, named, per_token_bytes) | _speed(session, runs, named)
    failures = _failures(verdict)
    return verdict | {"granted": not failures, "rule": _rule(verdict, of, failures),
                      "reasons": [f"systems-only change of {of}: {why}" for why in failures]}


def granted_rule(stats: dict[str, Any] | None) -> str | None:
    """The verdict in words of an experiment the waiver made eligible; None otherwise."""
    verdict = (stats or {}).get("systems_waiver") or {}
    return verdict.get("rule") if verdict.get("granted") else None


def _ml(experiment: Experiment, named: Experiment) -> tuple[str, list[str]]:
    if experiment.kind != "trainer":
        return DECLARED, []
    if named.kind != "trainer":
        return DIFFERS, [f"experiment {named.id} is a {named.kind} experiment, not a trainer config"]
    differences = ml_differences(experiment, named)
    return (DIFFERS if differences else VERIFIED), differences


def _score(runs: list[Run], named: Experiment, per_token_bytes: float | None) -> dict[str, Any]:
    """Its mean and the named experiment's, in the record test's units, and the difference."""
    units = DEFAULT_UNITS if per_token_bytes is not None else Units.NATS_PER_BYTE
    factor = scale(units, per_token_bytes)
    scores = [run.val_bpb for run in policies.counted_runs(runs)
              if run.status == RunStatus.succeeded and run.val_bpb is not None]
    mean = statistics.fmean(scores) * factor if scores else None
    assert named.mean_val_bpb is not None
    theirs = named.mean_val_bpb * factor
    return {"units": units.value, "margin": record_margin(units), "mean": mean,
            "reference_mean": theirs, "delta": None if mean is None else mean - theirs}


def _speed(session: Session, runs: list[Run], named: Experiment) -> dict[str, Any]:
    """Mean milliseconds per training step of its seeds and of the named experiment's."""
    assert named.id is not None
    return {"step_ms": _mean_step_ms(policies.counted_runs(runs)),
            "reference_step_ms": _mean_step_ms(_seeds(session, named.id))}


def _seeds(session: Session, experiment_id: int) -> list[Run]:
    return list(session.exec(select(Run).where(
        Run.experiment_id == experiment_id, Run.variant == policies.CONTROL,
        col(Run.superseded).is_(False))).all())


def _mean_step_ms(runs: list[Run]) -> float | None:
    times = [ms for run in runs if run.status == RunStatus.succeeded
             for ms in [nodes.step_ms(run)] if ms is not None]
    return statistics.fmean(times) if times else None


def _failures(verdict: dict[str, Any]) -> list[str]:
    """Which stand-in checks fail, each in words; [] when the waiver is granted."""
    failures = []
    if verdict["ml"] == DIFFERS:
        failures.append(f"ML fields differ: {'; '.join(verdict['ml_differences'])}")
    units, margin, delta = verdict["units"], verdict["margin"], verdict["delta"]
    if delta is None:
        failures.append("no scored seed to compare")
    elif delta > margin:
        failures.append(f"mean {verdict['mean']:.5f} is {delta:.5f} {units} worse than "
                        f"{verdict['reference_mean']:.5f}, beyond the {margin:.5f} margin")
    mine, theirs = verdict["step_ms"], verdict["reference_step_ms"]
    if mine is None or theirs is None:
        missing = "its seeds" if mine is None else "the named experiment's seeds"
        failures.append(f"step time unknown for {missing} (train_time_s / steps), so faster "
                        "cannot be shown")
    elif mine >= theirs:
        failures.append(f"not faster: {mine:.1f} ms/step vs {theirs:.1f} ms/step")
    return failures


def _rule(verdict: dict[str, Any], of: str, failures: list[str]) -> str:
    """The verdict in words, as the experiment page and the export show it."""
    if failures:
        return (f"systems-only change of {of}: waiver of the 0.005-nat, p < 0.01 test refused: "
                + "; ".join(failures))
    ml = ("ML verified unchanged (same config outside the systems fields)" if verdict["ml"] == VERIFIED
          else "ML unchanged as declared by the submitter, not verified")
    return (f"systems-only change of {of}: the 0.005-nat, p < 0.01 test against the record is "
            f"waived; {ml}; mean {verdict['delta']:+.5f} {verdict['units']} from it (within "
            f"{verdict['margin']:.5f}); {verdict['step_ms']:.1f} ms/step vs "
            f"{verdict['reference_step_ms']:.1f} ms/step")


def _named_facts(named_id: int, named: Experiment | None) -> dict[str, Any]:
    if named is None:
        return {"experiment_id": named_id}
    return {"experiment_id": named_id, "name": named.name, "val_bpb": named.mean_val_bpb,
            "kind": named.kind}


def _named_text(named_id: int, named: Experiment | None) -> str:
    return f"{named.name} (experiment {named_id})" if named is not None else f"experiment {named_id}"
