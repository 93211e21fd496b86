"""Finalizing tests the seeds against the record standing at the experiment's date on its
track (the only test that decides record-eligibility), and against a reference chosen at
submission when there is one; in nats per token of the experiment's validation set."""

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server import reference
from server.models import Experiment
from tests.factories import LOSS_PER_BPB, make_finished_experiment

SEEDS = [1.20576485, 1.20617460, 1.20715923]  # a published three-seed result
RECORD = 1.2193657 + 0.005 / math.log(2)
T0 = datetime(2026, 3, 20, tzinfo=UTC)


@pytest.fixture
def record(setting: Callable[[str, str], None]) -> None:
    setting("CADDIE_RECORD_BPB", str(RECORD))


def test_without_an_eligible_experiment_the_standing_record_is_the_reference(
        record: None, session: Session) -> None:
    experiment = make_finished_experiment(session, SEEDS, reference_bpb=None)
    stats = experiment.stats
    assert stats is not None and stats["reference"]["kind"] == "value"
    assert stats["reference"]["val_bpb"] == pytest.approx(RECORD)
    # In nats per token: the factory's runs have val_loss = LOSS_PER_BPB × val_bpb.
    assert stats["units"] == "nats_per_token"
    assert stats["threshold"] == pytest.approx(RECORD * LOSS_PER_BPB - 0.005)
    assert stats["delta"] == pytest.approx((sum(SEEDS) / 3 - RECORD) * LOSS_PER_BPB)
    assert stats["delta_bpb"] == pytest.approx(sum(SEEDS) / 3 - RECORD)
    assert stats["df"] == 2 and stats["p"] < 0.001
    assert experiment.eligible is True and experiment.reasons == []


def test_by_default_the_best_earlier_eligible_experiment_is_the_reference(
        record: None, session: Session) -> None:
    best = make_finished_experiment(session, SEEDS, reference_bpb=None)
    same_again = make_finished_experiment(session, [s + 0.0001 for s in SEEDS], reference_bpb=None)
    stats = same_again.stats
    assert stats is not None
    assert stats["reference"] == {
        "kind": "record", "experiment_id": best.id, "name": best.name,
        "val_bpb": pytest.approx(best.mean_val_bpb), "track": "track_10min_16mb",
        "date": best.record_date.date().isoformat(),
        "source": f"the standing record of track_10min_16mb on "
                  f"{same_again.record_date.date().isoformat()}"}
    assert stats["test"].startswith("one-sided one-sample")
    assert same_again.eligible is False
    (why,) = [r for r in same_again.reasons if r.startswith("not significant: p=")]
    assert why.endswith(f"against {best.name} (experiment {best.id}, val_bpb "
                        f"{best.mean_val_bpb:.5f}, {best.record_date.date().isoformat()})")


def record_on(session: Session, day: int, scores: list[float], *, accepted: bool | None,
              track: str = "track_10min_16mb", name: str = "") -> Experiment:
    """An imported record dated `day` days after T0, finished, as the challenge judged it."""
    when = T0 + timedelta(days=day)
    return make_finished_experiment(session, scores, reference_bpb=None, name=name or f"day {day}",
                                    source={"key": f"{track}/day{day}"}, provider="import",
                                    accepted=accepted, track=track, record_date=when,
                                    created_at=when)


def test_an_import_is_tested_against_the_best_accepted_record_before_it(session: Session) -> None:
    old = record_on(session, 0, [1.30, 1.31, 1.29], accepted=True)
    later_better = record_on(session, 9, [1.10, 1.11, 1.09], accepted=True)
    refused = record_on(session, 1, [1.20, 1.21, 1.19], accepted=False)
    other_track = record_on(session, 2, [1.00, 1.01, 0.99], accepted=True,
                            track="track_non_record_16mb")
    tested = record_on(session, 5, [1.25, 1.26, 1.24], accepted=True)

    reference = tested.stats["reference"]  # type: ignore[index]
    assert (reference["experiment_id"], reference["date"]) == (old.id, "2026-03-20")
    assert tested.eligible is True
    # The first record of a track has nothing before it; one of the same day is not before.
    assert old.stats["reference"]["kind"] == "none"  # type: ignore[index]
    assert old.eligible is True
    same_day = record_on(session, 0, [1.00, 1.01, 0.99], accepted=True, name="same day")
    assert same_day.stats["reference"]["kind"] == "none"  # type: ignore[index]
    assert {later_better.id, refused.id, other_track.id} .isdisjoint(
        {tested.stats["reference"]["experiment_id"]})  # type: ignore[index]


def test_an_import_is_never_its_own_reference(session: Session) -> None:
    first = record_on(session, 0, [1.30, 1.31, 1.29], accepted=True)
    session.expire_all()
    again = reference.record_reference(session, first)
    assert again["kind"] == "none"  # the best record is itself, which does not count


def test_a_chosen_reference_is_tested_but_eligibility_is_against_the_standing_record(
        record: None, session: Session) -> None:
    make_finished_experiment(session, SEEDS, reference_bpb=None)  # the standing record, ~1.2064
    mine = make_finished_experiment(session, [1.2100, 1.2101, 1.2099], reference_bpb=9.0)
    stats = mine.stats
    assert stats is not None
    assert stats["reference"] == {"kind": "value", "val_bpb": 9.0, "source": "chosen at submission"}
    assert stats["significant"] is True
    assert stats["record_test"]["reference"]["kind"] == "record"
    assert stats["record_test"]["significant"] is False
    assert mine.eligible is False
    assert any(r.startswith("not significant") and "against baseline" in r for r in mine.reasons)


def test_a_chosen_experiment_is_the_reference(record: None, session: Session) -> None:
    weak = make_finished_experiment(session, [1.30, 1.31, 1.29], reference_bpb=9.0)
    better = make_finished_experiment(session, SEEDS, reference_bpb=None,
                                      reference_experiment_id=weak.id)
    assert better.stats is not None and better.stats["reference"]["experiment_id"] == weak.id
    assert better.stats["reference"]["name"] == weak.name
    assert better.stats["p"] < 0.01 and better.eligible is True


def test_the_reference_is_validated_at_submission(client: TestClient) -> None:
    spec = {"name": "x", "seeds": [1], "reference_bpb": -1}
    response = client.post("/api/experiments", json=spec)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reference_bpb"]


def test_the_leaderboard_shows_delta_nats_and_p(record: None, session: Session,
                                                client: TestClient) -> None:
    experiment = make_finished_experiment(session, SEEDS, reference_bpb=None)
    (entry,) = client.get("/api/leaderboard").json()["data"]
    mean = sum(SEEDS) / 3
    # Nats per token of the experiment's validation set: Δbpb × ln 2 × bytes per token.
    assert entry["delta_nats"] == pytest.approx((mean - RECORD) * LOSS_PER_BPB)
    assert entry["p"] == pytest.approx(experiment.stats["p"])  # type: ignore[index]
