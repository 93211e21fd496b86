"""CPU mini-golf: the `baseline` and `record` presets, scaled down, on the same corpus and the
same wall-clock budget; then, on the record run's trained weights, int8+zlib versus int6
GPTQ-lite+zstd-22, and the speed of sliding-window evaluation.

Both presets train at the same time, one torch thread each, so that other load on the
machine slows both alike. Corpus: the Python standard library's docstrings (`cli/demo.py`'s
dataset, vocab 1024). Shapes: the baseline at 4x128 (MLP 2x, seq 256, 4,096 tokens a
step); the record preset at 5x128 (11/9 of the layers, MLP 3x, seq 512 = 2x, the same
4,096 tokens a step: a step is 8 whole-sequence micro-batches, and 1.5x would split a 512
sequence) with every switch on. Steps are not known in advance on a shared CPU, so a 20 s
probe of each measures the step time, and the step-counted settings are scaled to the
steps the budget allows, keeping each preset's own fractions (warmdown, momentum warm-up,
EMA horizon).
Size cap: 16,000,000 bytes scaled by the mini baseline's share of the real baseline's
17,059,912 parameters, on model bytes (the code is the same for both). Tensors over 4,096
elements are quantized (QUANT_KEEP_FLOAT_MAX; the real 65,536 scaled the same way).

  .venv/bin/python bench/mini_golf.py [--budget 180] [--val-tokens 65536]
                                      [--record-shape scaled|baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cli.demo import prepare_data  # noqa: E402
from trainer import contract  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
from trainer.data import VAL_PATTERN, find_shards, load_validation_tokens  # noqa: E402
from trainer.evaluate import (  # noqa: E402
    build_byte_tables,
    evaluate,
    evaluate_sliding,
    load_tokenizer,
)
from trainer.model import ModelShape, build_model  # noqa: E402
from trainer.quantize import QuantSpec, dequantize_state_dict, pack, quantize_state_dict, unpack  # noqa: E402

VOCAB = 1024
REAL_BASELINE_PARAMS = 17_059_912
REAL_CAP = 16_000_000
# The real export quantizes tensors over 65,536 elements, a quarter of a 512x512 matrix;
# a quarter of a 128x128 one keeps that rule at this width (else every block matrix
# would be stored as fp16).
KEEP_FLOAT_MAX = 4096
SMALL = {"model_dim": 128, "num_heads": 4, "num_kv_heads": 2, "vocab_size": VOCAB,
         "quant_keep_float_max": KEEP_FLOAT_MAX}
BASELINE = {**SMALL, "preset": "baseline", "num_layers": 4, "train_seq_len": 256,
            "train_batch_tokens": 4096}
RECORD = {**SMALL, "preset": "record", "num_layers": 5, "xsa_last_n": 2, "rope_dims": 8,
          "bigram_buckets": 512, "bigram_dim": 32, "train_seq_len": 512,
          "train_batch_tokens": 4096, "eval_batch_seqs": 16}
# --record-shape baseline: the record's switches on the baseline's shape and sequence
# length, which separates what the switches do from what the bigger model costs in steps.
RECORD_AT_BASELINE_SHAPE = {**RECORD, "num_layers": 4, "mlp_mult": 2, "train_seq_len": 256}
# Each preset's step-counted settings as fractions of its real run's steps
# (baseline: 13,780 steps; record: ~7,100 steps).
FRACTIONS = {
    "baseline": {"warmdown": 1200 / 13780, "momentum_warmup": 500 / 13780},
    "record": {"warmdown": 3500 / 7100, "momentum_warmup": 1500 / 7100, "ema_horizon": 333 / 7100},
}
COMMON = {"warmup_steps": 0, "val_loss_every": 0, "train_log_every": 50, "iterations": 1_000_000,
          "seed": 1337}


def start(values: dict[str, Any], out: Path) -> subprocess.Popen:
    """`python -m trainer train` on one torch thread, in the background."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "run.json"
    config.write_text(json.dumps(values))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = open(out / "stderr.txt", "w")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "trainer", "train", "--config", str(config),
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=log, env=env)


def train_side_by_side(jobs: dict[str, tuple[dict[str, Any], Path]]) -> dict[str, dict]:
    """Run every job at once, so that whatever else loads the machine slows all alike."""
    procs = {name: start(values, out) for name, (values, out) in jobs.items()}
    results = {}
    for name, proc in procs.items():
        out = jobs[name][1]
        if proc.wait():
            raise SystemExit(f"{name} failed:\n{(out / 'stderr.txt').read_text()[-3000:]}")
        results[name] = json.loads((out / contract.RESULTS).read_text())
    return results


def scaled(preset: str, values: dict[str, Any], steps: int) -> dict[str, Any]:
    f = FRACTIONS[preset]
    extra = {"warmdown_frac": f["warmdown"],
             "muon_momentum_warmup_steps": max(1, round(f["momentum_warmup"] * steps))}
    if "ema_horizon" in f:
        extra["ema_decay"] = 1.0 - 1.0 / max(2.0, f["ema_horizon"] * steps)
    return {**values, **extra}


def step_seconds(run_dir: Path) -> float:
    """Seconds per step after the first few (which carry one-off start-up costs)."""
    steps = [json.loads(line) for line in (run_dir / contract.METRICS).read_text().splitlines()]
    steps = [e for e in steps if e["event"] == contract.EVENT_TRAIN_STEP]
    first, last = steps[min(4, len(steps) - 2)], steps[-1]
    return (last["train_time_ms"] - first["train_time_ms"]) / 1000 / (last["step"] - first["step"])


def golf(work: Path, data: dict[str, str], budget: float, val_tokens: int,
         record: dict[str, Any]) -> dict[str, Any]:
    bases = {name: {**shape, **COMMON, **data, "val_max_tokens": val_tokens}
             for name, shape in (("baseline", BASELINE), ("record", record))}
    probes = {name: ({**base, "max_wallclock_seconds": 20.0, "eval_mode": "standard",
                      "ema_decay": 0.0, "train_log_every": 1, "val_max_tokens": 4096},
                     work / f"{name}_probe") for name, base in bases.items()}
    train_side_by_side(probes)
    jobs = {}
    for name, base in bases.items():
        seconds = step_seconds(work / f"{name}_probe")
        plan = int(budget / seconds)
        print(f"{name}: probe {seconds:.2f}s a step, planning for ~{plan} steps", flush=True)
        values = {**scaled(name, base, plan), "max_wallclock_seconds": budget,
                  "save_raw_model": True}
        jobs[name] = (values, work / name)
    return train_side_by_side(jobs)


def quant_comparison(run_dir: Path, results: dict[str, Any], val_tokens: int):
    """Same trained weights, several export specs: bytes and the round-trip gap (standard eval)."""
    config = config_from_dict(results["config"])
    device = torch.device("cpu")
    shape = ModelShape.from_config(config)
    raw = torch.load(run_dir / contract.RAW_MODEL, map_location="cpu", weights_only=True)
    model = build_model(shape, device)
    sp = load_tokenizer(config.tokenizer_path, config.vocab_size)
    tables = build_byte_tables(sp, config.vocab_size)
    val = load_validation_tokens(find_shards(config.data_path, VAL_PATTERN),
                                 config.train_seq_len, val_tokens)

    def score() -> float:
        return evaluate(model, val, tables, seq_len=config.train_seq_len,
                        local_batch_tokens=config.val_batch_size // 8, rank=0, world_size=1,
                        device=device).val_bpb

    model.load_state_dict(raw)
    before = score()
    rows = []
    keep = KEEP_FLOAT_MAX
    specs = [("int8+zlib (baseline)", QuantSpec(8, False, False, "zlib", keep)),
             ("int6+zstd-22 plain per-row", QuantSpec(6, False, False, "zstd", keep)),
             ("int6 GPTQ-lite+zstd-22", QuantSpec(6, True, False, "zstd", keep)),
             ("int6 GPTQ-lite+zstd-22, fp16 emb", QuantSpec(6, True, True, "zstd", keep)),
             ("int6 GPTQ-lite+lzma-9e, fp16 emb", QuantSpec(6, True, True, "lzma", keep)),
             ("int5 GPTQ-lite+zstd-22, fp16 emb", QuantSpec(5, True, True, "zstd", keep))]
    for label, spec in specs:
        t0 = time.perf_counter()
        obj, _ = quantize_state_dict(raw, spec)
        blob, _ = pack(obj, spec.compressor)
        export_s = time.perf_counter() - t0
        model.load_state_dict(dequantize_state_dict(unpack(blob)))
        after = score()
        rows.append({"export": label, "bytes": len(blob), "bpb_before": before,
                     "bpb_after": after, "gap": after - before, "export_s": export_s})
    model.load_state_dict(raw)
    return rows, model, val, tables, config


def eval_throughput(model, val, tables, config) -> list[dict]:
    rows = []
    window = config.train_seq_len
    for mode, stride in (("standard", None), ("sliding", 256), ("sliding", 64)):
        t0 = time.perf_counter()
        if mode == "standard":
            result = evaluate(model, val, tables, seq_len=window, local_batch_tokens=8192,
                              rank=0, world_size=1, device=torch.device("cpu"))
        else:
            result = evaluate_sliding(model, val, tables, window=window, stride=stride,
                                      batch_seqs=16, rank=0, world_size=1,
                                      device=torch.device("cpu"))
        elapsed = time.perf_counter() - t0
        rows.append({"mode": mode if stride is None else f"sliding stride {stride}",
                     "tokens": result.tokens, "seconds": elapsed,
                     "tokens_per_s": result.tokens / elapsed, "val_bpb": result.val_bpb})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="train seconds per preset")
    parser.add_argument("--val-tokens", type=int, default=65536)
    parser.add_argument("--work", type=Path, default=Path("/tmp/caddie-mini-golf"))
    parser.add_argument("--record-shape", choices=["scaled", "baseline"], default="scaled")
    args = parser.parse_args()
    record = RECORD if args.record_shape == "scaled" else RECORD_AT_BASELINE_SHAPE
    data_path, tokenizer = prepare_data(args.work, VOCAB)
    data = {"data_path": str(data_path), "tokenizer_path": str(tokenizer)}
    runs = golf(args.work, data, args.budget, args.val_tokens, record)

    mini_params = sum(p.numel() for p in build_model(
        ModelShape.from_config(config_from_dict(runs["baseline"]["config"])),
        torch.device("cpu")).parameters())
    cap = round(REAL_CAP * mini_params / REAL_BASELINE_PARAMS)
    print(f"\nsize cap (model bytes): {cap:,} = 16,000,000 x {mini_params:,} / 17,059,912")
    print(f"{'preset':9} {'val_bpb':>8} {'pre-quant':>9} {'model bytes':>11} {'fits':>4} "
          f"{'steps':>6} {'tok/s':>7} {'train s':>7} {'eval s':>6} score")
    for name, r in runs.items():
        tokens_per_s = r["steps"] * r["config"]["train_batch_tokens"] / r["train_time_s"]
        print(f"{name:9} {r['val_bpb']:8.4f} {r['pre_quant_val_bpb']:9.4f} "
              f"{r['model_bytes']:11,} {'yes' if r['model_bytes'] <= cap else 'NO':>4} "
              f"{r['steps']:6d} {tokens_per_s:7.0f} {r['train_time_s']:7.1f} "
              f"{r['eval_time_s']:6.1f} {r['score_tag']}")
    delta = runs["baseline"]["val_bpb"] - runs["record"]["val_bpb"]
    print(f"record - baseline: {-delta:+.4f} bpb")

    rows, model, val, tables, config = quant_comparison(
        args.work / "record", runs["record"], args.val_tokens)
    print("\nsame trained weights (record run, after EMA), standard eval:")
    print(f"{'export':34} {'bytes':>9} {'bpb before':>10} {'after':>7} {'gap':>8} {'export s':>8}")
    for row in rows:
        print(f"{row['export']:34} {row['bytes']:9,} {row['bpb_before']:10.4f} "
              f"{row['bpb_after']:7.4f} {row['gap']:+8.4f} {row['export_s']:8.2f}")
    print("\nevaluation throughput (record run's unquantized weights, window "
          f"{config.train_seq_len}):")
    for row in eval_throughput(model, val, tables, config):
        print(f"{row['mode']:18} {row['tokens']:7d} tokens {row['seconds']:6.1f}s "
              f"{row['tokens_per_s']:8.0f} tokens/s  val_bpb {row['val_bpb']:.4f}")


if __name__ == "__main__":
    main()
