"""A participant's own train_gpt.py run by the director on the ssh provider (a real sshd):
uploaded, launched under torchrun, its stdout streamed as train.log, scored from the log,
its code and artifact measured by the worker."""

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from server.models import LogChunk
from server.scripts import store_files
from server.states import FINAL_RUN_STATUSES
from tests.factories import make_experiment, make_run
from tests.worker.harness import FAKE_TRAINER, drive
from worker.bundle import TrainerBundle
from worker.director import RunDirector

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)
SCRIPT = (Path(__file__).parent / "byo" / "train_gpt.py").read_text()
MODEL_BYTES = 5000  # what the stand-in script writes as final_model.int8.ptz


@pytest.fixture
def ssh_director(ssh_settings, engine, finalized) -> RunDirector:
    return RunDirector(ssh_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)


def script_run(engine, *, env: dict[str, str] | None = None, files: dict[str, str] | None = None,
               seed: int = 7) -> int:
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, provider="ssh", kind="script", env=env or {})
        store_files(session, experiment.id, files or {"train_gpt.py": SCRIPT})
        session.commit()
        run = make_run(session, experiment, seed=seed)
        assert run.id is not None
        return run.id


def stored_log(engine, run_id: int) -> bytes:
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)).all()
    return "".join(c.text for c in chunks).encode()


def test_a_script_runs_under_torchrun_and_is_scored_from_its_log(ssh_director, engine, ssh_settings):
    run = drive(ssh_director, script_run(engine, seed=7), until=FINAL, timeout_s=120)

    assert run.status == "succeeded", f"{run.reason}\n{run.last_log_lines}"
    pod_log = Path(run.remote_dir, "train.log").read_bytes()
    assert stored_log(engine, run.id) == pod_log  # its stdout, streamed like the trainer's log
    assert f"run_id:{run.id} seed:7 world_size:1\n".encode() in pod_log  # torchrun, one process on a CPU
    assert b"max_wallclock_seconds:600\n" in pod_log
    # Scores as the log states them; bytes as the worker measured them.
    assert (run.val_loss, run.val_bpb, run.steps, run.val_tokens) == (2.51234567, 1.480007, 20, 62_021_632)
    assert (run.train_time_s, run.eval_time_s) == (0.2, 0.3)
    assert run.code_bytes == len(SCRIPT.encode()) == Path(run.remote_dir, "code", "train_gpt.py").stat().st_size
    local = ssh_settings.runs_dir() / str(run.id)
    artifact = Path(run.remote_dir, "code", "final_model.int8.ptz").read_bytes()
    assert (local / "final_model.int8.ptz").read_bytes() == artifact and len(artifact) == MODEL_BYTES
    assert not (local / "final_model.pt").exists()  # the raw model is not the artifact
    assert (run.model_bytes, run.bytes_total) == (MODEL_BYTES, run.code_bytes + MODEL_BYTES)
    assert run.results["log"]["bytes_total"] == run.bytes_total  # the log's own claim, kept and agreeing
    assert run.results["artifact_file"] == "final_model.int8.ptz"
    assert json.loads((local / "results.json").read_text())["val_bpb"] == run.val_bpb
    assert run.reasons == ["hardware no GPU is not 8×H100"]


def test_extra_files_count_requirements_are_installed_not_counted(ssh_director, engine):
    helper = "def helper():\n    return 1\n"
    requirements = "# nothing to install\n"
    run = drive(ssh_director, script_run(engine, files={"train_gpt.py": SCRIPT, "helper.py": helper,
                                                        "requirements.txt": requirements}),
                until=FINAL, timeout_s=180)

    assert run.status == "succeeded", f"{run.reason}\n{run.last_log_lines}"
    assert run.code_bytes == len(SCRIPT.encode()) + len(helper.encode())
    assert run.results["code_files"] == ["helper.py", "train_gpt.py"]
    # The script counted only itself: the log's total disagrees with the worker's, which is a reason.
    claimed = len(SCRIPT.encode()) + MODEL_BYTES
    assert f"the log says bytes_total {claimed:,}, the worker measured {run.bytes_total:,}" in run.reasons
    assert Path(run.remote_dir, "code", "requirements.txt").read_text() == requirements


@pytest.mark.parametrize(("env", "reason", "line"), [
    ({"MODE": "crash"}, "trainer exited with code 1", "RuntimeError: the loss became nan"),
    ({"MODE": "silent"}, "the script exited 0 but printed no final metric", "step:20/20 train_loss:2.8000"),
])
def test_a_failing_script_stores_the_reason_and_its_last_lines(ssh_director, engine, env: dict[str, Any],
                                                                reason: str, line: str):
    run = drive(ssh_director, script_run(engine, env=env), until=FINAL, timeout_s=120)

    assert run.status == "failed"
    assert run.reason.startswith(reason), run.reason
    assert line in run.last_log_lines
    assert run.val_bpb is None and run.bytes_total is None


def test_a_failing_pip_install_fails_the_run_before_the_script(ssh_director, engine):
    files = {"train_gpt.py": SCRIPT, "requirements.txt": "caddie-no-such-package==1.0\n"}
    run = drive(ssh_director, script_run(engine, files=files, env={"PIP_NO_INDEX": "1"}),
                until=FINAL, timeout_s=180)

    assert run.status == "failed"
    assert run.reason.startswith("pip install -r requirements.txt failed with exit code"), run.reason
    assert "caddie-no-such-package" in run.last_log_lines  # pip's own words, from trainer.out
    assert not Path(run.remote_dir, "train.log").exists()  # the script never started


def test_a_reruns_seed_env_sits_between_the_experiment_env_and_seed():
    from server.models import Experiment, Run
    from worker.script import script_env

    experiment = Experiment(name="re-run", preset="script", kind="script",
                            env={"NUM_LAYERS": "11", "RECUR_START_STEP": "3000"},
                            seed_env={"2024": {"RECUR_START_STEP": "2500"}})
    assert script_env(experiment, Run(id=7, experiment_id=1, seed=2024)) == {
        "MAX_WALLCLOCK_SECONDS": "600", "NUM_LAYERS": "11", "RECUR_START_STEP": "2500",
        "SEED": "2024", "RUN_ID": "7"}
    assert script_env(experiment, Run(id=8, experiment_id=1, seed=42))["RECUR_START_STEP"] == "3000"
