"""An ablation's arms each run their own settings, end to end through the worker: the real
trainer (tiny preset, CPU) on the local provider logs each arm's config and parameter count, and
a participant's script gets each arm's env. The ablation is then computed from what the runs ran."""

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server import ablation
from server.models import Experiment, Run
from server.scripts import store_files
from server.states import FINAL_RUN_STATUSES
from tests.factories import make_experiment, make_run
from tests.worker.harness import FAKE_TRAINER, drive
from tests.worker.test_real_trainer import small_dataset  # noqa: F401 (a fixture)
from worker.bundle import TrainerBundle
from worker.director import RunDirector

FINAL = set(FINAL_RUN_STATUSES)
SCRIPT = (Path(__file__).parent / "byo" / "train_gpt.py").read_text()
VARIANTS = [{"name": "mlp3", "config": {"mlp_mult": 3}}, {"name": "layers3", "config": {"num_layers": 3}}]


def logged(train_log: str) -> tuple[dict, int]:
    """(the config the trainer logged, its model_params) from a train.log."""
    config = next(line for line in train_log.splitlines() if line.startswith("config:"))
    params = next(line for line in train_log.splitlines() if line.startswith("model_params:"))
    return json.loads(config.removeprefix("config:")), int(params.removeprefix("model_params:"))


@pytest.mark.slow
def test_each_arm_runs_its_own_config_on_the_local_provider(settings, engine, small_dataset, finalized):  # noqa: F811
    tokenizer, data_path = small_dataset
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, preset="tiny", seeds=(5,), variants=VARIANTS, config={
            "data_path": str(data_path), "tokenizer_path": str(tokenizer), "iterations": 2,
            "warmup_steps": 0, "train_batch_tokens": 1024})
        ids = {arm: make_run(session, experiment, seed=5, variant=arm).id for arm in ("", "mlp3", "layers3")}
    director = RunDirector(settings, engine, finalize=finalized)  # the repository's trainer
    runs = {arm: drive(director, run_id, until=FINAL, timeout_s=300) for arm, run_id in ids.items()}

    seen = {}
    for arm, run in runs.items():
        assert run.status == "succeeded", f"{arm}: {run.reason}\n{run.last_log_lines}"
        seen[arm] = logged(Path(run.remote_dir, "train.log").read_text())
        assert run.results["config"]["mlp_mult"] == seen[arm][0]["mlp_mult"]  # results.json agrees
    control, mlp3, layers3 = seen[""], seen["mlp3"], seen["layers3"]
    assert (control[0]["mlp_mult"], control[0]["num_layers"]) == (2, 2)  # the tiny preset
    assert (mlp3[0]["mlp_mult"], mlp3[0]["num_layers"]) == (3, 2)
    assert (layers3[0]["mlp_mult"], layers3[0]["num_layers"]) == (2, 3)
    assert control[1] < mlp3[1] and control[1] < layers3[1] and mlp3[1] != layers3[1]

    with Session(engine) as session:
        stored = session.get(Experiment, experiment.id)
        study = ablation.summarize(stored, list(session.exec(select(Run))))
    assert "error" not in study
    assert [row["error"] for row in study["rows"]] == ["", ""]
    assert all(row["mean_diff_bpb"] is not None for row in study["rows"])


def test_each_arm_of_a_script_experiment_gets_its_own_env(ssh_settings, engine, finalized, tmp_path):
    dumps = {arm: tmp_path / f"env-{arm or 'control'}.json" for arm in ("", "long", "lr")}
    variants = [{"name": "long", "env": {"DUMP_ENV": str(dumps["long"]), "TRAIN_SEQ_LEN": "2048"}},
                {"name": "lr", "env": {"DUMP_ENV": str(dumps["lr"]), "MATRIX_LR": "0.08"}}]
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, provider="ssh", kind="script", seeds=(3,), variants=variants,
                                     env={"DUMP_ENV": str(dumps[""]), "TRAIN_SEQ_LEN": "1024"})
        store_files(session, experiment.id, {"train_gpt.py": SCRIPT})
        session.commit()
        ids = {arm: make_run(session, experiment, seed=3, variant=arm).id for arm in dumps}
    director = RunDirector(ssh_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)
    runs = {arm: drive(director, run_id, until=FINAL, timeout_s=120) for arm, run_id in ids.items()}

    assert all(run.status == "succeeded" for run in runs.values()), {a: r.reason for a, r in runs.items()}
    env = {arm: json.loads(path.read_text()) for arm, path in dumps.items()}
    assert (env[""]["TRAIN_SEQ_LEN"], env[""].get("MATRIX_LR")) == ("1024", None)
    assert (env["long"]["TRAIN_SEQ_LEN"], env["long"].get("MATRIX_LR")) == ("2048", None)
    assert (env["lr"]["TRAIN_SEQ_LEN"], env["lr"]["MATRIX_LR"]) == ("1024", "0.08")
    digests = {run.results["worker"]["env_sha256"] for run in runs.values()}
    assert len(digests) == 3  # the worker recorded three different settings
