"""The re-run API: plan and create from a folder path (admins), a zip, a git repository at a
commit and an imported record; the 422s; the verdict and evidence of a re-run."""

import io
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.auth import create_token
from server.models import Experiment, ExperimentFile, Run
from server.records import import_records
from tests.fixture_files import FIXTURES
from tests.server.test_reproduce import bare_repository
from worker import script

GOOD = FIXTURES / "reproduce" / "records" / "good"
CARRIED = FIXTURES / "reproduce" / "records" / "carried"


def folder_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, f"good/{path.name}")
    return buffer.getvalue()


def test_plan_then_create_from_a_path_keeps_the_code_byte_equal(client: TestClient, session: Session) -> None:
    body = {"source": {"path": str(GOOD)}, "overrides": {"provider": "local", "budget_usd": 5}}
    plan = client.post("/api/reproduce/preview", json=body).json()
    assert [f["name"] for f in plan["files"]] == ["train_gpt.py", "train_gpt_decode.py"]
    assert plan["budget_usd"] == 5 and plan["estimate"]["provider"] == "local"
    created = client.post("/api/reproduce", json=body)
    assert created.status_code == 201, created.text
    experiment = created.json()["experiment"]
    assert experiment["kind"] == "script" and experiment["budget_usd"] == 5
    assert [run["seed"] for run in experiment["runs"]] == [1, 2, 3]
    rows = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == experiment["id"])).all()
    assert {row.name: bytes(row.content) for row in rows} == {
        name: (GOOD / name).read_bytes() for name in ("train_gpt.py", "train_gpt_decode.py")}
    assert experiment["source"]["reproduce"]["claims"][0]["seed"] == 1


def test_edited_values_and_fresh_seeds(client: TestClient) -> None:
    body = {"source": {"path": str(GOOD)},
            "overrides": {"provider": "runpod", "env": {"NUM_LAYERS": "12"}, "fresh_seeds": 4}}
    created = client.post("/api/reproduce", json=body).json()["experiment"]
    assert created["env"] == {"NUM_LAYERS": "12"} and len(created["seeds"]) == 4
    assert not set(created["seeds"]) & {1, 2, 3}
    assert created["gpu_type"] == "NVIDIA H100 80GB HBM3" and created["gpu_count"] == 8


def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(client: TestClient, session: Session) -> None:
    cases = [
        ({"source": {"path": "/nonexistent"}}, "source.path"),
        ({"source": {"git": {"url": "ext::sh -c id", "commit": "a" * 40}}}, "source.url"),
        ({"source": {"path": str(GOOD)}, "overrides": {"env": {"LD_PRELOAD": "x"}}}, "env.LD_PRELOAD"),
        ({"source": {}}, "exactly one"),
    ]
    for body, field in cases:
        response = client.post("/api/reproduce", json=body)
        assert response.status_code == 422, response.text
        assert field in response.text
    assert session.exec(select(Experiment)).all() == []


def test_a_member_may_not_read_server_folders(client: TestClient, session: Session) -> None:
    token = create_token(session, name="mallory")[1]
    response = client.post("/api/reproduce/preview", json={"source": {"path": str(GOOD)}},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422 and "for admins" in response.text


def test_a_zip_upload(client: TestClient) -> None:
    data = folder_zip(GOOD)
    plan = client.post("/api/reproduce/zip/preview", files={"file": ("good.zip", data)},
                       data={"overrides": '{"provider": "local"}'}).json()
    assert plan["origin"]["kind"] == "zip" and plan["seeds"] == [1, 2, 3]
    created = client.post("/api/reproduce/zip", files={"file": ("good.zip", data)},
                          data={"overrides": '{"provider": "local", "seeds": [5]}'})
    assert created.status_code == 201 and created.json()["experiment"]["seeds"] == [5]
    bad = client.post("/api/reproduce/zip", files={"file": ("x.zip", b"PK nonsense")})
    assert bad.status_code == 422 and "source.zip" in bad.text


def test_a_git_repository_at_a_commit(client: TestClient, tmp_path: Path) -> None:
    bare, commit = bare_repository(tmp_path)
    body = {"source": {"git": {"url": f"file://{bare}", "commit": commit,
                               "path": "records/track_10min_16mb/good"}}, "overrides": {"provider": "local"}}
    created = client.post("/api/reproduce", json=body)
    assert created.status_code == 201, created.text
    origin = created.json()["experiment"]["source"]["reproduce"]["origin"]
    assert origin["commit"] == commit and origin["kind"] == "git"


def test_an_imported_record_then_its_verdict_and_evidence(client: TestClient, session: Session) -> None:
    (imported,) = import_records(session, GOOD)
    record_id = imported.experiment_id
    created = client.post(f"/api/experiments/{record_id}/reproduce", json={"provider": "local"})
    assert created.status_code == 201, created.text
    rerun_id = created.json()["experiment"]["id"]
    assert client.get(f"/api/experiments/{rerun_id}/verdict").json()["verdict"]["outcome"] == "running"
    rerun = session.get(Experiment, rerun_id)
    claims = {c["seed"]: c for c in rerun.source["reproduce"]["claims"]}
    for run in session.exec(select(Run).where(Run.experiment_id == rerun_id)).all():
        # As the worker leaves a seed that scored what it claimed (setup, not the state machine).
        claim = claims[run.seed]
        run.status, run.val_bpb, run.val_loss = "succeeded", claim["val_bpb"], claim["val_loss"]
        run.bytes_total, run.train_time_s, run.eval_time_s = 6000, 0.6, 0.15
        session.add(run)
    session.commit()
    both = client.get(f"/api/experiments/{record_id}/verdict").json()
    assert both["verdict"] is None and both["reruns"][0]["outcome"] == "reproduced"
    evidence = client.get(f"/api/experiments/{rerun_id}/evidence")
    with zipfile.ZipFile(io.BytesIO(evidence.content)) as archive:
        readme = archive.read(f"rerun-{rerun_id}/README.md").decode()
    assert "**Verdict: reproduced**" in readme and "NUM_LAYERS=11" in readme
    assert "one-sided paired t-test by seed" in readme and "paired seeds 1, 2, 3" in readme
    verdict = client.get(f"/api/experiments/{rerun_id}/verdict").json()["verdict"]
    assert verdict["test"]["kind"] == "paired" and verdict["test"]["sd_diff_nats"] == 0.0
    assert "| 3 | succeeded |" in readme
    page = client.get(f"/experiments/{record_id}").text
    assert "Reproduce this record" in page and f'href="/experiments/{rerun_id}"' in page
    not_rerun = client.get(f"/api/experiments/{record_id}/evidence")
    assert not_rerun.status_code == 422


def test_a_zip_with_sub_folders_and_binary_files_runs_its_own_script(client: TestClient, session: Session) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(CARRIED.rglob("*")):
            if path.is_file():
                archive.write(path, f"records/track_non_record_16mb/carried/{path.relative_to(CARRIED).as_posix()}")
    data = buffer.getvalue()
    plan = client.post("/api/reproduce/zip/preview", files={"file": ("carried.zip", data)}).json()
    assert plan["entrypoint"] == "train_gpt_cuda.py"
    assert {f["name"]: f["counted"] for f in plan["files"]}["tokenizers/tok.model"] is False
    created = client.post("/api/reproduce/zip", files={"file": ("carried.zip", data)},
                          data={"overrides": '{"provider": "local"}'})
    assert created.status_code == 201, created.text
    experiment = session.get(Experiment, created.json()["experiment"]["id"])
    rows = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == experiment.id)).all()
    assert {row.name: bytes(row.content) for row in rows} == {
        name: (CARRIED / name).read_bytes() for name in plan["counted"] + ["prep_data.py", "requirements.txt",
                                                                          "tokenizers/tok.model"]}
    # What the worker uploads, counts and launches for it.
    found = script.script_files(list(rows), experiment)
    assert sorted(found.uploaded) == sorted(f["name"] for f in plan["files"])
    assert sorted(found.counted) == ["helper_mod.py", "kernels/ext.cpp", "train_gpt_cuda.py"]
    assert script.torchrun_argv("python3", 8, script.entrypoint(experiment))[-1] == "train_gpt_cuda.py"
