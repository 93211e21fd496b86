"""One run of the real bundled trainer (tiny preset, CPU) on the sshd "pod", end to end:
uploaded by the worker, launched detached, followed, collected and verified."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server.models import LogChunk
from server.states import FINAL_RUN_STATUSES
from tests.corpora import write_docstring_corpus
from tests.worker.harness import drive, new_run
from trainer.contract import code_digest
from worker.bundle import default_bundle
from worker.director import RunDirector

pytestmark = [pytest.mark.sshd, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(tokenizer, dataset folder) from `python -m trainer data build` on stdlib docstrings."""
    root = tmp_path_factory.mktemp("dataset")
    write_docstring_corpus(root / "text", 200_000)
    done = subprocess.run([sys.executable, "-m", "trainer", "data", "build", "--text", str(root / "text"),
                           "--out", str(root / "data"), "--vocab-size", "512", "--val-docs", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    tokenizer, data_path = (Path(line) for line in done.stdout.split())
    return tokenizer, data_path


def test_the_real_trainer_runs_on_the_ssh_pod(ssh_settings, engine, small_dataset, finalized):
    tokenizer, data_path = small_dataset
    director = RunDirector(ssh_settings, engine, finalize=finalized)  # the repository's trainer
    run_id = new_run(engine, provider="ssh", seed=5, data_path=str(data_path),
                     tokenizer_path=str(tokenizer), iterations=2, warmup_steps=0, train_batch_tokens=1024)
    run = drive(director, run_id, until=set(FINAL_RUN_STATUSES), timeout_s=240)

    assert run.status == "succeeded", f"{run.reason}\n{run.last_log_lines}"
    results = run.results
    # The worker's own count of the uploaded bundle agrees with the trainer's.
    assert run.code_bytes == code_digest(default_bundle().files())[0] == results["code_bytes"]
    assert run.code_sha256 == results["code_sha256"]  # the trainer counted what was uploaded
    assert results["code_files"] == ["train_gpt.py"] == list(default_bundle().files())  # the single file
    assert run.model_bytes == results["model_bytes"] and run.artifact_sha256 == results["artifact_sha256"]
    assert run.bytes_total == run.code_bytes + run.model_bytes < 16_000_000
    assert run.val_bpb == results["val_bpb"] > 0 and run.steps == 2
    assert results["seed"] == 5 and results["config"]["run_id"] == str(run_id)
    assert run.eligible is False
    assert any(r.startswith("val_tokens") for r in run.reasons)  # not the official split
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)).all()
    train_log = Path(run.remote_dir, "train.log").read_bytes()
    assert "".join(c.text for c in chunks).encode() == train_log
    assert b"final_int8_zlib_roundtrip_exact" in train_log
