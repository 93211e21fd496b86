"""The trainer on a real GPU: step time, tokens/s and peak memory of `baseline`, `record` and
`frontier` at their real shapes and batches, a few dozen steps each, compiled as in a run.

On one GPU gradient accumulation keeps the 8-GPU global batch, so a step does the work of
eight ranks' micro-batches: its time over 8 is comparable with the records' 8xH100 step_avg
(less the all-reduce, which one GPU does not pay). The device machine reaches no network, so
its inputs are made here first and carried there:

  .venv/bin/python bench/gpu_check.py prepare         # writes .gpu/ (ignored by git)
  # on the device machine, carrying .gpu:
  python3 bench/gpu_check.py run --steps 40 --out "$OUT"

`prepare` puts in .gpu/: the mini-golf corpus's shards for the 1024-token tokenizer the bench
trained, the same documents under the official sp8192 tokenizer (from tests/fixtures) for the
frontier, and the wheels the trainer needs that the device's image lacks (zstandard). `run`
trains each preset with no wall-clock cap for `--steps` steps (the loop, warmdown and late QAT
keyed to the steps), exports, scores, and prints one line each; each run's train.log, and
results.json go to `--out`. Its val_bpb after so few steps means only that the path works.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPU_DIR = ROOT / ".gpu"
GOLF_WORK = Path("/tmp/caddie-mini-golf")
SP8192 = ROOT / "tests" / "fixtures" / "tokenizers" / "fineweb_8192_bpe.model"
WHEELS = ["zstandard"]  # importable by the trainer, absent from the device's image
DEVICE_PYTHON = "3.12"
# Each preset's step_avg on 8xH100 in the records (docs/trainer.md, research notes): the naive
# baseline; the March ~1.12 stacks; the April SP8192 stacks with recurrence and TTT.
RECORD_STEP_MS = {"baseline": 43.54, "record": 84.5, "frontier": 121.0}
DATASETS = {"baseline": "golf_sp1024", "record": "golf_sp1024", "frontier": "golf_sp8192"}
PEAK = re.compile(r"peak memory allocated: (\d+) MiB reserved: (\d+) MiB")


def prepare() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.mini_golf import GOLF_VAL_DOCS, prepare_golf_data

    data_path, tokenizer = prepare_golf_data(GOLF_WORK)
    target = GPU_DIR / "data"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(data_path, target / "datasets" / "golf_sp1024")
    (target / "tokenizers").mkdir(parents=True)
    shutil.copy(tokenizer, target / "tokenizers" / "golf_sp1024.model")
    if SP8192.is_file():
        subprocess.run([sys.executable, "-m", "trainer", "data", "build", "--text",
                        str(GOLF_WORK / "golf_corpus"), "--tokenizer", str(SP8192),
                        "--out", str(target), "--name", "golf_sp8192",
                        "--val-docs", str(GOLF_VAL_DOCS)], check=True, cwd=ROOT)
    else:
        print(f"{SP8192} not found: the frontier will be skipped", flush=True)
    wheels = GPU_DIR / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", f"--python-version={DEVICE_PYTHON}",
                    "--implementation=cp", *platforms, "--platform=manylinux2014_x86_64",
                    "-d", str(wheels), *WHEELS], check=True)
    size = sum(p.stat().st_size for p in GPU_DIR.rglob("*") if p.is_file())
    print(f"{GPU_DIR}: {size / 2**20:.1f} MiB to carry", flush=True)


def ensure_wheels() -> dict[str, str]:
    """The environment for the trainer, with the carried wheels on PYTHONPATH where needed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    missing = [name for name in WHEELS if subprocess.run(
        [sys.executable, "-c", f"import {name}"], capture_output=True).returncode]
    if missing:
        site = Path("/tmp/caddie-site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--target", str(site), *map(str, (GPU_DIR / "wheels").glob("*.whl"))],
                       check=True)
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{site}"
    return env


def run_config(preset: str, steps: int, tiny: bool) -> dict[str, Any]:
    data = GPU_DIR / "data"
    name = DATASETS[preset]
    values: dict[str, Any] = {
        "preset": preset, "iterations": steps, "max_wallclock_seconds": 0,
        "data_path": str(data / "datasets" / name),
        "tokenizer_path": str(data / "tokenizers" / f"{name}.model"),
        "val_loss_every": 0, "train_log_every": 10,
    }
    if preset == "record":
        values["warmdown_iters"] = steps // 2  # late QAT turns on inside the run
    if tiny:  # --tiny: the plumbing on CPU, shapes of a test
        values.update(num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2,
                      train_seq_len=128, train_batch_tokens=8192, val_max_tokens=4096,
                      val_batch_size=8192, warmup_steps=1, eval_stride=64, gptq_reserve_s=1.0,
                      ttt_chunk_tokens=1024, xsa_last_n=2, bigram_buckets=64, bigram_dim=16,
                      rope_dims=8, recur_start=1, recur_layers=1, parallel_last_n=1)
        if preset == "baseline":
            for key in ("xsa_last_n", "bigram_buckets", "bigram_dim", "rope_dims",
                        "recur_start", "recur_layers", "parallel_last_n", "gptq_reserve_s",
                        "ttt_chunk_tokens"):
                values.pop(key)
        elif preset == "record":
            for key in ("recur_start", "recur_layers", "parallel_last_n", "gptq_reserve_s",
                        "ttt_chunk_tokens"):
                values.pop(key)
    return values


def steady_step_ms(run_dir: Path) -> float:
    """ms per step after the first ten (compilation and warm-up land in those)."""
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("event") == "train_step"]
    first = steps[min(10, len(steps) - 2)]
    last = steps[-1]
    return (last["train_time_ms"] - first["train_time_ms"]) / (last["step"] - first["step"])


def run_preset(preset: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    out = args.out / preset
    out.mkdir(parents=True, exist_ok=True)
    config = out / "run.json"
    config.write_text(json.dumps(run_config(preset, args.steps, args.tiny)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.gpus}", "-m", "trainer", "train",
               "--config", str(config), "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "stderr.txt").write_text(done.stdout + done.stderr)
    if done.returncode:
        return {"preset": preset, "error": (done.stdout + done.stderr)[-2000:], "wall_s": wall}
    results = json.loads((out / "results.json").read_text())
    peak = PEAK.search((out / "train.log").read_text())
    step_ms = steady_step_ms(out)
    batch = results["config"]["train_batch_tokens"]
    return {"preset": preset, "steps": results["steps"], "step_ms": step_ms,
            "eight_gpu_ms": step_ms * args.gpus / 8, "tokens_per_s": batch / step_ms * 1000,
            "peak_alloc_mib": int(peak.group(1)) if peak else None,
            "peak_reserved_mib": int(peak.group(2)) if peak else None,
            "val_bpb": results["val_bpb"], "model_bytes": results["model_bytes"],
            "eval_s": results["eval_time_s"], "wall_s": wall}


def report(rows: list[dict[str, Any]], header: bool = True) -> None:
    if header:
        print(f"{'preset':9} {'steps':>5} {'ms/step':>8} {'/8 GPUs':>8} {'record':>7} "
              f"{'tok/s':>10} {'peak MiB':>9} {'val_bpb':>7} {'bytes':>11} {'eval s':>6} "
              f"{'wall s':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:9} FAILED after {r['wall_s']:.0f}s:\n{r['error']}")
            continue
        print(f"{r['preset']:9} {r['steps']:5d} {r['step_ms']:8.1f} {r['eight_gpu_ms']:8.1f} "
              f"{RECORD_STEP_MS[r['preset']]:7.1f} {r['tokens_per_s']:10,.0f} "
              f"{r['peak_alloc_mib'] or 0:9,} {r['val_bpb']:7.4f} {r['model_bytes']:11,} "
              f"{r['eval_s']:6.1f} {r['wall_s']:6.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="write .gpu/ here (data, tokenizers, wheels)")
    run = commands.add_parser("run", help="on the GPU machine")
    run.add_argument("--steps", type=int, default=40)
    run.add_argument("--presets", default="baseline,record,frontier")
    run.add_argument("--gpus", type=int, default=1)
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check")))
    run.add_argument("--tiny", action="store_true", help="test shapes, for the plumbing on CPU")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare()
        return
    import torch

    if not (torch.cuda.is_available() or args.tiny):
        raise SystemExit("no CUDA device: this check is for a GPU machine (--tiny runs on CPU)")
    env = ensure_wheels()
    print(f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}", flush=True)
    rows = []
    for preset in args.presets.split(","):
        if not (GPU_DIR / "data" / "datasets" / DATASETS[preset]).is_dir():
            print(f"{preset}: no {DATASETS[preset]} data in .gpu/, skipped", flush=True)
            continue
        rows.append(run_preset(preset, args, env))
        report(rows[-1:], header=len(rows) == 1)
    print()
    report(rows)
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
