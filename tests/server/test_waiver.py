"""The systems-optimization waiver (server/waiver.py): an experiment that declares itself a
systems-only change of an earlier one is judged without the 0.005-nat test against the record,
by the ML it keeps, its score beside the named one's and its step time; through finalize."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server import export, presets, waiver
from server.experiments import finalize_experiment
from server.models import Experiment, Run
from tests.factories import make_experiment, make_scored_run

SCORES = (1.2240, 1.2250, 1.2245)
NAMED_STEPS = 10_000  # 599 s of training: 59.9 ms/step


def reload(session: Session, experiment_id: int | None) -> Experiment:
    session.expire_all()
    experiment = session.get(Experiment, experiment_id)
    assert experiment is not None
    session.commit()
    return experiment


def finished(session: Session, *, steps: int = NAMED_STEPS, shift: float = 0.0,
             systems_only_of: int | None = None, **fields: Any) -> Experiment:
    """A finished experiment of three seeds scored SCORES (+ shift), each `steps` steps."""
    experiment = make_experiment(session, seeds=[1, 2, 3], reference_bpb=None,
                                 systems_only_of=systems_only_of, **fields)
    for seed, score in zip([1, 2, 3], SCORES, strict=True):
        make_scored_run(session, experiment, seed=seed, val_bpb=score + shift, steps=steps)
    assert finalize_experiment(session, experiment.id) is True
    return reload(session, experiment.id)


@pytest.fixture
def named(session: Session) -> Experiment:
    return finished(session, name="the record")


def test_a_faster_run_of_the_same_ml_is_eligible_without_the_record_test(
        session: Session, named: Experiment) -> None:
    # 11,000 steps in the same 599 s: 54.5 ms/step. val_loss_every is a systems field.
    faster = finished(session, steps=11_000, systems_only_of=named.id, config={"val_loss_every": 0})
    assert (faster.eligible, faster.reasons) == (True, [])
    stats = faster.stats or {}
    verdict = stats["systems_waiver"]
    assert (verdict["granted"], verdict["ml"], verdict["ml_differences"]) == (True, "verified", [])
    assert verdict["step_ms"] == pytest.approx(599_000 / 11_000)
    assert verdict["reference_step_ms"] == pytest.approx(599_000 / NAMED_STEPS)
    assert verdict["units"] == "nats_per_token" and verdict["delta"] == pytest.approx(0.0)
    # The record test is still made and kept: it would have refused the same scores.
    assert stats["reference"]["experiment_id"] == named.id and stats["significant"] is False
    assert "waived" in verdict["rule"] and "ML verified unchanged" in verdict["rule"]


def test_without_the_declaration_the_same_runs_fail_the_record_test(
        session: Session, named: Experiment) -> None:
    plain = finished(session, steps=11_000, config={"val_loss_every": 0})
    assert plain.eligible is False
    (why,) = plain.reasons
    assert why.startswith("not significant") and "systems_waiver" not in (plain.stats or {})


def test_a_changed_ml_field_refuses_the_waiver_naming_the_field(
        session: Session, named: Experiment) -> None:
    deeper = finished(session, steps=11_000, systems_only_of=named.id,
                      config={"num_layers": 10, "torch_compile": False})
    assert deeper.eligible is False
    assert deeper.reasons == [f"systems-only change of the record (experiment {named.id}): "
                              "ML fields differ: num_layers: 9 → 10"]
    assert (deeper.stats or {})["systems_waiver"]["ml"] == "differs"


def test_a_preset_that_changes_fields_counts_as_an_ml_change(
        session: Session, named: Experiment) -> None:
    other = make_experiment(session, preset="tiny", systems_only_of=named.id)
    differences = waiver.ml_differences(other, named)
    assert differences and all(":" in line for line in differences)
    tiny = presets.load_schema()["presets"]["tiny"]
    assert {line.split(":")[0] for line in differences} == {
        name for name in tiny if name not in waiver.systems_fields()
        and tiny[name] != presets.resolved_config("baseline", {})[name]}


def test_a_preset_no_longer_in_the_schema_is_an_ml_difference(
        session: Session, named: Experiment) -> None:
    other = make_experiment(session, preset="retired", systems_only_of=named.id)
    assert waiver.ml_differences(other, named) == [
        "preset: 'retired' is no longer in trainer/schema.json, so the configs cannot be compared"]


def test_a_slower_run_is_refused(session: Session, named: Experiment) -> None:
    slower = finished(session, steps=9_000, systems_only_of=named.id)
    assert slower.eligible is False
    (why,) = slower.reasons
    assert why == (f"systems-only change of the record (experiment {named.id}): not faster: "
                   f"{599_000 / 9_000:.1f} ms/step vs {599_000 / NAMED_STEPS:.1f} ms/step")


def test_a_score_worse_beyond_the_margin_is_refused(session: Session, named: Experiment) -> None:
    # +0.004 bpb is 0.004 × 1.69 = 0.00676 nats per token worse: past the 0.005 margin.
    worse = finished(session, steps=11_000, shift=0.004, systems_only_of=named.id)
    (why,) = worse.reasons
    assert "worse than" in why and "beyond the 0.00500 margin" in why and "nats_per_token" in why
    # +0.002 bpb (0.00338 nats) is within it.
    close = finished(session, steps=11_000, shift=0.002, systems_only_of=named.id)
    assert close.eligible is True


def test_a_script_experiment_is_declared_not_verified(session: Session, named: Experiment) -> None:
    script = finished(session, steps=11_000, systems_only_of=named.id, kind="script",
                      preset="script", env={"NUM_LAYERS": "30"})
    verdict = (script.stats or {})["systems_waiver"]
    assert (script.eligible, verdict["ml"]) == (True, "declared, not verified")
    assert "declared by the submitter, not verified" in verdict["rule"]


def test_a_named_experiment_reopened_since_refuses_the_waiver(
        session: Session, named: Experiment) -> None:
    named.status, named.mean_val_bpb = "running", None  # seeds added to it meanwhile
    session.add(named)
    session.commit()
    later = finished(session, steps=11_000, systems_only_of=named.id)
    assert later.reasons == [f"systems-only change of the record (experiment {named.id}): it is "
                             "not finished with a score now"]


def test_the_non_record_track_waives_nothing(session: Session, named: Experiment) -> None:
    long_run = finished(session, steps=11_000, systems_only_of=named.id,
                        track="track_non_record_16mb")
    verdict = (long_run.stats or {})["systems_waiver"]
    assert (verdict["applies"], verdict["reasons"], long_run.eligible) == (False, [], True)
    assert verdict["rule"].endswith("the non-record track tests no record, so there is nothing to waive")


def test_the_other_rules_still_hold(session: Session, named: Experiment) -> None:
    experiment = make_experiment(session, seeds=[1, 2, 3], reference_bpb=None, systems_only_of=named.id)
    for seed in (1, 2):
        make_scored_run(session, experiment, seed=seed, val_bpb=1.2245, steps=11_000)
    make_scored_run(session, experiment, seed=3, val_bpb=1.2245, steps=11_000, eligible=False,
                    reasons=["bytes_total 16,000,001 > 16,000,000"])
    assert finalize_experiment(session, experiment.id) is True
    done = reload(session, experiment.id)
    assert done.eligible is False
    assert done.reasons == ["seed 3: bytes_total 16,000,001 > 16,000,000"]


def test_the_declaration_must_name_a_finished_scored_experiment(
        session: Session, named: Experiment) -> None:
    running = make_experiment(session, status="running")
    script = finished(session, kind="script", preset="script")
    waiver.check_declared(session, named.id, kind="trainer")
    waiver.check_declared(session, script.id, kind="script")
    cases = {999: "experiment 999 not found", running.id: "is running",
             script.id: "is a script experiment"}
    for named_id, expected in cases.items():
        with pytest.raises(ValueError, match=expected) as caught:
            waiver.check_declared(session, named_id, kind="trainer")
        assert str(caught.value).startswith("systems_only_of: ")


def test_every_systems_field_is_a_schema_field() -> None:
    fields = presets.load_schema()["fields"]
    assert waiver.systems_fields() and set(waiver.systems_fields()) <= set(fields)


SPEC: dict[str, Any] = {"name": "compiled", "preset": "tiny", "seeds": [1, 2, 3], "provider": "local"}


def test_the_api_refuses_a_declaration_it_cannot_judge(
        client: TestClient, session: Session, named: Experiment) -> None:
    running = make_experiment(session, status="running")
    for value, expected in ((999, "experiment 999 not found"), (running.id, "is running")):
        response = client.post("/api/experiments", json=SPEC | {"systems_only_of": value})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "systems_only_of"] and expected in error["msg"]
    response = client.post("/api/experiments", json=SPEC | {"systems_only_of": 0})
    assert response.status_code == 422 and "systems_only_of" in response.text
    response = client.post("/api/experiments", json=SPEC | {"systems_only_of": named.id})
    assert response.status_code == 201, response.text
    assert response.json()["systems_only_of"] == named.id


def test_the_api_and_the_leaderboard_show_the_verdict(
        client: TestClient, session: Session, named: Experiment) -> None:
    faster = finished(session, steps=11_000, systems_only_of=named.id)
    body = client.get(f"/api/experiments/{faster.id}").json()
    assert body["systems_only_of"] == named.id and body["eligible"] is True
    assert body["stats"]["systems_waiver"]["granted"] is True
    entries = {e["experiment_id"]: e for e in client.get("/api/leaderboard").json()["data"]}
    assert entries[faster.id]["waiver"] == body["stats"]["systems_waiver"]["rule"]
    assert entries[named.id]["waiver"] is None


def test_the_export_carries_the_verdict(session: Session, named: Experiment, data_dir: Path) -> None:
    faster = finished(session, steps=11_000, systems_only_of=named.id)
    for run in session.exec(select(Run).where(Run.experiment_id == faster.id)).all():
        code = data_dir / "runs" / str(run.id) / "code"
        code.mkdir(parents=True)
        (code / "train_gpt.py").write_text("print('the trainer as uploaded')\n")
    session.commit()

    files = export.export_files(session, faster.id)

    submission = json.loads(files["submission.json"])
    assert submission["eligible"] is True
    assert submission["statistics"]["systems_waiver"]["granted"] is True
    rule = submission["statistics"]["systems_waiver"]["rule"]
    assert f"- record-eligible without the 0.005-nat test: {rule}" in files["README.md"].decode()
