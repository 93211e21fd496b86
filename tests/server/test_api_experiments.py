"""POST/GET /api/experiments and cancelling: through HTTP, on SQLite and PostgreSQL."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.config import get_settings
from server.dispatch import ADVANCE_RUN
from server.models import Experiment, Run, RunEvent
from tests.factories import make_experiment, make_run
from tests.server.broker import queued_tasks

SPEC: dict[str, Any] = {
    "name": "deeper",
    "author": "ada",
    "preset": "tiny",
    "config": {"num_layers": 3, "matrix_lr": 0.05, "tie_embeddings": False},
    "seeds": [1337, 42, 7],
    "provider": "local",
}


def create(client: TestClient, **changes: Any) -> dict[str, Any]:
    response = client.post("/api/experiments", json=SPEC | changes)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_stores_one_queued_run_per_seed_and_wakes_each(
    client: TestClient, session: Session, data_dir: Path
) -> None:
    body = create(client)

    assert body["status"] == "queued"
    assert body["config"] == SPEC["config"]
    assert [run["seed"] for run in body["runs"]] == SPEC["seeds"]
    assert {run["status"] for run in body["runs"]} == {"queued"}
    stored = session.exec(select(Run).where(Run.experiment_id == body["id"])).all()
    assert sorted(run.id for run in stored) == sorted(run["id"] for run in body["runs"])
    events = session.exec(select(RunEvent)).all()
    assert sorted((e.run_id, e.from_status, e.to_status) for e in events) == sorted(
        (run.id, None, "queued") for run in stored
    )
    assert sorted(queued_tasks(data_dir)) == sorted((ADVANCE_RUN, [run.id]) for run in stored)


def test_create_keeps_the_rows_when_the_broker_fails(
    client: TestClient, session: Session, data_dir: Path
) -> None:
    # A file where the broker wants its queue folder: every enqueue fails for real.
    (data_dir / "broker").mkdir(parents=True)
    (data_dir / "broker" / "queue").write_text("not a folder")

    body = create(client)

    assert len(session.exec(select(Run).where(Run.experiment_id == body["id"])).all()) == 3


def test_list_is_newest_first_with_count_and_filters(client: TestClient) -> None:
    first = create(client, name="one", author="ada")
    second = create(client, name="two", author="bob")
    third = create(client, name="three", author="ada")

    page = client.get("/api/experiments", params={"limit": 2}).json()
    assert page["count"] == 3
    assert [e["id"] for e in page["data"]] == [third["id"], second["id"]]
    rest = client.get("/api/experiments", params={"limit": 2, "offset": 2}).json()
    assert [e["id"] for e in rest["data"]] == [first["id"]]
    adas = client.get("/api/experiments", params={"author": "ada"}).json()
    assert (adas["count"], [e["name"] for e in adas["data"]]) == (2, ["three", "one"])
    client.post(f"/api/experiments/{second['id']}/cancel")
    cancelled = client.get("/api/experiments", params={"status": "cancelled"}).json()
    assert [e["id"] for e in cancelled["data"]] == [second["id"]]


def test_get_returns_the_experiment_with_its_runs(client: TestClient) -> None:
    created = create(client, seeds=[5, 3])

    body = client.get(f"/api/experiments/{created['id']}").json()

    assert body["name"] == "deeper"
    assert [run["seed"] for run in body["runs"]] == [5, 3]
    assert "lease_owner" not in body["runs"][0]


@pytest.mark.parametrize("path", ["/api/experiments/999", "/api/runs/999",
                                  "/api/runs/999/log"])
def test_unknown_ids_are_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "999 not found" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/api/experiments/999/cancel", "/api/runs/999/cancel"])
def test_cancelling_unknown_ids_is_404(client: TestClient, path: str) -> None:
    assert client.post(path).status_code == 404


BAD_SPECS = [
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"author": 5}, "author"),
    ({"preset": "huge"}, "preset"),
    ({"config": {"num_layers": 2.5}}, "config.num_layers"),
    ({"config": {"num_layers": True}}, "config.num_layers"),
    ({"config": {"num_layers": 0}}, "config.num_layers"),
    ({"config": {"num_layers": 65}}, "config.num_layers"),
    ({"config": {"matrix_lr": "fast"}}, "config.matrix_lr"),
    ({"config": {"tie_embeddings": 1}}, "config.tie_embeddings"),
    ({"config": {"data_path": 3}}, "config.data_path"),
    ({"config": {"warp_drive": 1}}, "config.warp_drive"),
    ({"config": {"seed": 3}}, "config.seed"),
    ({"config": []}, "config"),
    ({"seeds": []}, "seeds"),
    ({"seeds": list(range(65))}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"seeds": [1.5]}, "seeds"),
    ({"seeds": ["1"]}, "seeds"),
    ({"seeds": [True]}, "seeds"),
    ({"seeds": [-1]}, "seeds"),
    ({"seeds": [2**31]}, "seeds"),
    ({"provider": "aws"}, "provider"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_SPECS)
def test_bad_specs_are_422_naming_the_field(
    client: TestClient, session: Session, changes: dict[str, Any], field: str
) -> None:
    response = client.post("/api/experiments", json=SPEC | changes)

    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    top = field.split(".")[0]
    assert any(top in p["loc"] and (field == top or field in p["msg"]) for p in problems), problems
    assert session.exec(select(Experiment)).all() == []


def test_missing_fields_and_malformed_json_are_422(client: TestClient) -> None:
    missing = client.post("/api/experiments", json={"name": "x"}).json()["detail"]
    assert ["body", "seeds"] in [p["loc"] for p in missing]
    malformed = client.post("/api/experiments", content=b'{"name": ',
                            headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(("params", "name"), [
    ({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"offset": -1}, "offset"),
    ({"limit": "ten"}, "limit"), ({"author": "a\x00"}, "author"), ({"status": "lost"}, "status"),
])
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any],
                                     name: str) -> None:
    response = client.get("/api/experiments", params=params)
    assert response.status_code == 422
    assert ["query", name] in [p["loc"] for p in response.json()["detail"]]


@pytest.mark.parametrize("path", ["/api/experiments/abc", "/api/experiments/0",
                                  "/api/experiments/99999999999", "/api/runs/-1"])
def test_bad_ids_are_422(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "path"


def test_cancel_ends_queued_runs_and_asks_the_worker_to_stop_live_ones(
    client: TestClient, session: Session, data_dir: Path
) -> None:
    experiment = make_experiment(session, seeds=[1, 2, 3])
    queued = make_run(session, experiment, seed=1)
    running = make_run(session, experiment, seed=2, status="running")
    make_run(session, experiment, seed=3, status="succeeded", val_bpb=1.2)

    body = client.post(f"/api/experiments/{experiment.id}/cancel").json()

    by_seed = {run["seed"]: run for run in body["runs"]}
    assert by_seed[1]["status"] == "cancelled"
    assert (by_seed[2]["status"], by_seed[2]["cancel_requested"]) == ("running", True)
    assert by_seed[3]["status"] == "succeeded"
    assert body["status"] == "running"  # the live run has not stopped yet
    assert queued_tasks(data_dir) == [(ADVANCE_RUN, [running.id])]
    events = session.exec(select(RunEvent).where(RunEvent.run_id == queued.id)).all()
    assert [(e.from_status, e.to_status) for e in events][-1] == ("queued", "cancelled")


def test_cancelling_an_all_queued_experiment_finishes_it_as_cancelled(
    client: TestClient,
) -> None:
    created = create(client)

    body = client.post(f"/api/experiments/{created['id']}/cancel").json()

    assert body["status"] == "cancelled"
    assert {run["status"] for run in body["runs"]} == {"cancelled"}
    assert body["finished_at"] is not None
    again = client.post(f"/api/experiments/{created['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


def test_a_combination_the_trainer_refuses_is_a_422_naming_the_field(client: TestClient) -> None:
    response = client.post("/api/experiments", json={
        "name": "bad heads", "preset": "baseline", "seeds": [1],
        "config": {"model_dim": 100, "num_heads": 8}})
    assert response.status_code == 422
    assert "config.num_heads" in response.text or "config.model_dim" in response.text
    assert client.get("/api/experiments").json()["count"] == 0


def test_a_variant_breaking_a_rule_is_named(client: TestClient) -> None:
    response = client.post("/api/experiments", json={
        "name": "bad variant", "preset": "baseline", "seeds": [1],
        "variants": [{"name": "wide", "config": {"model_dim": 100}}]})
    assert response.status_code == 422
    assert "variants.wide.config." in response.text


def test_ssh_without_hosts_is_refused_at_submission(client: TestClient, session: Session,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_SSH_HOSTS", "")
    get_settings.cache_clear()
    answer = client.post("/api/experiments", json={"name": "on my hosts", "seeds": [1], "provider": "ssh"})
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", "provider"]
    assert "CADDIE_SSH_HOSTS" in problem["msg"] and "'ssh' has no hosts" in problem["msg"]
    assert session.exec(select(Experiment)).all() == []
    session.commit()  # end the read, so SQLite lets the next request write

    monkeypatch.setenv("CADDIE_SSH_HOSTS", "root@gpu1:22")
    get_settings.cache_clear()
    accepted = client.post("/api/experiments", json={"name": "on my hosts", "seeds": [1], "provider": "ssh"})
    assert accepted.status_code == 201, accepted.text


def test_a_script_experiment_reads_as_a_script_with_secret_values_hidden(client: TestClient) -> None:
    spec = {"name": "mine", "kind": "script", "seeds": [1], "files": {"train_gpt.py": "print(1)\n"},
            "env": {"NUM_LAYERS": "11", "WANDB_API_KEY": "wk-123", "HF_TOKEN": "hf_abc"},
            "variants": [{"name": "other-key", "env": {"HF_TOKEN": "hf_other", "NUM_LAYERS": "12"}}]}
    created = client.post("/api/experiments", json=spec)
    assert created.status_code == 201, created.text
    body = client.get(f"/api/experiments/{created.json()['id']}").json()
    assert body["preset"] == "script"  # was "baseline"
    assert body["env"] == {"HF_TOKEN": "(hidden)", "NUM_LAYERS": "11", "WANDB_API_KEY": "(hidden)"}
    assert body["variants"] == [{"name": "other-key", "env": {"HF_TOKEN": "(hidden)", "NUM_LAYERS": "12"}}]
    listed = client.get("/api/experiments").json()["data"][0]
    assert (listed["preset"], listed["env"]["HF_TOKEN"]) == ("script", "(hidden)")
