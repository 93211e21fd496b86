"""CPU mini-golf: the `baseline`, `record` and `frontier` presets, scaled down, on the same
corpus and the same wall-clock budget; then, on the record run's trained weights, int8+zlib
versus int6 GPTQ-lite+zstd-22 (and full GPTQ), and the speed of sliding-window evaluation.

All entries train at the same time, one torch thread each, so that other load on the machine
slows them alike. Corpus (`--corpus packages`, the default): 12 MB of docstrings from the
standard library and the installed packages (`cli/corpus.py`), shuffled, each text once:
~4.9 M training tokens, more than twice what the fastest entry reads, so that, as in the real
runs, no entry sees a training token twice (`--corpus stdlib`, the demo's 1.6 MB, repeats
every ~140 steps and rewards memorizing). A 1024-token SentencePiece model trained on it
serves every entry: the frontier's SP8192 cannot be trained on this corpus, so it keeps
vocab 1024 like the others.

Scaling to the budget. Width 128 (4 heads, 2 KV heads) and 4,096 tokens a step for all. The
baseline is 4x128, MLP 2x, seq 256 (the real 9x512, seq 1024, scaled down). The real record
and frontier spend steps on capacity (11 layers, MLP 3x, seq 2x: about half the baseline's
steps), which pays when the baseline has seen ~420 tokens per parameter; in three CPU minutes
it has seen ~2, and the record at those ratios (5x128, MLP 3x, seq 512) loses to it. So the
budget-scaled record and frontier take the baseline's shape and sequence length and keep
every switch that costs few steps; per-layer switches keep their share of the layers
(`--record-shape ratios` runs the record at the real ratios instead). Other scaled rules:
- the fp16 tied embedding only while the embedding is at most FP16_EMBED_MAX_SHARE of the
  parameters (real record: 2%; here 21%, where fp16 would cost 150 KB of a 555 KB cap), so
  here it is int6 like the other matrices;
- step-counted settings (momentum warm-up, EMA horizon, warmdown where it is in steps) keep
  each preset's fraction of its real run's steps, scaled to the steps a 20 s probe predicts;
- the frontier's GPTQ reserve keeps its share of the budget (8 s of 600), its test-time
  training chunk its ~1/1900 share of the validation tokens (at least one eval window).
Size cap: 16,000,000 bytes scaled by the mini baseline's share of the real baseline's
17,059,912 parameters, on model bytes (the code is the same for all). Tensors over 4,096
elements are quantized (QUANT_KEEP_FLOAT_MAX; the real 65,536 scaled the same way).

  .venv/bin/python bench/mini_golf.py [--budget 180] [--val-tokens 65536]
                                      [--record-shape budget|ratios] [--no-frontier]
                                      [--corpus packages|stdlib] [--seeds 1337,1338]
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

from cli.corpus import prepare_dataset, write_large_corpus  # noqa: E402
from cli.demo import prepare_data  # noqa: E402
from trainer import contract  # noqa: E402
from trainer.config import config_from_dict, load_config  # noqa: E402
from trainer.data import (  # noqa: E402
    TRAIN_PATTERN,
    VAL_PATTERN,
    DistributedTokenLoader,
    find_shards,
    load_validation_tokens,
)
from trainer.evaluate import (  # noqa: E402
    build_byte_tables,
    evaluate,
    evaluate_sliding,
    load_tokenizer,
)
from trainer.gptq import collect_hessians  # noqa: E402
from trainer.model import ModelShape, build_model  # noqa: E402
from trainer.quantize import (  # noqa: E402
    QuantSpec,
    dequantize_state_dict,
    pack,
    quantize_state_dict,
    read_artifact,
    unpack,
)

VOCAB = 1024
REAL_BASELINE_PARAMS = 17_059_912
REAL_CAP = 16_000_000
REAL_BUDGET_S = 600.0
REAL_VAL_TOKENS = 62_021_632  # the fineweb validation split the real runs score
# The real export quantizes tensors over 65,536 elements, a quarter of a 512x512 matrix;
# a quarter of a 128x128 one keeps that rule at this width (else every block matrix
# would be stored as fp16).
KEEP_FLOAT_MAX = 4096
# The real record's tied embedding is 1024x512 of ~27 M parameters (2%); fp16 for it is
# worth its bytes only while it stays that small a share.
FP16_EMBED_MAX_SHARE = 0.05
SMALL = {"model_dim": 128, "num_heads": 4, "num_kv_heads": 2, "vocab_size": VOCAB,
         "quant_keep_float_max": KEEP_FLOAT_MAX}
SHAPE = {"num_layers": 4, "mlp_mult": 2, "train_seq_len": 256, "train_batch_tokens": 4096}
BASELINE = {**SMALL, **SHAPE, "preset": "baseline"}
# Record switches scaled by width (BigramHash 2048x128 -> 512x32, partial RoPE 16/64 of the
# head -> 8/32) and by depth (XSA on the last 4 of 11 layers -> 2 of 4).
RECORD = {**SMALL, **SHAPE, "preset": "record", "xsa_last_n": 2, "rope_dims": 8,
          "bigram_buckets": 512, "bigram_dim": 32, "eval_batch_seqs": 16}
# --record-shape ratios: the real record's ratios to the baseline (11/9 of the layers,
# MLP 3x, 2x the sequence), which cost it ~40% of its steps here.
RECORD_AT_RATIOS = {**RECORD, "num_layers": 5, "mlp_mult": 3, "train_seq_len": 512}
# Frontier: the record's scaling plus XSA on every layer, the loop over layers 3-5 of 11
# (two extra passes) -> layer 1 of 4, parallel residuals on the last 3 of 11 -> 1 of 4.
FRONTIER = {**RECORD, "preset": "frontier", "xsa_last_n": 4, "recur_start": 1,
            "recur_layers": 1, "parallel_last_n": 1}
# Each preset's step-counted settings as fractions of its real run's steps (baseline:
# 13,780 steps; record: ~7,100; frontier: assumed the record's, its warmdown is already a
# fraction of the budget).
FRACTIONS = {
    "baseline": {"warmdown": 1200 / 13780, "momentum_warmup": 500 / 13780},
    "record": {"warmdown": 3500 / 7100, "momentum_warmup": 1500 / 7100, "ema_horizon": 333 / 7100},
    "frontier": {"warmdown": 0.72, "momentum_warmup": 1500 / 7100,
                 "ema_horizon": 1 / (1 - 0.9965) / 7100},
}
# The packages' corpus: 12 MB of docstrings, ~4.9 M tokens, more than twice what the fastest
# entry reads in the budget on an idle core, so no entry trains on a token twice (the real
# runs never do); 400 documents (~98 K tokens) held out for validation.
GOLF_CORPUS_BYTES = 12_000_000
GOLF_VAL_DOCS = 400
COMMON = {"warmup_steps": 0, "val_loss_every": 0, "train_log_every": 50, "iterations": 1_000_000,
          "seed": 1337}


def prepare_golf_data(work: Path) -> tuple[Path, Path]:
    """Build (once) the packages' corpus, its tokenizer and shards; (data_path, tokenizer)."""
    return prepare_dataset(work, f"golf_sp{VOCAB}",
                           lambda: write_large_corpus(work / "golf_corpus", GOLF_CORPUS_BYTES),
                           VOCAB, val_docs=GOLF_VAL_DOCS)


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


def resolved(values: dict[str, Any], work: Path) -> Any:
    """The trainer's config for run.json `values` (preset, then the overrides)."""
    path = work / "resolve.json"
    path.write_text(json.dumps(values))
    return load_config(path, {})


def parameter_count(config: Any) -> int:
    model = build_model(ModelShape.from_config(config), torch.device("cpu"))
    return sum(p.numel() for p in model.parameters())


def embedding_rule(values: dict[str, Any], work: Path) -> dict[str, Any]:
    """`fp16_embed` kept only while the tied embedding is a small share of the parameters."""
    config = resolved(values, work)
    if not config.fp16_embed:
        return values
    share = config.vocab_size * config.model_dim / parameter_count(config)
    keep = share <= FP16_EMBED_MAX_SHARE
    print(f"{values['preset']}: embedding {share:.0%} of parameters, "
          f"fp16 embedding {'kept' if keep else 'off (quantized)'}", flush=True)
    return {**values, "fp16_embed": keep}


def budget_rules(values: dict[str, Any], budget: float, val_tokens: int) -> dict[str, Any]:
    """The frontier's GPTQ reserve and test-time-training chunk, scaled to this run."""
    if values["preset"] != "frontier":
        return values
    chunk = round(val_tokens * 32768 / REAL_VAL_TOKENS)
    return {**values, "gptq_reserve_s": budget * 8.0 / REAL_BUDGET_S,
            "ttt_chunk_tokens": max(values["train_seq_len"], chunk)}


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


def golf(work: Path, entries: dict[str, dict[str, Any]], budget: float) -> dict[str, Any]:
    """Probe each entry's step time for 20 s, then train all for `budget` seconds."""
    probes = {name: ({**base, "max_wallclock_seconds": 20.0, "eval_mode": "standard",
                      "ema_decay": 0.0, "train_log_every": 1, "val_max_tokens": 4096,
                      "ttt_epochs": 0, "gptq": False},
                     work / f"{name}_probe") for name, base in entries.items()}
    train_side_by_side(probes)
    jobs = {}
    for name, base in entries.items():
        seconds = step_seconds(work / f"{name}_probe")
        plan = int(budget / seconds)
        print(f"{name}: probe {seconds:.2f}s a step, planning for ~{plan} steps", flush=True)
        values = {**scaled(base["preset"], base, plan), "max_wallclock_seconds": budget,
                  "save_raw_model": True}
        jobs[name] = (values, work / name)
    return train_side_by_side(jobs)


def calibration_hessians(model, config) -> dict[str, torch.Tensor]:
    """GPTQ's Hessians from the training stream, as the trainer gathers them after training."""
    loader = DistributedTokenLoader(find_shards(config.data_path, TRAIN_PATTERN), 0, 1,
                                    torch.device("cpu"))
    batches = (loader.next_batch(config.train_batch_tokens, config.train_seq_len, 8)
               for _ in range(config.gptq_calibration_batches))
    with torch.no_grad():
        return collect_hessians(model, batches, lambda x, y: model(x, y))


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
    t0 = time.perf_counter()
    hessians = calibration_hessians(model, config)
    hessian_s = time.perf_counter() - t0
    rows = []
    keep = KEEP_FLOAT_MAX
    specs = [("int8+zlib (baseline)", QuantSpec(8, False, False, "zlib", keep), None),
             ("int6+zstd-22 plain per-row", QuantSpec(6, False, False, "zstd", keep), None),
             ("int6 GPTQ-lite+zstd-22", QuantSpec(6, True, False, "zstd", keep), None),
             ("int6 full GPTQ+zstd-22", QuantSpec(6, True, False, "zstd", keep, True), hessians),
             ("int6 SDClip 12.85+zstd-22", QuantSpec(6, False, False, "zstd", keep,
                                                     sdclip_k=12.85), None),
             ("int6 SDClip 12.85, full GPTQ", QuantSpec(6, False, False, "zstd", keep, True,
                                                        sdclip_k=12.85), hessians),
             ("int6 GPTQ-lite+zstd-22, fp16 emb", QuantSpec(6, True, True, "zstd", keep), None),
             ("int6 GPTQ-lite+lzma-9e", QuantSpec(6, True, False, "lzma", keep), None),
             ("int5 GPTQ-lite+zstd-22", QuantSpec(5, True, False, "zstd", keep), None)]
    for label, spec, spec_hessians in specs:
        t0 = time.perf_counter()
        obj, _ = quantize_state_dict(raw, spec, spec_hessians)
        blob, _ = pack(obj, spec.compressor)
        export_s = time.perf_counter() - t0 + (hessian_s if spec_hessians else 0.0)
        model.load_state_dict(dequantize_state_dict(unpack(blob)))
        after = score()
        rows.append({"export": label, "bytes": len(blob), "bpb_before": before,
                     "bpb_after": after, "gap": after - before, "export_s": export_s})
    model.load_state_dict(raw)
    return rows, model, val, tables, config


def sliding_without_ttt(run_dir: Path, results: dict[str, Any], val, tables) -> float:
    """The artifact's post-round-trip bpb by sliding windows alone (its own stride)."""
    config = config_from_dict(results["config"])
    obj = read_artifact(run_dir / results["artifact_file"])
    model = build_model(ModelShape(**obj["model"]), torch.device("cpu"))
    model.load_state_dict(dequantize_state_dict(obj))
    return evaluate_sliding(model, val, tables, window=config.train_seq_len,
                            stride=config.eval_stride, batch_seqs=config.eval_batch_seqs,
                            rank=0, world_size=1, device=torch.device("cpu")).val_bpb


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


def entries_for(args: argparse.Namespace, data: dict[str, str]) -> dict[str, dict[str, Any]]:
    record = RECORD if args.record_shape == "budget" else RECORD_AT_RATIOS
    shapes = {"baseline": BASELINE, "record": record}
    if not args.no_frontier:
        shapes["frontier"] = FRONTIER
    entries = {}
    for name, shape in shapes.items():
        values = {**shape, **COMMON, **data, "val_max_tokens": args.val_tokens}
        values = budget_rules(embedding_rule(values, args.work), args.budget, args.val_tokens)
        entries[name] = values
    return entries


def print_runs(runs: dict[str, Any], cap: int) -> None:
    """One line per entry, then each entry's lead over the baseline."""
    print(f"{'preset':9} {'val_bpb':>8} {'pre-quant':>9} {'model bytes':>11} {'fits':>4} "
          f"{'steps':>6} {'ms/step':>7} {'tok/s':>7} {'train s':>7} {'eval s':>6} score")
    for name, r in runs.items():
        tokens_per_s = r["steps"] * r["config"]["train_batch_tokens"] / r["train_time_s"]
        print(f"{name:9} {r['val_bpb']:8.4f} {r['pre_quant_val_bpb']:9.4f} "
              f"{r['model_bytes']:11,} {'yes' if r['model_bytes'] <= cap else 'NO':>4} "
              f"{r['steps']:6d} {1000 * r['train_time_s'] / r['steps']:7.0f} "
              f"{tokens_per_s:7.0f} {r['train_time_s']:7.1f} {r['eval_time_s']:6.1f} "
              f"{r['score_tag']}")
    for name in runs:
        if name != "baseline":
            delta = runs[name]["val_bpb"] - runs["baseline"]["val_bpb"]
            print(f"{name} - baseline: {delta:+.4f} bpb")


def print_exports(run_dir: Path, results: dict[str, Any], val_tokens: int):
    """The export table and the evaluation throughput, on one record run's weights."""
    rows, model, val, tables, config = quant_comparison(run_dir, results, val_tokens)
    print(f"\nsame trained weights ({run_dir.parent.name} record run, after EMA), standard eval:")
    print(f"{'export':34} {'bytes':>9} {'bpb before':>10} {'after':>7} {'gap':>8} {'export s':>8}")
    for row in rows:
        print(f"{row['export']:34} {row['bytes']:9,} {row['bpb_before']:10.4f} "
              f"{row['bpb_after']:7.4f} {row['gap']:+8.4f} {row['export_s']:8.2f}")
    print("\nevaluation throughput (record run's unquantized weights, window "
          f"{config.train_seq_len}):")
    for row in eval_throughput(model, val, tables, config):
        print(f"{row['mode']:18} {row['tokens']:7d} tokens {row['seconds']:6.1f}s "
              f"{row['tokens_per_s']:8.0f} tokens/s  val_bpb {row['val_bpb']:.4f}")
    return val, tables


def print_leads(rounds: dict[int, dict[str, Any]]) -> None:
    """Each entry's lead over the baseline, averaged over the seeds."""
    print(f"\nover {len(rounds)} seed(s), val_bpb minus the baseline's:")
    for name in next(iter(rounds.values())):
        if name != "baseline":
            leads = [r[name]["val_bpb"] - r["baseline"]["val_bpb"] for r in rounds.values()]
            print(f"{name:9} mean {sum(leads) / len(leads):+.4f}  per seed "
                  + " ".join(f"{lead:+.4f}" for lead in leads))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="train seconds per preset")
    parser.add_argument("--val-tokens", type=int, default=65536)
    parser.add_argument("--work", type=Path, default=Path("/tmp/caddie-mini-golf"))
    parser.add_argument("--record-shape", choices=["budget", "ratios"], default="budget")
    parser.add_argument("--no-frontier", action="store_true")
    parser.add_argument("--corpus", choices=["packages", "stdlib"], default="packages",
                        help="packages: 12 MB, never repeated; stdlib: the demo's 1.6 MB")
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")],
                        default=[1337, 1338], help="one round a seed, e.g. 1337,1338")
    args = parser.parse_args()
    if args.corpus == "packages":
        data_path, tokenizer = prepare_golf_data(args.work)
    else:
        data_path, tokenizer = prepare_data(args.work, VOCAB)
    data = {"data_path": str(data_path), "tokenizer_path": str(tokenizer)}
    entries = entries_for(args, data)
    mini_params = parameter_count(resolved(entries["baseline"], args.work))
    cap = round(REAL_CAP * mini_params / REAL_BASELINE_PARAMS)
    rounds = {}
    for seed in args.seeds:
        print(f"\nseed {seed}, load average {load_average()}", flush=True)
        seeded = {name: {**values, "seed": seed} for name, values in entries.items()}
        rounds[seed] = runs = golf(args.work / f"seed{seed}", seeded, args.budget)
        print(f"\nseed {seed}; size cap (model bytes): {cap:,} = 16,000,000 x {mini_params:,} "
              f"/ 17,059,912; load average {load_average()}")
        print_runs(runs, cap)
    first = args.work / f"seed{args.seeds[0]}"
    val, tables = print_exports(first / "record", rounds[args.seeds[0]]["record"], args.val_tokens)
    for seed, runs in rounds.items():
        if "frontier" in runs:
            bpb = sliding_without_ttt(args.work / f"seed{seed}" / "frontier", runs["frontier"],
                                      val, tables)
            print(f"seed {seed}: frontier artifact, sliding windows without test-time "
                  f"training: {bpb:.4f}")
    print_leads(rounds)
    print(f"load average: {load_average()}")


if __name__ == "__main__":
    main()
