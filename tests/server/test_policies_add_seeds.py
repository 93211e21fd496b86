"""Adding seeds to an experiment: in every arm, re-opening a finished one, refusing used seeds
and cancelled experiments, and only for its owner or an admin."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from app.main import create_app
from server.auth import Role, create_token
from server.experiments import add_seeds, finalize_experiment
from server.models import Run
from tests.factories import make_experiment, make_finished_experiment, make_run
from tests.server.broker import queued_tasks

WIDE = {"name": "wide", "config": {"model_dim": 640}}
SCORES = [1.21, 1.22, 1.23]  # val_bpb of a finished experiment's three seeds


def runs_of(session: Session, experiment_id: int) -> list[Run]:
    session.expire_all()
    runs = list(session.exec(select(Run).where(Run.experiment_id == experiment_id)
                             .order_by(col(Run.id))).all())
    session.commit()
    return runs


def test_new_seeds_reopen_a_finished_experiment(session: Session, client: TestClient,
                                                data_dir: Path) -> None:
    experiment_id = make_finished_experiment(session, SCORES, variants=[WIDE]).id
    assert experiment_id is not None

    response = client.post(f"/api/experiments/{experiment_id}/seeds", json={"seeds": [9, 4]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["seeds"], body["finished_at"], body["stats"]) == (
        "running", [1, 2, 3, 9, 4], None, None)
    assert (body["mean_val_bpb"], body["n_succeeded"], body["reasons"]) == (None, 0, [])
    new = [(run["seed"], run["variant"], run["status"]) for run in body["runs"]][3:]
    assert new == [(9, "", "queued"), (9, "wide", "queued"), (4, "", "queued"),
                   (4, "wide", "queued")]
    woken = [args[0] for name, args in queued_tasks(data_dir) if name == "caddie.advance_run"]
    assert sorted(woken) == [run["id"] for run in body["runs"][3:]]

    for run in runs_of(session, experiment_id)[3:]:
        run.status, run.val_bpb, run.eligible = "succeeded", 1.25, True
        session.add(run)
    session.commit()
    assert finalize_experiment(session, experiment_id) is True
    done = client.get(f"/api/experiments/{experiment_id}").json()
    assert (done["status"], done["n_succeeded"]) == ("finished", 5)


def test_a_running_experiment_just_gets_the_runs(session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2])
    make_run(session, experiment, seed=1, status="running")
    make_run(session, experiment, seed=2, status="queued")

    updated = add_seeds(session, experiment.id, [3])

    assert (updated.status, updated.seeds) == ("queued", [1, 2, 3])
    assert [run.seed for run in runs_of(session, experiment.id)] == [1, 2, 3]


@pytest.mark.parametrize("seeds, message", [
    ([2], "seeds: already used by this experiment: [2]"),
    ([5, 5], "seeds must be unique"),
    ([-1], "greater than or equal to 0"),
    ([], "at least 1 item"),
    (["7"], "valid integer"),
])
def test_bad_seeds_are_422_naming_seeds_and_change_nothing(
        session: Session, client: TestClient, seeds: list[object], message: str) -> None:
    experiment_id = make_finished_experiment(session, SCORES).id
    assert experiment_id is not None

    response = client.post(f"/api/experiments/{experiment_id}/seeds", json={"seeds": seeds})

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"][:2] == ["body", "seeds"] and message in problem["msg"]
    assert len(runs_of(session, experiment_id)) == 3
    assert client.get(f"/api/experiments/{experiment_id}").json()["status"] == "finished"


def test_the_service_names_seeds_in_its_error(session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES).id
    assert experiment_id is not None
    with pytest.raises(ValueError, match=r"^seeds\.0: "):
        add_seeds(session, experiment_id, [-3])
    with pytest.raises(ValueError, match=r"^seeds: already used"):
        add_seeds(session, experiment_id, [4, 1])
    assert len(runs_of(session, experiment_id)) == 3


def test_cancelled_is_409_and_unknown_is_404(session: Session, client: TestClient) -> None:
    experiment = make_experiment(session, seeds=[1])
    make_run(session, experiment, seed=1, status="queued")
    assert client.post(f"/api/experiments/{experiment.id}/cancel").status_code == 200

    refused = client.post(f"/api/experiments/{experiment.id}/seeds", json={"seeds": [2]})

    assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]
    assert client.post("/api/experiments/4242/seeds", json={"seeds": [2]}).status_code == 404


def test_seeds_are_refused_while_a_cancel_is_under_way(session: Session, client: TestClient) -> None:
    experiment = make_experiment(session, seeds=[1])
    make_run(session, experiment, seed=1, status="running")  # the worker has yet to stop it
    assert client.post(f"/api/experiments/{experiment.id}/cancel").status_code == 200

    refused = client.post(f"/api/experiments/{experiment.id}/seeds", json={"seeds": [2]})

    assert refused.status_code == 409 and "being cancelled" in refused.json()["detail"]
    assert [run.seed for run in runs_of(session, experiment.id)] == [1]


def test_only_the_owner_or_an_admin_adds_seeds(session: Session, settings_env: None) -> None:
    experiment = make_finished_experiment(session, SCORES, owner="grace")
    _, grace = create_token(session, name="grace", role=Role.member)
    _, linus = create_token(session, name="linus", role=Role.member)
    url = f"/api/experiments/{experiment.id}/seeds"
    app = create_app()
    with TestClient(app) as anonymous:
        assert anonymous.post(url, json={"seeds": [7]}).status_code == 401
    with TestClient(app, headers={"Authorization": f"Bearer {linus}"}) as other:
        assert other.post(url, json={"seeds": [7]}).status_code == 403
    with TestClient(app, headers={"Authorization": f"Bearer {grace}"}) as owner:
        assert owner.post(url, json={"seeds": [7]}).status_code == 200
