"""The April pieces together on CPU: GPTQ with its time reserved inside the cap, depth
recurrence turned on mid-run, parallel residuals and Polar-Express MuonEq-R; the artifact
scores alone. And the frontier preset itself: SP8192 data and every switch on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from trainer import contract, hub
from trainer.config import PRESETS, load_config
from trainer.model import ModelShape, build_model

from .conftest import TOKENIZERS, TrainedRun, trainer_cmd

CAP_S, RESERVE_S = 4.0, 1.0


@pytest.mark.slow
def test_frontier_switches_train_within_the_reserved_budget_and_score_alone(
    tiny_run: TrainedRun, tmp_path
):
    env = {
        "ITERATIONS": "100000",  # the cap stops training
        "MAX_WALLCLOCK_SECONDS": str(CAP_S),
        "GPTQ": "1",
        "GPTQ_RESERVE_S": str(RESERVE_S),
        "GPTQ_CALIBRATION_BATCHES": "2",
        "RECUR_LAYERS": "1",
        "RECUR_REPEATS": "2",
        "RECUR_START_FRAC": "0.3",
        "PARALLEL_LAST_N": "1",
        "MUON_VARIANT": "polar_express_muoneq_r",
        "QUANT_BITS": "6",
        "QUANT_KEEP_FLOAT_MAX": "0",  # quantize the tiny matrices too, so GPTQ has work
        "VAL_MAX_TOKENS": "4096",
        "WARMUP_STEPS": "1",
        "TRAIN_LOG_EVERY": "1",
    }
    done = tiny_run.again(tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / contract.TRAIN_LOG).read_text()
    effective_ms = 1000 * (CAP_S - RESERVE_S)
    assert f"gptq:reserving {1000 * RESERVE_S:.0f}ms from training budget, effective={effective_ms:.0f}ms" in log
    stop = re.search(r"stopping_early: wallclock_cap train_time:(\d+)ms step:(\d+)/", log)
    steps = [int(m) for m in re.findall(r"^step:\d+/\d+ train_loss:\S+ train_time:(\d+)ms", log, re.M)]
    assert stop and steps
    # Training stopped at the first step that reached the reduced cap, not the full one.
    assert steps[-1] >= effective_ms and (len(steps) == 1 or steps[-2] < effective_ms)
    loop = re.search(r"layer_loop:enabled step:(\d+) frac:(\S+) order:\[0, 0, 0, 1\]", log)
    assert loop and float(loop.group(2)) >= 0.3 and 0 < int(loop.group(1)) < int(stop.group(2))
    assert re.search(r"^gptq:calibrated 13 layers in \S+s$", log, re.M)  # 12 linears + embedding
    timing = re.search(r"^time_budget train:(\d+)ms gptq_calibration:(\d+)ms artifact:(\d+)ms "
                       r"eval:(\d+)ms$", log, re.M)
    assert timing and int(timing.group(1)) == int(stop.group(1))
    results = json.loads((tmp_path / contract.RESULTS).read_text())
    assert results["gptq_calibration_s"] > 0
    assert results["train_time_s"] == pytest.approx(
        int(stop.group(1)) / 1000 + results["gptq_calibration_s"], abs=1e-3)
    artifact = tmp_path / results["artifact_file"]
    scored = trainer_cmd("eval", "--artifact", str(artifact), "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["val_bpb"] == pytest.approx(results["val_bpb"], rel=1e-9)


def test_frontier_preset_is_the_april_stack_on_sp8192(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "frontier"}))
    c = load_config(path, {})
    assert (c.vocab_size, Path(c.data_path).name) == (8192, hub.dataset_dir("sp8192"))
    assert Path(c.tokenizer_path).name == "fineweb_8192_bpe.model"
    assert (TOKENIZERS / "fineweb_8192_bpe.model").is_file()  # the official sp8192 model
    assert (c.xsa_last_n, c.parallel_last_n, c.qk_gain_init) == (11, 3, 5.0)
    assert (c.recur_start, c.recur_layers, c.recur_repeats, c.recur_start_frac) == (3, 3, 2, 0.35)
    assert c.gptq and c.gptq_reserve_s > 0 and c.muon_variant == "polar_express_muoneq_r"
    assert c.mlp_activation == "leaky_relu2" and c.ttt_epochs == 3
    # SDClip as the April SP8192 records: int6 matrices at 12.85 sigma, an int8 embedding at 20.
    assert (c.quant_sdclip_k, c.quant_embed_bits, c.quant_embed_sdclip_k) == (12.85, 8, 20.0)
    assert set(PRESETS["frontier"]) >= set(PRESETS["record"]) - {"xsa_last_n"}
    model = build_model(ModelShape.from_config(c), torch.device("cpu"))
    # 17 layers run over 11 blocks' weights: the U-Net has 8 skips.
    assert model.skip_weights.shape[0] == 8
