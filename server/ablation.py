"""Ablation studies: each variant's difference from the control, paired by seed.

An experiment with `variants` runs the control (variant "") and every variant on the same seeds.
For each variant, the differences variant − control in val_bpb on the seeds where both arms
succeeded (and neither run is superseded) give the mean difference, its 95% confidence interval
from the t distribution, and the two-sided paired t-test of "no difference". Negative is better
(lower bpb). Differences are also given in nats per byte (bpb × ln 2), the unit of the record
margin (0.005 nats).

An arm that ran exactly the control's settings measures nothing: every difference would be
noise around 0, read as "this change does nothing". What each run ran is taken from its own
results, not from the spec: the trainer's resolved config in results.json (less seed and
run_id), or for a participant's script the digest of the environment the worker launched it
with (results' worker part, `env_sha256`). A variant whose succeeded runs all ran one setting
equal to the control's gets no numbers, and its row and the summary carry an `error` saying so.
"""

import json
import math
import statistics
from typing import Any

from scipy import stats as scipy_stats

from server.models import Experiment, Run
from server.policies import CONTROL
from server.states import RunStatus
from server.workerfacts import WorkerFacts

CONFIDENCE = 0.95
PER_RUN_FIELDS = ("seed", "run_id")  # config fields that differ between the seeds of one setting


def summarize(experiment: Experiment, runs: list[Run]) -> dict[str, Any]:
    """{"control": {"n", "mean_val_bpb"}, "rows": [one per variant, in the experiment's order]}.

    A row: variant, changes (its config fields), n (paired seeds), seeds, mean_diff_bpb,
    ci_low, ci_high (bpb), mean_diff_nats, t, df, p, note. Numbers the data cannot define
    (fewer than 2 pairs, identical differences) are None and the note says why."""
    control = scores_by_seed(runs, CONTROL)
    control_ran = settings_ran(runs, CONTROL)
    rows = [_row(variant, control, scores_by_seed(runs, variant["name"]))
            for variant in experiment.variants]
    for row in rows:
        if control_ran is not None and settings_ran(runs, row["variant"]) == control_ran:
            row.update(_same_as_control(row["variant"]))
    mean = statistics.fmean(control.values()) if control else None
    summary: dict[str, Any] = {"control": {"n": len(control), "mean_val_bpb": mean}, "rows": rows}
    same = [row["variant"] for row in rows if row.get("error")]
    if same:
        summary["error"] = (f"{', '.join(same)} ran the same settings as the control: no difference "
                            "was measured, so the ablation shows no result for "
                            f"{'it' if len(same) == 1 else 'them'}")
    return summary


def settings_ran(runs: list[Run], arm: str) -> str | None:
    """The one setting an arm's succeeded runs ran (a canonical text), or None when unknown
    (no succeeded run says what it ran) or when its runs disagree."""
    seen = {_ran(run) for run in runs if run.variant == arm and run.status == RunStatus.succeeded
            and not run.superseded}
    seen.discard(None)
    return seen.pop() if len(seen) == 1 else None


def _ran(run: Run) -> str | None:
    results = run.results or {}
    config = results.get("config")
    if isinstance(config, dict):
        return "config:" + json.dumps({k: v for k, v in config.items() if k not in PER_RUN_FIELDS},
                                      sort_keys=True, default=str)
    digest = WorkerFacts.from_results(results).env_sha256
    return f"env:{digest}" if digest is not None else None


def _same_as_control(name: str) -> dict[str, Any]:
    return {"mean_diff_bpb": None, "ci_low": None, "ci_high": None, "mean_diff_nats": None,
            "t": None, "df": None, "p": None,
            "error": f"{name} ran exactly the control's settings (the config its runs resolved, or the "
                     "env they were launched with, equals the control's): a difference here would be "
                     "noise, not a result",
            "note": ""}


def scores_by_seed(runs: list[Run], variant: str) -> dict[int, float]:
    """val_bpb per seed of one arm's succeeded, not superseded runs (the latest run of a seed)."""
    scores: dict[int, float] = {}
    for run in sorted(runs, key=lambda r: r.id or 0):
        if (run.variant == variant and run.status == RunStatus.succeeded and not run.superseded
                and run.val_bpb is not None):
            scores[run.seed] = run.val_bpb
    return scores


def _row(variant: dict[str, Any], control: dict[int, float], arm: dict[int, float]) -> dict[str, Any]:
    seeds = sorted(set(control) & set(arm))
    diffs = [arm[seed] - control[seed] for seed in seeds]
    row: dict[str, Any] = {"variant": variant["name"],
                           "changes": variant.get("config") or variant.get("env") or {},
                           "n": len(diffs), "seeds": seeds, "error": ""}
    return row | paired_test(diffs)


def paired_test(diffs: list[float]) -> dict[str, Any]:
    """Mean, 95% CI, t, df and two-sided p of paired differences (bits per byte)."""
    n = len(diffs)
    empty = {"mean_diff_bpb": None, "ci_low": None, "ci_high": None, "mean_diff_nats": None,
             "t": None, "df": None, "p": None}
    if n == 0:
        return empty | {"note": "no seed where both the variant and the control succeeded"}
    mean = statistics.fmean(diffs)
    known = empty | {"mean_diff_bpb": mean, "mean_diff_nats": mean * math.log(2)}
    if n < 2:
        return known | {"note": "2 paired seeds are needed for an interval and a test"}
    df = n - 1
    stderr = statistics.stdev(diffs) / math.sqrt(n)
    if stderr == 0:
        return known | {"df": df, "note": "every paired difference is the same: no spread to test"}
    t = mean / stderr
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * stderr
    p = float(2 * scipy_stats.t.sf(abs(t), df))
    return known | {"ci_low": mean - half, "ci_high": mean + half, "t": t, "df": df, "p": p,
                    "note": ""}
