"""The record preset's switches end to end on CPU, scaled down: train → int6 GPTQ-lite +
zstd artifact → sliding-window score, and `python -m trainer eval` reproduces it."""

from __future__ import annotations

import json
import re

import pytest

from trainer import contract
from trainer.quantize import HEADER_MAGIC

from .conftest import Dataset, TrainedRun, train, trainer_cmd

STEPS = 12
VAL_TOKENS = 4096
# The record preset at tiny shapes; every switch stays on.
SCALED = {
    "preset": "record",
    "num_layers": 3,
    "model_dim": 64,
    "num_heads": 4,
    "num_kv_heads": 2,
    "vocab_size": 512,
    "xsa_last_n": 2,
    "rope_dims": 8,
    "bigram_buckets": 256,
    "bigram_dim": 16,
    "train_seq_len": 128,
    "train_batch_tokens": 4096,
    "val_batch_size": 16384,
    "iterations": STEPS,
    "warmup_steps": 1,
    "warmdown_frac": 0.5,
    "min_lr_scale": 0.05,
    "late_qat_threshold": 0.5,
    "muon_momentum_warmup_steps": 5,
    "max_wallclock_seconds": 0.0,
    "val_loss_every": 0,
    "train_log_every": 4,
    "val_max_tokens": VAL_TOKENS,
    "eval_stride": 32,
    "eval_batch_seqs": 16,
    "seed": 11,
}


@pytest.fixture(scope="module")
def record_run(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    values = {**SCALED, "data_path": str(dataset.data_path), "tokenizer_path": str(dataset.tokenizer)}
    return train(values, tmp_path_factory.mktemp("record_run"))


def test_record_switches_train_export_and_score(record_run: TrainedRun):
    r = record_run.results
    assert set(contract.RESULT_KEYS) <= set(r)
    assert r["steps"] == STEPS and r["config"]["preset"] == "record"
    assert r["artifact_file"] == "final_model.int6.ptz" == contract.artifact_name(6)
    assert r["artifact_kind"] == "int6+zstd" and r["eval_mode"] == "sliding"
    assert r["score_tag"] == "final_int6_sliding_window_exact"
    assert r["val_tokens"] == VAL_TOKENS and r["eval_complete"] is True
    artifact = (record_run.out / r["artifact_file"]).read_bytes()
    assert artifact.startswith(HEADER_MAGIC) and len(artifact) == r["model_bytes"]
    assert not (record_run.out / contract.ARTIFACT).exists()
    # Trained, and int6 with QAT costs little against the (EMA) pre-quantization score.
    assert r["val_bpb"] < r["config"]["vocab_size"] and abs(r["val_bpb"] - r["pre_quant_val_bpb"]) < 0.2


def test_record_log_has_the_switch_lines(record_run: TrainedRun):
    log, r = (record_run.out / contract.TRAIN_LOG).read_text(), record_run.results
    late = re.search(r"^late_qat:enabled step:(\d+) scale:(\d\.\d{4}) bits:6$", log, re.M)
    assert late and float(late.group(2)) < 0.5 and 0 < int(late.group(1)) < STEPS
    assert "\nema:applying EMA weights\n" in log
    assert re.search(r"^DIAGNOSTIC post_ema val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4}$", log, re.M)
    assert f"\nTotal submission size int6+zstd: {r['bytes_total']} bytes\n" in log
    assert re.search(
        r"^final_int6_sliding_window val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} stride:32 "
        r"eval_time:\d+ms$", log, re.M)
    exact = f"final_int6_sliding_window_exact val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f}"
    assert log.rstrip().endswith(exact)


def test_record_artifact_scores_alone_to_the_same_number(record_run: TrainedRun):
    artifact = record_run.out / record_run.results["artifact_file"]
    done = trainer_cmd("eval", "--artifact", str(artifact), "--json")
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    assert scored["eval_mode"] == "sliding" and scored["eval_complete"] is True
    assert scored["val_loss"] == record_run.results["val_loss"]
    assert scored["val_bpb"] == record_run.results["val_bpb"]
    assert scored["val_tokens"] == VAL_TOKENS
    assert scored["score_tag"] == record_run.results["score_tag"]
    done = trainer_cmd("eval", "--artifact", str(artifact))
    r = record_run.results
    assert done.stdout.strip() == (
        f"final_int6_sliding_window_exact val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f}"
    )


def test_an_eval_over_its_budget_stops_and_reports_it(record_run: TrainedRun, tmp_path):
    env = {"ITERATIONS": "2", "EMA_DECAY": "0", "EVAL_MAX_SECONDS": "0.000001"}
    done = trainer_cmd(
        "train", "--config", str(record_run.config_path), "--out", str(tmp_path), env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / contract.RESULTS).read_text())
    assert results["eval_complete"] is False and results["val_tokens"] < VAL_TOKENS
    assert re.search(
        rf"^eval_budget_exceeded: eval_max_seconds:0 scored_tokens:\d+ of:{VAL_TOKENS}$",
        (tmp_path / contract.TRAIN_LOG).read_text(),
        re.M,
    )
