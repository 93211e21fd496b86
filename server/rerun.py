"""The verdict of a re-run: does it hold what the submission claims?

Per seed, the claimed and re-run val_bpb, bytes, train and eval time with their differences;
the rules as Caddie's worker measured them (bytes <= 16,000,000, train and eval <= 600 s, no
crash); over seeds, Welch's one-sided test of "the re-run is worse than claimed by more than a
tolerance" (0.005 nats per token by default) and its mirror, "the re-run is within the
tolerance": a paired t-test of (re-run - claimed) by seed when every scored re-run seed is one
the submission claims (a like-for-like re-run), else Welch's test of the two sets (fresh seeds).
A paired test whose differences have no spread (a deterministic re-run) is exact: the mean
difference alone decides. Scores are compared in nats per token: val_bpb x ln 2 x
bytes-per-token, the bytes-per-token of the claimed logs (val_loss / (val_bpb x ln 2)), which
is the val_loss difference on one tokenizer. `docs/validation.md` has the formulas.

Outcomes: "running" while a seed runs; "not reproduced" when a rule fails or the shortfall is
significant (p < alpha), naming what failed; "reproduced" when every rule holds and the re-run is
significantly within the tolerance; else "inconclusive", with the seeds that would settle it.
"""

import io
import json
import math
import shlex
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sqlmodel import Session, col, select

from server import experiments, records, scripts
from server.eligibility import MAX_BYTES_TOTAL, MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS
from server.models import Experiment, Run
from server.states import FINAL_RUN_STATUSES, RunStatus
from server.statistics import MAX_SEEDS

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, RUNNING = "reproduced", "not reproduced", "inconclusive", "running"
PAIRED, WELCH = "paired", "welch"  # the test's `kind`
PAIRED_TEST = "one-sided paired t-test by seed"
WELCH_TEST = "one-sided Welch's t-test"
DEFAULT_TOLERANCE_NATS = 0.005
DEFAULT_ALPHA = 0.01
LAST_LINES = 8


@dataclass
class SeedRow:
    seed: int
    status: str
    run_id: int | None
    claimed: dict[str, Any]
    rerun: dict[str, Any]
    diff: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    crash: str = ""  # a failed run's reason and last log lines


@dataclass
class Verdict:
    experiment_id: int
    reproduces_id: int | None
    outcome: str
    failed: list[str]  # short tags: bytes, train_time, eval_time, crash, score
    reasons: list[str]
    seeds: list[SeedRow]
    test: dict[str, Any]
    more_seeds: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def headline(self) -> str:
        return self.outcome + (": " + ", ".join(self.failed) if self.failed else "")


def claims_of(experiment: Experiment) -> list[dict[str, Any]]:
    return list(((experiment.source or {}).get("reproduce") or {}).get("claims") or [])


def is_rerun(experiment: Experiment) -> bool:
    return bool((experiment.source or {}).get("reproduce"))


def verdict(session: Session, experiment: Experiment) -> Verdict:
    assert experiment.id is not None
    settings = (experiment.source or {}).get("reproduce") or {}
    tolerance = float(settings.get("tolerance_nats", DEFAULT_TOLERANCE_NATS))
    alpha = float(settings.get("alpha", DEFAULT_ALPHA))
    runs = [r for r in experiments.list_runs(session, experiment.id) if not r.superseded and not r.variant]
    claims = {int(c["seed"]): c for c in claims_of(experiment)}
    rows = [_seed_row(run, claims.get(run.seed)) for run in runs]
    failed, reasons = _rule_failures(rows)
    test = score_test(list(claims.values()), [r for r in runs if r.status == RunStatus.succeeded],
                      tolerance, alpha)
    live = any(run.status not in FINAL_RUN_STATUSES for run in runs)
    outcome, more = _outcome(live, failed, reasons, test)
    return Verdict(experiment.id, experiment.reproduces_id, outcome, failed, reasons, rows, test, more)


def _seed_row(run: Run, claimed: dict[str, Any] | None) -> SeedRow:
    claimed = claimed or {}
    mine = {"val_bpb": run.val_bpb, "val_loss": run.val_loss, "bytes_total": run.bytes_total,
            "train_time_s": run.train_time_s, "eval_time_s": run.eval_time_s}
    diff = {key: (mine[key] - claimed[key]) if mine[key] is not None and claimed.get(key) is not None else None
            for key in mine}
    row = SeedRow(run.seed, run.status, run.id, {k: claimed.get(k) for k in mine}, mine, diff)
    if run.status == RunStatus.failed:
        row.failed.append("crash")
        tail = "\n".join((run.last_log_lines or "").splitlines()[-LAST_LINES:])
        row.crash = f"{run.reason or 'failed'}" + (f"; last log lines:\n{tail}" if tail else "")
    elif run.status == RunStatus.succeeded:
        if run.bytes_total is not None and run.bytes_total > MAX_BYTES_TOTAL:
            row.failed.append("bytes")
        if run.train_time_s is not None and run.train_time_s > MAX_TRAIN_SECONDS:
            row.failed.append("train_time")
        if run.eval_time_s is not None and run.eval_time_s > MAX_EVAL_SECONDS:
            row.failed.append("eval_time")
    return row


def _rule_failures(rows: list[SeedRow]) -> tuple[list[str], list[str]]:
    failed: list[str] = []
    reasons: list[str] = []
    for row in rows:
        for tag in row.failed:
            if tag not in failed:
                failed.append(tag)
            reasons.append(f"seed {row.seed}: {_rule_reason(tag, row)}")
    return failed, reasons


def _rule_reason(tag: str, row: SeedRow) -> str:
    mine, claimed = row.rerun, row.claimed
    if tag == "bytes":
        said = f" (the submission claims {claimed['bytes_total']:,})" if claimed.get("bytes_total") else ""
        return f"{mine['bytes_total']:,} bytes as measured, over {MAX_BYTES_TOTAL:,}{said}"
    if tag == "train_time":
        return f"{mine['train_time_s']:.0f} s of training, over {MAX_TRAIN_SECONDS:.0f} s"
    if tag == "eval_time":
        return f"{mine['eval_time_s']:.0f} s of evaluation, over {MAX_EVAL_SECONDS:.0f} s"
    return f"crashed: {row.crash}"


def bytes_per_token(claims: list[dict[str, Any]]) -> float | None:
    """val_loss / (val_bpb x ln 2) averaged over the claimed seeds: the tokenizer's bytes per
    token on the validation split."""
    ratios = [c["val_loss"] / (c["val_bpb"] * math.log(2)) for c in claims
              if c.get("val_loss") and c.get("val_bpb")]
    return float(np.mean(ratios)) if ratios else None


def is_like_for_like(claims: list[dict[str, Any]], runs: list[Run]) -> bool:
    """True when every scored re-run seed is a seed the submission claims a score for."""
    claimed = {int(c["seed"]) for c in claims if c.get("val_bpb") is not None}
    scored = [r.seed for r in runs if r.val_bpb is not None]
    return bool(scored) and all(seed in claimed for seed in scored)


def score_test(claims: list[dict[str, Any]], runs: list[Run], tolerance: float, alpha: float) -> dict[str, Any]:
    """The paired test for a like-for-like re-run, else Welch's."""
    if is_like_for_like(claims, runs):
        return paired(claims, runs, tolerance, alpha)
    return welch(claims, runs, tolerance, alpha)


def _nats_scale(claimed: list[dict[str, Any]]) -> tuple[float | None, float]:
    """(bytes per token of the claims or None, what a bpb is multiplied by: ln 2 x bytes per
    token, or ln 2 alone (nats per byte) without a val_loss)."""
    bpt = bytes_per_token(claimed)
    return bpt, math.log(2) * (bpt or 1.0)


def _test_facts(kind: str, bpt: float | None, tolerance: float, alpha: float) -> dict[str, Any]:
    return {"kind": kind, "test": PAIRED_TEST if kind == PAIRED else WELCH_TEST,
            "units": "nats_per_token" if bpt else "nats_per_byte", "bytes_per_token": bpt,
            "tolerance_nats": tolerance, "alpha": alpha, "mean_diff_bpb": None, "mean_diff_nats": None,
            "t": None, "df": None, "p_worse": None, "p_within": None, "note": ""}


def paired(claims: list[dict[str, Any]], runs: list[Run], tolerance: float, alpha: float) -> dict[str, Any]:
    """Both one-sided paired t-tests of d = (re-run - claimed) per seed, in nats per token,
    against the tolerance: t = (mean d - tolerance) / (sd d / sqrt n), n - 1 degrees of freedom.
    sd d = 0 (every difference equal, a deterministic re-run among them) is exact: p is 0 or 1
    by the sign of mean d - tolerance."""
    claimed = {int(c["seed"]): c for c in claims if c.get("val_bpb") is not None}
    bpt, scale = _nats_scale(list(claimed.values()))
    pairs = [(run.seed, run.val_bpb, claimed[run.seed]["val_bpb"]) for run in runs
             if run.val_bpb is not None and run.seed in claimed]
    rerun = np.array([p[1] for p in pairs], dtype=float) * scale
    mine = np.array([p[2] for p in pairs], dtype=float) * scale
    diffs = rerun - mine
    out = {**_test_facts(PAIRED, bpt, tolerance, alpha), "n_rerun": len(pairs), "n_claimed": len(claimed),
           "n_pairs": len(pairs), "paired_seeds": [p[0] for p in pairs], "mean_rerun_bpb": _mean(rerun / scale),
           "mean_claimed_bpb": _mean(mine / scale), "sd_diff_nats": None}
    if len(diffs) == 0:
        out["note"] = "no scored seed to pair"
        return out
    mean = float(diffs.mean())
    out["mean_diff_nats"], out["mean_diff_bpb"] = mean, mean / scale
    if len(diffs) < 2:
        out["note"] = "the paired test needs at least 2 seeds"
        return out
    sd = float(diffs.std(ddof=1))
    shortfall = mean - tolerance
    out.update(sd_diff_nats=sd, shortfall_nats=shortfall)
    if sd == 0:  # every seed moved by the same amount (0 for a deterministic re-run): exact
        out.update(p_worse=0.0 if shortfall > 0 else 1.0, p_within=0.0 if shortfall < 0 else 1.0,
                   note="every difference is the same: the mean difference decides")
        return out
    t, df = shortfall / (sd / math.sqrt(len(diffs))), len(diffs) - 1
    out.update(t=t, df=float(df), p_worse=float(stats.t.sf(t, df)), p_within=float(stats.t.cdf(t, df)))
    return out


def welch(claims: Any, runs: list[Run], tolerance: float, alpha: float) -> dict[str, Any]:
    """Both one-sided Welch tests on nats per token; None where the data cannot define them."""
    claimed = [c for c in claims if c.get("val_bpb") is not None]
    bpt, scale = _nats_scale(claimed)
    a = np.array([r.val_bpb for r in runs if r.val_bpb is not None], dtype=float) * scale
    b = np.array([c["val_bpb"] for c in claimed], dtype=float) * scale
    out: dict[str, Any] = {
        **_test_facts(WELCH, bpt, tolerance, alpha), "n_rerun": len(a), "n_claimed": len(b),
        "mean_rerun_bpb": _mean(a / scale), "mean_claimed_bpb": _mean(b / scale)}
    if len(a) == 0 or len(b) == 0:
        out["note"] = "no scored seed on one side"
        return out
    diff = float(a.mean() - b.mean())
    out["mean_diff_nats"], out["mean_diff_bpb"] = diff, diff / scale
    if len(a) < 2 or len(b) < 2:
        out["note"] = "Welch's test needs at least 2 seeds on each side"
        return out
    out.update(_welch_p(a, b, tolerance))
    return out


def _welch_p(a: np.ndarray, b: np.ndarray, tolerance: float) -> dict[str, Any]:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    shortfall = float(a.mean() - b.mean() - tolerance)
    if se == 0:  # identical seeds on both sides: the difference is exact
        return {"t": None, "df": None, "p_worse": 0.0 if shortfall > 0 else 1.0,
                "p_within": 0.0 if shortfall < 0 else 1.0, "note": "no spread on either side: exact"}
    t, df = shortfall / se, _welch_df(a.var(ddof=1), len(a), b.var(ddof=1), len(b))
    return {"t": t, "df": df, "p_worse": float(stats.t.sf(t, df)), "p_within": float(stats.t.cdf(t, df)),
            "var_rerun": float(a.var(ddof=1)), "var_claimed": float(b.var(ddof=1)), "shortfall_nats": shortfall}


def _welch_df(var_a: float, na: int, var_b: float, nb: int) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    va, vb = var_a / na, var_b / nb
    return (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _outcome(live: bool, failed: list[str], reasons: list[str], test: dict[str, Any]) -> tuple[str, int | None]:
    if live:
        return RUNNING, None
    alpha = test["alpha"]
    if test["p_worse"] is not None and test["p_worse"] < alpha:
        failed.append("score")
        reasons.append(f"a mean {test['mean_diff_bpb']:.4f} bpb worse than claimed "
                       f"({test['mean_diff_nats']:.4f} nats per token, tolerance {test['tolerance_nats']}) "
                       f"at p = {test['p_worse']:.3g}")
    if failed:
        return NOT_REPRODUCED, None
    if test["p_within"] is not None and test["p_within"] < alpha:
        return REPRODUCED, None
    more = seeds_to_settle(test)
    reasons.append("too few or too noisy seeds to tell: "
                   + (f"about {more} re-run seeds in all would settle it" if more else test["note"] or
                      f"p = {test['p_within']:.3g} within and {test['p_worse']:.3g} worse, alpha {alpha}"))
    return INCONCLUSIVE, more


def seeds_to_settle(test: dict[str, Any]) -> int | None:
    """The fewest re-run seeds (claims fixed, same means and spreads) at which one of the two
    tests reaches p < alpha; None out of reach within statistics.MAX_SEEDS."""
    if test["t"] is None:
        return 2 if test["n_rerun"] < 2 and test["n_claimed"] >= 2 else None
    if test["kind"] == PAIRED:
        return _pairs_to_settle(test)
    var_a, var_b, nb = test["var_rerun"], test["var_claimed"], test["n_claimed"]
    for n in range(test["n_rerun"] + 1, MAX_SEEDS + 1):
        se = math.sqrt(var_a / n + var_b / nb)
        if se > 0 and stats.t.sf(abs(test["shortfall_nats"]) / se, _welch_df(var_a, n, var_b, nb)) < test["alpha"]:
            return n
    return None


def _pairs_to_settle(test: dict[str, Any]) -> int | None:
    """The fewest pairs (same mean and sd of the differences) at which one paired test reaches
    p < alpha. More pairs need more claimed seeds: None past them or past MAX_SEEDS."""
    for n in range(test["n_pairs"] + 1, min(test["n_claimed"], MAX_SEEDS) + 1):
        t = abs(test["shortfall_nats"]) / (test["sd_diff_nats"] / math.sqrt(n))
        if stats.t.sf(t, n - 1) < test["alpha"]:
            return n
    return None


def reruns_of(session: Session, experiment_id: int) -> list[Experiment]:
    """The re-runs that reproduce an imported record, newest first."""
    query = select(Experiment).where(Experiment.reproduces_id == experiment_id)
    return list(session.exec(query.order_by(col(Experiment.id).desc())).all())


def last_lines(session: Session, run_id: int | None) -> str:
    if run_id is None:
        return ""
    run = session.get(Run, run_id)
    return "\n".join((run.last_log_lines or "").splitlines()[-LAST_LINES:]) if run else ""


# --- evidence a reviewer posts ----------------------------------------------------------------


def evidence_files(session: Session, experiment: Experiment) -> dict[str, bytes]:
    """The re-run as a folder: README.md (verdict, measured table, test, commands, pod facts),
    verdict.json, each seed's train log as the worker stored it, and the code's sha256 list."""
    assert experiment.id is not None
    found = verdict(session, experiment)
    runs: dict[int | None, Run] = {run.id: run for run in experiments.list_runs(session, experiment.id)}
    files: dict[str, bytes] = {"verdict.json": _json(found.to_dict())}
    for row in found.seeds:
        run = runs.get(row.run_id)
        if run is not None:
            files[f"rerun_seed{row.seed}.log"] = records.run_log_bytes(session, run)
    code = [(f.name, f.nbytes, f.sha256) for f in scripts.list_files(session, experiment.id, content=False)]
    files["README.md"] = evidence_readme(experiment, found, list(runs.values()), code).encode()
    return files


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def evidence_readme(experiment: Experiment, found: Verdict, runs: list[Run],
                    code: list[tuple[str, int, str]]) -> str:
    test = found.test
    lines = [f"# Re-run of {experiment.name.removeprefix('re-run: ')}", "",
             f"**Verdict: {found.headline}**", ""]
    lines += [f"- {reason}" for reason in found.reasons] + [""]
    lines += ["## Per seed (claimed vs re-run, measured by Caddie's worker)", "",
              "| seed | status | claimed val_bpb | re-run val_bpb | Δ bpb | claimed bytes | re-run bytes "
              "| train s | eval s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in found.seeds:
        lines.append(f"| {row.seed} | {row.status} | {_num(row.claimed['val_bpb'], 8)} | "
                     f"{_num(row.rerun['val_bpb'], 8)} | {_num(row.diff['val_bpb'], 5)} | "
                     f"{_num(row.claimed['bytes_total'], 0)} | {_num(row.rerun['bytes_total'], 0)} | "
                     f"{_num(row.rerun['train_time_s'], 1)} | {_num(row.rerun['eval_time_s'], 1)} |")
    lines += ["", "## The test", "",
              f"{test['test']} of \"the re-run is worse than claimed by more than "
              f"{test['tolerance_nats']} nats per token\" (scores as val_bpb × ln 2 × "
              f"{_num(test['bytes_per_token'], 4)} bytes per token), alpha {test['alpha']}: "
              f"n = {test['n_rerun']} re-run vs {test['n_claimed']} claimed, mean Δ "
              f"{_num(test['mean_diff_bpb'], 5)} bpb, t = {_num(test['t'], 3)}, df = {_num(test['df'], 2)}, "
              f"p(worse) = {_num(test['p_worse'], 4)}, p(within) = {_num(test['p_within'], 4)}"
              + _paired_facts(test) + ". " + (test["note"] or ""), "", "## Commands and environment", "", "```bash"]
    seed_env = experiment.seed_env or {}
    entry = ((experiment.source or {}).get("reproduce") or {}).get("entrypoint") or scripts.ENTRYPOINT
    for run in sorted(runs, key=lambda r: r.seed):
        env = {**experiment.env, **seed_env.get(str(run.seed), {}), "SEED": str(run.seed)}
        words = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        lines.append(f"{words} torchrun --standalone --nproc_per_node=8 {shlex.quote(entry)}")
    lines += ["```", "", "## Code (byte for byte as submitted)", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {name} | {nbytes:,} | `{sha}` |" for name, nbytes, sha in code]
    lines += ["", "## Pods", "", "| seed | run | GPU | GPUs | provider | started | ended |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.seed} | {r.id} | {r.gpu_name or '-'} | {r.gpu_count or '-'} | {experiment.provider} | "
              f"{r.started_at or '-'} | {r.ended_at or '-'} |" for r in sorted(runs, key=lambda r: r.seed)]
    return "\n".join(lines) + "\n"


def _paired_facts(test: dict[str, Any]) -> str:
    """What a paired test adds: the seeds it paired and the sd of their differences."""
    if test.get("kind") != PAIRED:
        return ""
    seeds = ", ".join(str(seed) for seed in test.get("paired_seeds") or []) or "none"
    sd = test.get("sd_diff_nats")
    return f", paired seeds {seeds}, sd of the differences {'-' if sd is None else f'{sd:.6g}'} nats per token"


def _num(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{decimals}f}" if decimals == 0 else f"{value:.{decimals}f}"


def evidence_zip(session: Session, experiment: Experiment) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(evidence_files(session, experiment).items()):
            archive.writestr(f"rerun-{experiment.id}/{name}", data)
    return buffer.getvalue()


def latest_outcomes(session: Session, experiment_ids: list[int]) -> dict[int, dict[str, Any]]:
    """For a leaderboard's "re-run" column: each listed experiment's newest re-run, its id and
    outcome (reproduced / not reproduced / inconclusive / running); experiments without one are
    left out."""
    if not experiment_ids:
        return {}
    query = (select(Experiment).where(col(Experiment.reproduces_id).in_(experiment_ids))
             .order_by(col(Experiment.id).desc()))
    found: dict[int, dict[str, Any]] = {}
    for other in session.exec(query).all():
        assert other.reproduces_id is not None and other.id is not None
        if other.reproduces_id not in found:
            judged = verdict(session, other)
            found[other.reproduces_id] = {"rerun_id": other.id, "outcome": judged.outcome,
                                          "headline": judged.headline}
    return found
