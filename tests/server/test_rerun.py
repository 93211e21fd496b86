"""The verdict of a re-run from its rows: rules measured by the worker, the one-sided paired test
by seed (the claimed seeds) or Welch's (fresh seeds) in nats per token, the outcome and what it
names."""

import math

from sqlmodel import Session

from server import rerun
from server.models import Experiment
from tests.factories import make_experiment, make_run, make_scored_run

BPT = 2.4365  # bytes per token of the claims below (val_loss = val_bpb x ln 2 x BPT)


def claims(*bpbs: float) -> list[dict[str, object]]:
    return [{"seed": i + 1, "val_bpb": bpb, "val_loss": bpb * math.log(2) * BPT, "bytes_total": 15_000_000,
             "train_time_s": 590.0, "eval_time_s": 100.0} for i, bpb in enumerate(bpbs)]


def rerun_of(session: Session, claimed: list[dict[str, object]], **settings: object) -> Experiment:
    return make_experiment(session, kind="script", provider="local", seeds=[c["seed"] for c in claimed],
                           source={"reproduce": {"claims": claimed, **settings}})


def score(session: Session, experiment: Experiment, bpbs: list[float], first_seed: int = 1, **fields: object) -> None:
    for seed, bpb in enumerate(bpbs, first_seed):
        measured = {"bytes_total": 15_000_000, "train_time_s": 595.0, "eval_time_s": 120.0, **fields}
        make_scored_run(session, experiment, seed=seed, val_bpb=bpb, val_loss=bpb * math.log(2) * BPT, **measured)


def test_the_same_scores_are_reproduced(session: Session) -> None:
    bpbs = [1.1000, 1.1003, 1.0998]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, bpbs)
    found = rerun.verdict(session, experiment)
    assert found.outcome == "reproduced" and found.failed == [] and found.test["p_within"] < 0.01
    assert math.isclose(found.test["bytes_per_token"], BPT)
    assert found.test["kind"] == "paired" and found.test["paired_seeds"] == [1, 2, 3]
    assert found.seeds[0].diff["train_time_s"] == 5.0


def test_a_significant_shortfall_is_named_with_its_mean_and_p(session: Session) -> None:
    bpbs = [1.1000, 1.1003, 1.0998]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, [b + 0.004 for b in bpbs])
    found = rerun.verdict(session, experiment)
    assert found.outcome == "not reproduced" and found.failed == ["score"]
    # 0.004 bpb = 0.00676 nats per token at 2.4365 bytes per token: beyond the 0.005 tolerance.
    assert found.reasons[0].startswith("a mean 0.0040 bpb worse than claimed (0.0068 nats per token")
    assert found.test["p_worse"] < 0.01


def test_a_shortfall_within_the_tolerance_is_not_a_failure(session: Session) -> None:
    bpbs = [1.1000, 1.1003, 1.0998]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, [b + 0.001 for b in bpbs])
    assert rerun.verdict(session, experiment).outcome == "reproduced"


def test_noisy_seeds_are_inconclusive_with_the_seeds_that_would_settle_it(session: Session) -> None:
    claimed = [1.100, 1.104, 1.096]
    experiment = rerun_of(session, claims(*claimed))
    score(session, experiment, [1.101, 1.109, 1.097])
    found = rerun.verdict(session, experiment)
    assert found.outcome == "inconclusive" and found.failed == []
    assert found.more_seeds is None or found.more_seeds > 3
    assert "too few or too noisy" in found.reasons[-1]


def test_one_seed_is_inconclusive(session: Session) -> None:
    experiment = rerun_of(session, claims(1.1, 1.1002))
    make_scored_run(session, experiment, seed=1, val_bpb=1.1, bytes_total=15_000_000, train_time_s=1, eval_time_s=1)
    found = rerun.verdict(session, experiment)
    assert found.outcome == "inconclusive" and found.more_seeds == 2


def test_rules_measured_by_the_worker(session: Session) -> None:
    bpbs = [1.1000, 1.1003]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, bpbs, bytes_total=16_000_123, train_time_s=612.0)
    found = rerun.verdict(session, experiment)
    assert found.outcome == "not reproduced" and found.failed == ["bytes", "train_time"]
    assert "seed 1: 16,000,123 bytes as measured, over 16,000,000 (the submission claims 15,000,000)" in found.reasons
    assert "seed 1: 612 s of training, over 600 s" in found.reasons
    assert found.headline == "not reproduced: bytes, train_time"


def test_a_crash_names_its_last_lines_and_a_live_seed_is_running(session: Session) -> None:
    experiment = rerun_of(session, claims(1.1, 1.1003))
    make_run(session, experiment, seed=1, status="failed", reason="trainer exited with code 1",
             last_log_lines="step:1/10\nRuntimeError: CUDA out of memory")
    live = make_run(session, experiment, seed=2, status="running")
    assert rerun.verdict(session, experiment).outcome == "running"
    live.status = "cancelled"
    session.add(live)
    session.commit()
    found = rerun.verdict(session, experiment)
    assert found.outcome == "not reproduced" and found.failed == ["crash"]
    assert "RuntimeError: CUDA out of memory" in found.reasons[0]


def test_latest_outcomes_for_the_leaderboard_column(session: Session) -> None:
    record = make_experiment(session, name="record", provider="import")
    other = make_experiment(session, name="never re-run", provider="import")
    older = rerun_of(session, claims(1.1, 1.1003))
    newer = rerun_of(session, claims(1.1, 1.1003))
    for experiment in (older, newer):
        experiment.reproduces_id = record.id
        session.add(experiment)
    session.commit()
    make_run(session, newer, seed=1, status="running")
    found = rerun.latest_outcomes(session, [record.id, other.id])
    assert found == {record.id: {"rerun_id": newer.id, "outcome": "running", "headline": "running"}}


def test_a_deterministic_rerun_is_exact_not_inconclusive(session: Session) -> None:
    # Every difference is 0: sd = 0, so no t is defined and the mean difference (0 < 0.005) decides.
    bpbs = [1.21924031, 1.21933761, 1.21925258]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, bpbs)
    found = rerun.verdict(session, experiment)
    assert found.outcome == "reproduced" and found.test["test"] == "one-sided paired t-test by seed"
    assert found.test["sd_diff_nats"] == 0.0 and found.test["mean_diff_nats"] == 0.0
    assert (found.test["t"], found.test["p_within"], found.test["p_worse"]) == (None, 0.0, 1.0)
    assert "the mean difference decides" in found.test["note"]


def test_a_deterministic_shortfall_past_the_tolerance_is_not_reproduced(session: Session) -> None:
    # 0.004 bpb on every seed = 0.00676 nats per token, past the 0.005 tolerance.
    experiment = rerun_of(session, claims(1.5, 1.5, 1.5))
    score(session, experiment, [1.504, 1.504, 1.504])
    found = rerun.verdict(session, experiment)
    assert found.outcome == "not reproduced" and found.failed == ["score"]
    assert found.test["sd_diff_nats"] == 0.0 and found.test["p_worse"] == 0.0


def test_pairing_by_seed_removes_the_spread_between_seeds(session: Session) -> None:
    # The seeds differ by 0.01 bpb among themselves, the re-run tracks each within 0.0003:
    # paired, d = (+0.0002, -0.0001, +0.0003) bpb and the test is significant at 3 seeds.
    claimed = [1.100, 1.110, 1.090]
    rerun_bpbs = [1.1002, 1.1099, 1.0903]
    experiment = rerun_of(session, claims(*claimed))
    score(session, experiment, rerun_bpbs)
    found = rerun.verdict(session, experiment)
    assert found.outcome == "reproduced" and found.test["kind"] == "paired" and found.test["df"] == 2.0
    diffs = [(r - c) * math.log(2) * BPT for r, c in zip(rerun_bpbs, claimed, strict=True)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert math.isclose(found.test["t"], (mean - 0.005) / (sd / math.sqrt(3)), rel_tol=1e-6)
    # The same scores on fresh seeds: Welch's test sees the seeds' spread and cannot tell.
    fresh = rerun_of(session, claims(*claimed))
    score(session, fresh, rerun_bpbs, first_seed=101)
    welch = rerun.verdict(session, fresh)
    assert welch.test["kind"] == "welch" and welch.test["test"] == "one-sided Welch's t-test"
    assert welch.outcome == "inconclusive"


def test_the_export_names_the_test_used(session: Session) -> None:
    bpbs = [1.1000, 1.1003]
    experiment = rerun_of(session, claims(*bpbs))
    score(session, experiment, bpbs)
    readme = rerun.evidence_files(session, experiment)["README.md"].decode()
    assert "one-sided paired t-test by seed" in readme and "sd of the differences 0" in readme
