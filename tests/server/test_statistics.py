"""The significance tests, checked against values computed here by hand-written formulas
(sample mean and std, Welch–Satterthwaite, Student's t tail by numerical integration)."""

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.experiments import finalize_experiment
from server.models import Experiment
from server.statistics import (
    ONE_SAMPLE_TEST,
    WELCH_TEST,
    Units,
    bytes_per_token,
    one_sample_test,
    to_units,
    welch_test,
)
from tests.factories import (
    LOSS_PER_BPB,
    make_experiment,
    make_finished_experiment,
    make_scored_run,
)

BPB_MARGIN = 0.005 / math.log(2)  # design.md: 0.005 nats = 0.005 / ln 2 bits, per byte


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sample_std(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _t_pdf(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_upper_tail(t: float, df: float, steps: int = 20_000) -> float:
    """P(T > t) for t >= 0: one half minus the density integrated over [0, t] (Simpson)."""
    h = t / steps
    inner = sum((4 if k % 2 else 2) * _t_pdf(k * h, df) for k in range(1, steps))
    return 0.5 - h / 3 * (_t_pdf(0.0, df) + inner + _t_pdf(t, df))


def _sample_with(mean: float, std: float, n: int) -> list[float]:
    """n values with exactly this sample mean and sample std (ddof=1)."""
    base = [float(k * k % 7) + k for k in range(n)]
    m, s = _mean(base), _sample_std(base)
    return [(x - m) / s * std + mean for x in base]


def test_one_sample_reproduces_a_published_record_claim() -> None:
    # Three seeds of a 2026-03 record against the threshold it stated: t=31.42, df=2, p=0.00051.
    scores = [1.20576485, 1.20617460, 1.20715923]
    threshold = 1.2193657
    result = one_sample_test(scores, threshold + BPB_MARGIN)

    t = (threshold - _mean(scores)) / (_sample_std(scores) / math.sqrt(3))
    p = 0.5 - t / (2 * math.sqrt(2 + t * t))  # Student's t upper tail, closed form for df=2
    assert result.test == ONE_SAMPLE_TEST and result.units == "bits_per_byte"
    assert result.threshold == pytest.approx(threshold, abs=1e-12)
    assert result.n == 3 and result.df == 2
    assert result.mean == pytest.approx(_mean(scores), rel=1e-12)
    assert result.std == pytest.approx(_sample_std(scores), rel=1e-9)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.t == pytest.approx(31.42, abs=0.01)
    assert result.p == pytest.approx(p, rel=1e-6)
    assert result.p == pytest.approx(0.00051, abs=0.00001)
    assert result.significant and result.more_seeds is None


def test_margin_is_converted_per_byte_or_kept_per_token() -> None:
    scores = [2.51, 2.512, 2.509]
    per_byte = one_sample_test(scores, 2.53)
    per_token = one_sample_test(scores, 2.53, units="nats_per_token", bytes_per_token=2.44)
    assert per_byte.margin == pytest.approx(0.005 / math.log(2))
    assert per_byte.threshold == pytest.approx(2.53 - 0.005 / math.log(2))
    assert per_token.units == Units.NATS_PER_TOKEN.value and per_token.bytes_per_token == 2.44
    assert per_token.margin == pytest.approx(0.005)
    assert per_token.threshold == pytest.approx(2.525)
    t = (2.525 - _mean(scores)) / (_sample_std(scores) / math.sqrt(3))
    assert per_token.t == pytest.approx(t, rel=1e-9)


# 2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072 (sp1024), its README: "Current SOTA (PR #549,
# exact 3-seed mean): 1.11937967 BPB (1.89002068 nats). This run's exact 3-seed mean is
# 1.11473509 BPB (1.88217853 nats). Delta: -0.00784215 nats (-0.00464458 BPB)."
SP1024 = (1.88217853, 1.11473509)  # (val_loss, val_bpb)
SP1024_REFERENCE = (1.89002068, 1.11937967)
# 2026-04-06_SP8192_QK5_LegalTTT_1.0828 (sp8192): seed 0 scored val_loss 2.79517119, val_bpb
# 1.08209788; its README: beats 1.08563 "by 0.00283 bpb / 0.00731 nats per token".
SP8192_SEED0 = (2.79517119, 1.08209788)


def test_per_token_on_one_tokenizer_is_the_val_loss_difference() -> None:
    per_token = bytes_per_token([SP1024])
    assert per_token == pytest.approx(2.4359, abs=1e-4)  # sp1024: about 2.44 bytes a token
    delta_bpb = SP1024[1] - SP1024_REFERENCE[1]
    delta = to_units(delta_bpb, Units.NATS_PER_TOKEN, per_token)
    assert delta == pytest.approx(SP1024[0] - SP1024_REFERENCE[0], abs=2e-7)
    assert delta == pytest.approx(-0.00784215, abs=2e-7)
    # Per byte the same difference is 2.44 times smaller: the margin 2.44 times stricter.
    assert to_units(delta_bpb, Units.NATS_PER_BYTE) == pytest.approx(-0.00321937, abs=1e-7)


def test_per_token_across_tokenizers_counts_the_tested_experiments_tokens() -> None:
    per_token = bytes_per_token([SP8192_SEED0])
    assert per_token == pytest.approx(3.7266, abs=1e-4)  # sp8192's tokens are longer
    assert to_units(-0.00283, Units.NATS_PER_TOKEN, per_token) == pytest.approx(-0.00731, abs=1e-5)
    # An sp8192 run against the sp1024 record: its val_bpb difference in sp8192 tokens,
    # which its val_loss cannot give (the reference's val_loss counts other tokens).
    delta_bpb = 1.08279384 - SP1024[1]
    delta = to_units(delta_bpb, Units.NATS_PER_TOKEN, per_token)
    assert delta == pytest.approx(delta_bpb * math.log(2) * 3.7266, rel=1e-4)
    assert delta == pytest.approx(-0.08251, abs=1e-4)
    assert delta != pytest.approx(SP8192_SEED0[0] - SP1024[0], abs=0.1)


def test_per_token_needs_the_bytes_per_token() -> None:
    assert bytes_per_token([(None, 1.2), (2.0, None)]) is None
    with pytest.raises(ValueError, match="needs the bytes per token"):
        to_units(0.01, Units.NATS_PER_TOKEN, None)


def test_welch_against_reference_seeds() -> None:
    mine = [1.1102, 1.1115, 1.1096, 1.1109]
    theirs = [1.1192, 1.1200, 1.1189]
    result = welch_test(mine, theirs)

    v1, v2 = _sample_std(mine) ** 2 / 4, _sample_std(theirs) ** 2 / 3
    threshold = _mean(theirs) - BPB_MARGIN
    t = (threshold - _mean(mine)) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / 3 + v2**2 / 2)
    assert result.test == WELCH_TEST
    assert result.reference_n == 3
    assert result.reference_mean == pytest.approx(_mean(theirs))
    assert result.reference_std == pytest.approx(_sample_std(theirs))
    assert result.threshold == pytest.approx(threshold)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.df == pytest.approx(df, rel=1e-9)
    assert result.p == pytest.approx(_t_upper_tail(t, df), rel=1e-6)
    assert result.significant == (_t_upper_tail(t, df) < 0.01)


def test_worse_mean_gives_t_below_zero_and_no_seed_estimate() -> None:
    result = one_sample_test([1.230, 1.232, 1.229], 1.2243657)
    assert result.t < 0
    assert result.p > 0.5
    assert not result.significant
    assert result.more_seeds is None
    assert "not below the threshold" in result.note


@pytest.mark.parametrize("std", [0.0025, 0.0040])
def test_more_seeds_estimate_matches_a_sample_of_that_size(std: float) -> None:
    mean, reference = 1.2100, 1.2243657
    scores = _sample_with(mean, std, 3)
    result = one_sample_test(scores, reference)
    assert not result.significant
    assert result.more_seeds is not None and result.more_seeds > 0

    threshold = reference - BPB_MARGIN
    needed = next(n for n in range(4, 21)
                  if _t_upper_tail((threshold - mean) / (std / math.sqrt(n)), n - 1) < 0.01)
    assert result.more_seeds == needed - 3
    assert f"{needed} in all" in result.note
    # The claim itself: with that many seeds of the same mean and std the test passes,
    # with one fewer it does not.
    assert one_sample_test(_sample_with(mean, std, needed), reference).significant
    assert not one_sample_test(_sample_with(mean, std, needed - 1), reference).significant


def test_more_seeds_is_capped() -> None:
    result = one_sample_test(_sample_with(1.2170, 0.0100, 3), 1.2243657, max_seeds=10)
    assert not result.significant and result.t > 0
    assert result.more_seeds is None
    assert "even 10 seeds" in result.note


def test_welch_more_seeds_estimate_matches_a_sample_of_that_size() -> None:
    mean, std = 1.1000, 0.0020
    theirs = _sample_with(1.1105, 0.0010, 3)
    result = welch_test(_sample_with(mean, std, 3), theirs)
    assert not result.significant and result.more_seeds is not None
    needed = 3 + result.more_seeds
    assert welch_test(_sample_with(mean, std, needed), theirs).significant
    assert not welch_test(_sample_with(mean, std, needed - 1), theirs).significant


def test_welch_estimate_only_grows_the_experiment() -> None:
    # With a noisy reference, more seeds of ours cannot shrink its share of the error.
    result = welch_test(_sample_with(1.100, 0.001, 3), _sample_with(1.1085, 0.004, 3))
    assert result.t > 0 and not result.significant
    assert result.more_seeds is None and "would not give p" in result.note


@pytest.mark.parametrize("scores", [[], [1.2]])
def test_fewer_than_two_seeds_give_a_clear_undefined_result(scores: list[float]) -> None:
    result = one_sample_test(scores, 1.22)
    assert (result.t, result.df, result.p, result.std) == (None, None, None, None)
    assert result.n == len(scores)
    assert result.mean == (scores[0] if scores else None)
    assert not result.significant
    assert "at least 2 seeds" in result.note
    json.dumps(result.to_dict(), allow_nan=False)


def test_identical_scores_give_a_clear_undefined_result() -> None:
    result = one_sample_test([0.1 + 0.2, 0.3, 0.3], 1.0)
    assert result.t is None and result.p is None and not result.significant
    assert "identical" in result.note
    welch = welch_test([1.1, 1.1], [1.2, 1.2])
    assert welch.t is None and "identical" in welch.note
    json.dumps(welch.to_dict(), allow_nan=False)


def test_welch_with_one_identical_side_still_tests() -> None:
    result = welch_test([1.10, 1.10, 1.10], [1.120, 1.122, 1.121])
    t = ((_mean([1.120, 1.122, 1.121]) - BPB_MARGIN) - 1.10) / math.sqrt(
        _sample_std([1.120, 1.122, 1.121]) ** 2 / 3)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.df == pytest.approx(2.0)


def test_welch_reference_needs_two_seeds() -> None:
    result = welch_test([1.1, 1.11, 1.12], [1.2])
    assert result.p is None and "reference_scores: 1 value(s)" in result.note


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [1.2, float("nan")], "reference": 1.3}, r"scores\[1\]: expected a finite"),
        ({"scores": [1.2, "1.3"], "reference": 1.3}, r"scores\[1\]: expected a number"),
        ({"scores": "1.2", "reference": 1.3}, "scores: expected a sequence"),
        ({"scores": [1.2, 1.3], "reference": float("inf")}, "reference: expected a finite"),
        ({"scores": [1.2, 1.3], "reference": 1.3, "alpha": 1.5}, "alpha"),
        ({"scores": [1.2, 1.3], "reference": 1.3, "units": "furlongs"}, "units: 'furlongs'"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_sample_test(**kwargs)


def test_reason_explains_a_failed_test() -> None:
    passed = one_sample_test([1.20576485, 1.20617460, 1.20715923], 1.2193657 + BPB_MARGIN)
    assert passed.reason() is None
    close = one_sample_test(_sample_with(1.2100, 0.0040, 3), 1.2243657)
    assert close.reason().startswith(f"not significant: p={close.p:.3g} >= 0.01")
    assert f"about {close.more_seeds} more seed(s)" in close.reason()
    assert one_sample_test([1.2], 1.3).reason().startswith("significance unknown: scores: 1 value")


def test_nats_per_byte_scales_scores_and_margin_but_not_t_or_p() -> None:
    scores = [1.20576485, 1.20617460, 1.20715923]
    bits = one_sample_test(scores, 1.2266)
    nats = one_sample_test([s * math.log(2) for s in scores], 1.2266 * math.log(2),
                           units=Units.NATS_PER_BYTE)
    assert nats.units == "nats_per_byte" and nats.margin == pytest.approx(0.005)
    assert nats.threshold == pytest.approx(bits.threshold * math.log(2))  # type: ignore[operator]
    assert (nats.t, nats.p) == (pytest.approx(bits.t, rel=1e-9), pytest.approx(bits.p, rel=1e-6))


SEEDS = [1.20576485, 1.20617460, 1.20715923]
RECORD = 1.2193657 + BPB_MARGIN  # reference whose threshold is the published 1.2193657 bpb


def test_the_api_gives_the_test_in_nats_per_token_by_default(session: Session,
                                                             client: TestClient) -> None:
    experiment = make_finished_experiment(session, SEEDS, reference_bpb=RECORD)
    url = f"/api/experiments/{experiment.id}/significance"

    tokens = client.get(url).json()
    nats = client.get(url, params={"units": "nats_per_byte"}).json()
    bits = client.get(url, params={"units": "bits_per_byte"}).json()

    assert (tokens["units"], nats["units"], bits["units"]) == (
        "nats_per_token", "nats_per_byte", "bits_per_byte")
    # val_loss = LOSS_PER_BPB × val_bpb in the factory's runs: LOSS_PER_BPB / ln 2 bytes per token.
    assert tokens["bytes_per_token"] == pytest.approx(LOSS_PER_BPB / math.log(2))
    assert tokens["threshold"] == pytest.approx(RECORD * LOSS_PER_BPB - 0.005)
    assert tokens["mean"] == pytest.approx(_mean(SEEDS) * LOSS_PER_BPB)
    assert nats["threshold"] == pytest.approx(1.2193657 * math.log(2))
    assert nats["mean"] == pytest.approx(_mean(SEEDS) * math.log(2))
    assert nats["margin"] == tokens["margin"] == pytest.approx(0.005)
    assert (round(nats["t"], 1), nats["df"]) == (31.4, 2)
    assert nats["p"] == pytest.approx(bits["p"])
    assert tokens["p"] == pytest.approx(experiment.stats["p"])
    assert tokens["threshold"] == pytest.approx(experiment.stats["threshold"])
    assert tokens["reference"] == experiment.stats["reference"]


def test_per_token_compares_across_tokenizers_and_needs_val_loss(
        session: Session, client: TestClient) -> None:
    weak = make_finished_experiment(session, [1.30, 1.31, 1.29], reference_bpb=9.0)
    other = make_finished_experiment(session, [1.30, 1.31, 1.29], reference_bpb=9.0,
                                     config={"tokenizer_path": "./data/tokenizers/fineweb_8192_bpe.model"})
    paired = make_finished_experiment(session, SEEDS, reference_bpb=None,
                                      reference_experiment_id=weak.id)
    across = make_finished_experiment(session, SEEDS, reference_bpb=None,
                                      reference_experiment_id=other.id)
    no_loss = make_experiment(session, seeds=[0, 1, 2], reference_bpb=RECORD)
    for seed, score in enumerate(SEEDS):
        make_scored_run(session, no_loss, seed=seed, val_bpb=score, val_loss=None)
    assert finalize_experiment(session, no_loss.id)

    def per_token(experiment: Experiment) -> Any:
        return client.get(f"/api/experiments/{experiment.id}/significance",
                          params={"units": "nats_per_token"})

    for experiment in (paired, across):
        ok = per_token(experiment).json()
        assert ok["units"] == "nats_per_token" and ok["margin"] == pytest.approx(0.005)
        assert ok["mean"] == pytest.approx(_mean(SEEDS) * LOSS_PER_BPB)
        # The reference's val_bpb in the tested experiment's tokens.
        assert ok["reference_mean"] == pytest.approx(1.30 * LOSS_PER_BPB)
    response = per_token(no_loss)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["query", "units"] and "val_loss" in problem["msg"]
    # Stored without val_loss, the test fell back to nats per byte and says so.
    session.refresh(no_loss)
    session.commit()  # ends the read: on SQLite an open transaction holds the lock
    assert no_loss.stats is not None and no_loss.stats["units"] == "nats_per_byte"
    assert client.get(f"/api/experiments/{paired.id}/significance",
                      params={"units": "furlongs"}).status_code == 422
    assert client.get("/api/experiments/4242/significance").status_code == 404
