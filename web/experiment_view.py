"""What the experiment page shows beyond the rows: the spec's new fields, the test against the
reference, the lines of the seed plot, and an ablation study's table.

`experiment.stats` is the finalizer's dict (server/statistics.py `Significance.to_dict()` plus
"reference", and "ablation" for a study); every key is read with `.get`, since an experiment
finalized by an older version, or not yet, lacks some.
"""

import math
from dataclasses import dataclass
from typing import Any

from server import disagreements
from server.models import ExperimentPublicWithRuns
from server.statistics import Units
from web.rendering import MISSING

# Columns of an ablation row shown in their own way; any other key gets a column of its own.
ABLATION_FIXED = ("variant", "changes", "seeds", "note", "error")
ABLATION_LABELS = {"n": "Pairs", "mean_diff_bpb": "Δ val_bpb", "ci_low": "95% CI low",
                   "ci_high": "95% CI high", "mean_diff_nats": "Δ nats", "t": "t", "df": "df",
                   "p": "p"}


@dataclass(frozen=True)
class AblationTable:
    columns: list[tuple[str, str]]  # (key, label) of the numeric columns, in the rows' order
    rows: list[dict[str, Any]]
    control: dict[str, Any]
    error: str = ""  # set when a variant ran the control's settings: no result for it


def threshold_bpb(stats: dict[str, Any] | None) -> float | None:
    """The mean a record must be below, in val_bpb (a per-token threshold through the bytes
    per token the test used); None when it cannot be said."""
    stats = stats or {}
    threshold = stats.get("threshold")
    if not isinstance(threshold, (int, float)):
        return None
    units = stats.get("units", Units.BITS_PER_BYTE.value)
    if units == Units.BITS_PER_BYTE:
        return float(threshold)
    if units == Units.NATS_PER_BYTE:
        return threshold / math.log(2)
    per_token = stats.get("bytes_per_token")
    if isinstance(per_token, (int, float)) and per_token > 0:
        return threshold / (math.log(2) * per_token)
    return None


def against_text(reference: dict[str, Any] | None) -> str:
    """What a test was against, in words: the record's name, val_bpb and date, or the value
    and where it came from."""
    if not isinstance(reference, dict):
        return MISSING
    score = reference.get("val_bpb")
    shown = f"val_bpb {score:.5f}" if isinstance(score, (int, float)) else ""
    if reference.get("kind") in ("record", "experiment"):
        parts = [str(reference.get("name") or f"experiment {reference.get('experiment_id')}"),
                 shown, str(reference.get("date") or "")]
        return ", ".join(part for part in parts if part) + f" ({reference.get('source')})"
    if reference.get("kind") == "none":
        return f"nothing: {reference.get('source')}"
    return f"{shown} ({reference.get('source')})"


def number(value: Any, digits: int = 4) -> str:
    """A statistic as the page writes it: `digits` significant digits, — when missing."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}g}"


def hardware(experiment: ExperimentPublicWithRuns) -> str:
    """What the experiment asked a renting provider for."""
    if experiment.gpu_type is None and experiment.gpu_count is None:
        return "the provider's default (8 × H100 SXM for runpod)"
    count = experiment.gpu_count if experiment.gpu_count is not None else "default number of"
    return f"{count} × {experiment.gpu_type or 'the default GPU'}"


def ablation_table(stats: dict[str, Any] | None) -> AblationTable | None:
    """The study's rows as a table; its numeric columns are whatever keys the rows carry."""
    study = (stats or {}).get("ablation")
    if not isinstance(study, dict) or not study.get("rows"):
        return None
    keys: list[str] = []
    for row in study["rows"]:
        keys += [key for key in row if key not in ABLATION_FIXED and key not in keys]
    columns = [(key, ABLATION_LABELS.get(key, key)) for key in keys]
    return AblationTable(columns=columns, rows=study["rows"], control=study.get("control") or {},
                         error=str(study.get("error") or ""))


def changes_text(changes: Any) -> str:
    """`field=value, field=value` of a variant's config changes."""
    if not isinstance(changes, dict) or not changes:
        return "no change"
    return ", ".join(f"{field}={_plain(value)}" for field, value in sorted(changes.items()))


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Comparison:
    """One value a records folder states, beside what Caddie read from its logs."""

    label: str
    stated: str
    measured: str


@dataclass(frozen=True)
class ImportFacts:
    """What an imported experiment's page explains: where it came from, what its folder
    states against what the logs show, and whether the challenge accepted it."""

    folder: str  # records/<track>/<folder>
    path: str  # where it was read from on the importing machine
    comparisons: list[Comparison]
    disagreements: list[str]
    notes: list[str]
    logs: list[dict[str, Any]]  # {"file", "seed", "seed_from", ...} as the import stored them
    accepted: bool | None  # None: the import did not say


def import_facts(experiment: ExperimentPublicWithRuns) -> ImportFacts | None:
    """The import's facts from `experiment.source`; None for an experiment run here."""
    source = experiment.source
    if not isinstance(source, dict):
        return None
    submission = stated if isinstance(stated := source.get("submission"), dict) else {}
    found = listed if isinstance(listed := source.get("disagreements"), list) else []
    return ImportFacts(
        folder=f"records/{source['key']}" if source.get("key") else MISSING,
        path=str(source.get("path") or MISSING),
        comparisons=_comparisons(submission, experiment),
        disagreements=[disagreements.sentence(d) for d in found if isinstance(d, dict)],
        notes=[str(note) for note in source.get("notes") or []],
        logs=[entry for entry in source.get("logs") or [] if isinstance(entry, dict)],
        accepted=getattr(experiment, "accepted", None))


def _comparisons(submission: dict[str, Any],
                 experiment: ExperimentPublicWithRuns) -> list[Comparison]:
    counted = [run for run in experiment.runs if run.status == "succeeded" and not run.variant]
    measured = {
        "val_bpb": experiment.mean_val_bpb,
        "val_loss": _mean(run.val_loss for run in counted),
        "val_bpb_std": experiment.std_val_bpb,
        "bytes_total": max((r.bytes_total for r in counted if r.bytes_total is not None),
                           default=None),
        "bytes_code": max((r.code_bytes for r in counted if r.code_bytes is not None),
                          default=None),
        "seeds": sorted(run.seed for run in counted) or None,
    }
    rows = []
    for key, label in STATED_FIELDS:
        stated = submission.get(key, submission.get(f"mean_{key}"))
        if stated is None and measured[key] is None:
            continue
        rows.append(Comparison(label, _stated(stated), _stated(measured[key])))
    return rows


# submission.json's fields that the logs can confirm, and the words the page uses for them.
STATED_FIELDS = (("val_bpb", "mean val_bpb"), ("val_bpb_std", "val_bpb std"),
                 ("val_loss", "mean val_loss"), ("bytes_total", "largest bytes total"),
                 ("bytes_code", "largest code bytes"), ("seeds", "seeds"))


def _mean(values: Any) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _stated(value: Any) -> str:
    if value is None or value == []:
        return MISSING
    return disagreements.value_text(value)
