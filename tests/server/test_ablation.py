"""Ablation studies (`server.ablation`): paired differences against values computed independently."""

import math

import pytest
from fastapi.testclient import TestClient
from scipy import stats
from sqlmodel import Session, col, select

from server import ablation
from server.experiments import finalize_experiment
from server.models import Experiment, Run
from tests.factories import make_experiment, make_scored_run

CONTROL = {1: 1.2010, 2: 1.2030, 3: 1.1990, 4: 1.2050}
WIDER = {1: 1.1960, 2: 1.1995, 3: 1.1950, 4: 1.1985}  # better on every seed
NOISY = {1: 1.2020, 2: 1.2010, 3: 1.2000}  # seed 4 failed; a superseded run of seed 1 is ignored
VARIANTS = [{"name": "wider", "config": {"mlp_mult": 3}},
            {"name": "noisy", "config": {"matrix_lr": 0.05, "warmdown_iters": 800}}]


def study(session: Session) -> Experiment:
    experiment = make_experiment(session, seeds=(1, 2, 3, 4), variants=VARIANTS)
    for arm, scores in (("", CONTROL), ("wider", WIDER), ("noisy", NOISY)):
        for seed, bpb in scores.items():
            make_scored_run(session, experiment, seed=seed, val_bpb=bpb, variant=arm)
    make_scored_run(session, experiment, seed=1, val_bpb=1.0, variant="noisy", superseded=True)
    make_scored_run(session, experiment, seed=4, val_bpb=1.1, variant="noisy", status="failed")
    return experiment


def all_runs(session: Session, experiment: Experiment) -> list[Run]:
    return list(session.exec(select(Run).where(Run.experiment_id == experiment.id)
                             .order_by(col(Run.id))).all())


def expected_row(control: dict[int, float], arm: dict[int, float]) -> dict[str, float]:
    seeds = sorted(set(control) & set(arm))
    a, c = [arm[s] for s in seeds], [control[s] for s in seeds]
    test = stats.ttest_rel(a, c)  # two-sided paired t-test, done by scipy on the raw pairs
    diffs = [x - y for x, y in zip(a, c, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "t": float(test.statistic), "p": float(test.pvalue),
            "low": mean - half, "high": mean + half}


def test_each_variant_is_paired_with_the_control_by_seed(session: Session) -> None:
    experiment = study(session)
    summary = ablation.summarize(experiment, all_runs(session, experiment))
    assert summary["control"] == {"n": 4, "mean_val_bpb": pytest.approx(sum(CONTROL.values()) / 4)}
    wider, noisy = summary["rows"]
    for row, arm, config in ((wider, WIDER, VARIANTS[0]["config"]), (noisy, NOISY, VARIANTS[1]["config"])):
        want = expected_row(CONTROL, arm)
        assert row["changes"] == config and row["n"] == want["n"] and row["df"] == want["n"] - 1
        assert row["mean_diff_bpb"] == pytest.approx(want["mean"], abs=1e-12)
        assert row["mean_diff_nats"] == pytest.approx(want["mean"] * math.log(2), abs=1e-12)
        assert row["t"] == pytest.approx(want["t"], rel=1e-9)
        assert row["p"] == pytest.approx(want["p"], rel=1e-9)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(want["low"], abs=1e-12),
                                                   pytest.approx(want["high"], abs=1e-12))
    assert noisy["seeds"] == [1, 2, 3]  # seed 4 failed; seed 1's superseded run does not count
    # Hand-checked: wider's differences are -5.0, -3.5, -4.0, -6.5 (x1e-3 bpb), mean -4.75e-3.
    assert wider["mean_diff_bpb"] == pytest.approx(-4.75e-3, abs=1e-12)
    assert wider["ci_high"] < 0 and wider["p"] < 0.01
    assert noisy["ci_low"] < 0 < noisy["ci_high"] and noisy["p"] > 0.05


def test_too_few_pairs_or_no_spread_leave_the_test_undefined() -> None:
    assert ablation.paired_test([])["note"] == "no seed where both the variant and the control succeeded"
    one = ablation.paired_test([-0.002])
    assert one["mean_diff_bpb"] == -0.002 and one["t"] is None and one["ci_low"] is None
    same = ablation.paired_test([-0.001, -0.001, -0.001])
    assert (same["t"], same["p"], same["df"]) == (None, None, 2)
    assert same["note"] == "every paired difference is the same: no spread to test"


def test_finalizing_an_ablation_stores_the_table(session: Session) -> None:
    experiment = study(session)
    assert finalize_experiment(session, experiment.id)
    session.refresh(experiment)
    assert experiment.stats["ablation"] == ablation.summarize(experiment, all_runs(session, experiment))
    assert experiment.stats["test"]  # the significance test is still there beside it
    plain = make_experiment(session, name="no variants")
    make_scored_run(session, plain, seed=1, val_bpb=1.2)
    finalize_experiment(session, plain.id)
    session.refresh(plain)
    assert "ablation" not in plain.stats


def test_an_ablation_submitted_through_the_api(client: TestClient, session: Session) -> None:
    spec = {"name": "ablate", "preset": "tiny", "seeds": [1, 2, 3, 4], "provider": "local",
            "variants": VARIANTS}
    created = client.post("/api/experiments", json=spec)
    assert created.status_code in (200, 201), created.text
    experiment_id = created.json()["id"]
    runs = {(r.variant, r.seed): r.id
            for r in session.exec(select(Run).where(Run.experiment_id == experiment_id))}
    assert len(runs) == 12  # 4 seeds x (control + 2 variants)
    scores = {"": CONTROL, "wider": WIDER, "noisy": NOISY}
    for (arm, seed), run_id in runs.items():
        run = session.get(Run, run_id)
        # What the worker leaves behind (setup, not the state machine under test).
        run.status = "succeeded" if seed in scores[arm] else "failed"
        run.val_bpb = scores[arm].get(seed)
        session.add(run)
    session.commit()
    assert finalize_experiment(session, experiment_id)
    table = client.get(f"/api/experiments/{experiment_id}").json()["stats"]["ablation"]
    assert [row["variant"] for row in table["rows"]] == ["wider", "noisy"]
    want = expected_row(CONTROL, NOISY)
    assert table["rows"][1]["n"] == 3 and table["rows"][1]["p"] == pytest.approx(want["p"], rel=1e-9)
    assert table["control"]["n"] == 4


def ran(config: dict) -> dict:
    """results.json of a run that resolved `config` (the tiny preset's shape, plus the seed)."""
    return {"config": {"num_layers": 2, "mlp_mult": 2, "model_dim": 64, **config}}


def test_a_variant_that_ran_the_controls_config_is_an_error_not_a_zero(session: Session) -> None:
    """The issue's case: every arm ran mlp_mult 2 and num_layers 2, so the scores were identical
    and the table said Δ 0. What the runs ran, not what the spec asked, decides."""
    experiment = make_experiment(session, seeds=(1, 2, 3), variants=[
        {"name": "mlp3", "config": {"mlp_mult": 3}}, {"name": "layers3", "config": {"num_layers": 3}}])
    for seed, bpb in ((1, 1.30), (2, 1.31), (3, 1.29)):
        make_scored_run(session, experiment, seed=seed, val_bpb=bpb, variant="", results=ran({"seed": seed}))
        make_scored_run(session, experiment, seed=seed, val_bpb=bpb, variant="mlp3",
                        results=ran({"seed": seed, "run_id": f"m{seed}"}))  # the control's config
        make_scored_run(session, experiment, seed=seed, val_bpb=bpb - 0.01, variant="layers3",
                        results=ran({"seed": seed, "num_layers": 3}))
    summary = ablation.summarize(experiment, all_runs(session, experiment))
    mlp3, layers3 = summary["rows"]
    assert mlp3["error"].startswith("mlp3 ran exactly the control's settings")
    assert (mlp3["mean_diff_bpb"], mlp3["p"], mlp3["ci_low"]) == (None, None, None)
    assert layers3["error"] == "" and layers3["mean_diff_bpb"] == pytest.approx(-0.01)
    assert summary["error"].startswith("mlp3 ran the same settings as the control")
    assert finalize_experiment(session, experiment.id)
    session.refresh(experiment)
    assert experiment.stats["ablation"]["error"] == summary["error"]


def test_script_arms_are_compared_by_the_env_they_were_launched_with(session: Session) -> None:
    experiment = make_experiment(session, seeds=(1, 2), kind="script", variants=[
        {"name": "same", "env": {"X": "1"}}, {"name": "other", "env": {"X": "2"}}])
    for seed in (1, 2):
        for arm, digest in (("", "a" * 64), ("same", "a" * 64), ("other", "b" * 64)):
            make_scored_run(session, experiment, seed=seed, val_bpb=1.3 + seed / 100 + (arm == "other") / 50,
                            variant=arm, results={"worker": {"env_sha256": digest}})
    same, other = ablation.summarize(experiment, all_runs(session, experiment))["rows"]
    assert same["error"] and same["changes"] == {"X": "1"}
    assert other["error"] == "" and other["mean_diff_bpb"] == pytest.approx(0.02)


def test_arms_whose_runs_do_not_say_what_they_ran_are_not_flagged(session: Session) -> None:
    """Runs stored before results carried their config (or imports) cannot be checked: no error."""
    experiment = study(session)
    summary = ablation.summarize(experiment, all_runs(session, experiment))
    assert "error" not in summary and [row["error"] for row in summary["rows"]] == ["", ""]


@pytest.mark.parametrize(("variants", "kind", "field"), [
    ([{"name": "v", "env": {"X": "1"}}], "trainer", "variants.v.env"),
    ([{"name": "v", "config": {}}], "trainer", "variants.v.config"),
    ([{"name": "v", "config": {"mlp_mult": 3}}], "script", "variants.v.config"),
    ([{"name": "v", "env": {}}], "script", "variants.v.env"),
    ([{"name": "v", "env": {"PATH": "/x"}}], "script", "env.PATH"),
])
def test_a_variant_must_change_what_its_kind_runs_with(client: TestClient, variants, kind, field) -> None:
    spec = {"name": "ablate", "preset": "tiny", "seeds": [1], "variants": variants, "kind": kind}
    if kind == "script":
        spec |= {"files": {"train_gpt.py": "print(1)\n"}, "preset": "baseline"}
    answer = client.post("/api/experiments", json=spec)
    assert answer.status_code == 422, answer.text
    assert field in answer.text


def test_a_script_ablation_is_stored_with_each_arms_env(client: TestClient, session: Session) -> None:
    spec = {"name": "byo ablation", "kind": "script", "seeds": [1, 2], "env": {"LR": "0.04"},
            "files": {"train_gpt.py": "print(1)\n"}, "variants": [{"name": "lr8", "env": {"LR": "0.08"}}]}
    created = client.post("/api/experiments", json=spec)
    assert created.status_code in (200, 201), created.text
    assert created.json()["variants"] == [{"name": "lr8", "env": {"LR": "0.08"}}]
    arms = sorted(r.variant for r in session.exec(select(Run).where(Run.experiment_id == created.json()["id"])))
    assert arms == ["", "", "lr8", "lr8"]
