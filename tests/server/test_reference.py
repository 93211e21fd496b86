"""Finalizing tests the seeds against a reference: the standing record, a chosen value, a
chosen experiment, or by default the best record-eligible experiment on the leaderboard."""

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.config import get_settings
from server.experiments import finalize_experiment
from server.models import Experiment
from tests.factories import make_experiment, make_scored_run

SEEDS = [1.20576485, 1.20617460, 1.20715923]  # a published three-seed result
THRESHOLD = 1.2193657  # reference − 0.005 nats, in bits per byte
RECORD = THRESHOLD + 0.005 / math.log(2)


def finished(session: Session, scores: list[float], **fields: object) -> Experiment:
    experiment = make_experiment(session, seeds=list(range(len(scores))), **fields)
    for seed, score in enumerate(scores):
        make_scored_run(session, experiment, seed=seed, val_bpb=score)
    assert experiment.id is not None and finalize_experiment(session, experiment.id)
    session.refresh(experiment)
    session.commit()
    return experiment


@pytest.fixture
def record(settings_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CADDIE_RECORD_BPB", str(RECORD))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_without_an_eligible_experiment_the_standing_record_is_the_reference(
        record: None, session: Session) -> None:
    experiment = finished(session, SEEDS, reference_bpb=None)
    stats = experiment.stats
    assert stats is not None and stats["reference"]["kind"] == "value"
    assert stats["reference"]["val_bpb"] == pytest.approx(RECORD)
    assert stats["threshold"] == pytest.approx(THRESHOLD)
    assert (round(stats["t"], 1), stats["df"]) == (31.4, 2)
    assert stats["p"] == pytest.approx(0.0005, abs=0.0001)
    assert experiment.eligible is True and experiment.reasons == []


def test_by_default_the_best_eligible_experiment_is_the_reference(record: None,
                                                                  session: Session) -> None:
    best = finished(session, SEEDS, reference_bpb=None)
    same_again = finished(session, [s + 0.0001 for s in SEEDS], reference_bpb=None)
    stats = same_again.stats
    assert stats is not None
    assert stats["reference"] == {"kind": "experiment", "experiment_id": best.id,
                                  "source": "best record-eligible experiment"}
    assert stats["test"].startswith("one-sided Welch")
    assert same_again.eligible is False
    assert any(r.startswith("not significant: p=") for r in same_again.reasons)


def test_a_chosen_experiment_is_the_reference(record: None, session: Session) -> None:
    weak = finished(session, [1.30, 1.31, 1.29], reference_bpb=9.0)
    better = finished(session, SEEDS, reference_bpb=None, reference_experiment_id=weak.id)
    assert better.stats is not None and better.stats["reference"]["experiment_id"] == weak.id
    assert better.stats["p"] < 0.01 and better.eligible is True


def test_the_reference_is_validated_at_submission(client: TestClient) -> None:
    spec = {"name": "x", "seeds": [1], "reference_bpb": -1}
    response = client.post("/api/experiments", json=spec)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reference_bpb"]


def test_the_leaderboard_shows_delta_nats_and_p(record: None, session: Session,
                                                client: TestClient) -> None:
    experiment = finished(session, SEEDS, reference_bpb=None)
    (entry,) = client.get("/api/leaderboard").json()["data"]
    mean = sum(SEEDS) / 3
    assert entry["delta_nats"] == pytest.approx((mean - RECORD) * math.log(2))
    assert entry["p"] == pytest.approx(experiment.stats["p"])  # type: ignore[index]
