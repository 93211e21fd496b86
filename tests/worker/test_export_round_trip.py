"""The export round trip: a tiny-preset experiment run by the worker on the `local` provider
(CPU), exported as a records folder, and the folder's train_gpt.py run by hand with `python`
in the folder: the same step losses and score for the same seed. The folder imports again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from server import export, records
from server.config import get_settings
from server.models import Run
from server.states import FINAL_RUN_STATUSES
from tests.trainer.test_bundle import step_lines
from tests.worker.harness import drive, new_run
from tests.worker.test_real_trainer import small_dataset  # noqa: F401 (a fixture)
from worker.director import RunDirector

pytestmark = pytest.mark.slow


def test_an_exported_trainer_run_reproduces_by_hand(settings, engine, small_dataset, finalized,  # noqa: F811
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tokenizer, data_path = small_dataset
    run_id = new_run(engine, provider="local", seed=5, data_path=str(data_path), tokenizer_path=str(tokenizer),
                     iterations=12, warmup_steps=0, train_batch_tokens=1024, train_log_every=1)
    run = drive(RunDirector(settings, engine, finalize=finalized), run_id,
                until=set(FINAL_RUN_STATUSES), timeout_s=240)
    assert run.status == "succeeded", f"{run.reason}\n{run.last_log_lines}"

    monkeypatch.setenv("CADDIE_DATA_DIR", str(settings.data_dir))  # where the worker left the code
    get_settings.cache_clear()
    folder = tmp_path / "export" / "2026-12-07_Tiny"
    with Session(engine) as session:
        experiment_id = session.get(Run, run_id).experiment_id
        export.export_to(session, experiment_id, folder, github_id="ada")
    get_settings.cache_clear()
    submission = json.loads((folder / "submission.json").read_text())
    readme = (folder / "README.md").read_text()
    assert str(tmp_path) not in readme and str(data_path) not in readme
    # The tiny preset has no training cap: the command says so, as re-runners default to 600 s.
    assert "SEED=5 MAX_WALLCLOCK_SECONDS=0 torchrun --standalone --nproc_per_node=8 train_gpt.py train --out seed5\n" in readme

    # The challenge's layout under the folder, at the paths the records use (sp512 here).
    (folder / "data" / "datasets").mkdir(parents=True)
    (folder / "data" / "tokenizers").mkdir()
    (folder / "data" / "datasets" / "fineweb10B_sp512").symlink_to(data_path)
    (folder / "data" / "tokenizers" / "fineweb_512_bpe.model").symlink_to(tokenizer)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SEED", "DATA_PATH", "TOKENIZER_PATH") and not k.startswith("CADDIE_")}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "train_gpt.py"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    original = (folder / "train_seed5.log").read_text()
    again = (folder / "train.log").read_text()
    assert len(step_lines(original)) >= 12
    assert step_lines(again) == step_lines(original)  # every step's loss, and the final score
    results = json.loads((folder / "results.json").read_text())
    assert results["seed"] == 5 and results["val_loss"] == run.val_loss and results["steps"] == run.steps
    # The counted code is the exported file: the folder's claim is what a re-run measures.
    assert results["code_files"] == ["train_gpt.py"]
    assert results["code_bytes"] == submission["bytes_code"] == (folder / "train_gpt.py").stat().st_size
    assert results["bytes_total"] == submission["bytes_total"] == submission["bytes_code"] + run.model_bytes
    assert run.bytes_total < submission["bytes_total"]  # the run counted the compressed script
    assert "compressed script Caddie uploads" in submission["bytes_note"]

    # `caddie import records` reads the folder back: the seed, its score and the stated numbers.
    for name in ("train.log", "results.json", "metrics.jsonl", results["artifact_file"]):
        (folder / name).unlink()
    with Session(engine) as session:
        (imported,) = records.import_records(session, folder.parent)
    assert imported.created and imported.n_seeds == 1
    assert imported.mean_val_bpb == pytest.approx(run.val_bpb, abs=1e-8)
    # Only the byte counts differ from the log's, for the reason submission.json states.
    assert {d["field"].split(".")[-1] for d in imported.disagreements} <= {"bytes_total", "artifact_bytes", "bytes_code"}, \
        imported.disagreements
