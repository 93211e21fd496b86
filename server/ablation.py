"""Ablation studies: each variant's difference from the control, paired by seed.

An experiment with `variants` runs the control (variant "") and every variant on the same seeds.
For each variant, the differences variant − control in val_bpb on the seeds where both arms
succeeded (and neither run is superseded) give the mean difference, its 95% confidence interval
from the t distribution, and the two-sided paired t-test of "no difference". Negative is better
(lower bpb). Differences are also given in nats per byte (bpb × ln 2), the unit of the record
margin (0.005 nats).
"""

import math
import statistics
from typing import Any

from scipy import stats as scipy_stats

from server.models import Experiment, Run
from server.policies import CONTROL
from server.states import RunStatus

CONFIDENCE = 0.95


def summarize(experiment: Experiment, runs: list[Run]) -> dict[str, Any]:
    """{"control": {"n", "mean_val_bpb"}, "rows": [one per variant, in the experiment's order]}.

    A row: variant, changes (its config fields), n (paired seeds), seeds, mean_diff_bpb,
    ci_low, ci_high (bpb), mean_diff_nats, t, df, p, note. Numbers the data cannot define
    (fewer than 2 pairs, identical differences) are None and the note says why."""
    control = scores_by_seed(runs, CONTROL)
    rows = [_row(variant, control, scores_by_seed(runs, variant["name"]))
            for variant in experiment.variants]
    mean = statistics.fmean(control.values()) if control else None
    return {"control": {"n": len(control), "mean_val_bpb": mean}, "rows": rows}


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
    row: dict[str, Any] = {"variant": variant["name"], "changes": variant.get("config", {}),
                           "n": len(diffs), "seeds": seeds}
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
