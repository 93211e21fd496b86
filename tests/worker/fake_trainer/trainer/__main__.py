"""`python -m trainer train --config run.json --out DIR`, faking a training run.

The run.json key `fake_mode` picks the behaviour: "ok" (default) writes every file a real
run writes; "crash" logs a little and exits with `fake_exit_code`; "sleep" logs one line
and sleeps until killed. `fake_log_lines` sets how many log lines an "ok" run writes, `fake_results` overrides
keys of results.json and `fake_no_artifact` leaves the artifact out.

`python -m trainer data fetch --variant V --train-shards N --out DIR` writes tiny valid shards
of variant V and a tokenizer file where the real fetch puts them, and appends a line to
DIR/fetches, so tests can count how often a pod fetched its data.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def shard(path: Path, tokens: int) -> None:
    header = [20240520, 1, tokens] + [0] * 253  # magic, version, token count; 256 int32 in all
    data = b"".join(v.to_bytes(4, "little") for v in header) + bytes(2 * tokens)
    path.write_bytes(data)


def fetch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trainer data fetch")
    parser.add_argument("--variant", default="sp1024")
    parser.add_argument("--train-shards", type=int, default=1)
    parser.add_argument("--out", default="./data")
    parser.add_argument("--endpoint")
    parser.add_argument("--revision")
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)
    out = Path(args.out)
    folder = out / "datasets" / f"fineweb10B_{args.variant}"
    folder.mkdir(parents=True, exist_ok=True)
    (out / "tokenizers").mkdir(exist_ok=True)
    shard(folder / "fineweb_val_000000.bin", 64)
    for i in range(args.train_shards):
        shard(folder / f"fineweb_train_{i:06d}.bin", 128)
    (out / "tokenizers" / f"fineweb_{args.variant}.model").write_bytes(b"fake tokenizer")
    with open(out / "fetches", "a") as fetches:
        fetches.write(f"{args.variant} {args.train_shards} {args.endpoint or ''}\n")
    print(folder)
    return 0


def main() -> int:
    if sys.argv[1:3] == ["data", "fetch"]:
        return fetch(sys.argv[3:])
    parser = argparse.ArgumentParser(prog="trainer")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    out = Path(args.out)
    with open(out / "starts", "a") as starts:  # one line per trainer process ever started
        starts.write(f"{os.getpid()}\n")
    log = open(out / "train.log", "w", encoding="utf-8")
    log.write(f"seed:{config['seed']} run_id:{config['run_id']} preset:{config['preset']} µ-check ✓\n")
    log.write("env_secret:" + os.environ.get("CADDIE_SECRET_PROBE", "absent") + "\n")
    log.write("omp_threads:" + os.environ.get("OMP_NUM_THREADS", "unset") + "\n")
    log.flush()
    mode = config.get("fake_mode", "ok")
    if mode == "crash":
        log.write("step:1/10 train_loss:9.0\nstep:2/10 train_loss:nan\n")
        log.close()
        print("Traceback (most recent call last):\nValueError: loss became nan", file=sys.stderr)
        return int(config.get("fake_exit_code", 3))
    if mode == "sleep":
        print("sleeping", flush=True)
        time.sleep(300)
        return 0
    if mode == "hostile_log":  # what a broken script may print: binary, NUL, CR, a 3 MiB line
        # of 3-byte characters, so that 1 MiB from the line's start falls inside one
        log.flush()
        with open(out / "train.log", "ab") as raw:
            raw.write(b"bad bytes \xff\xfe and a NUL \x00 and a CR \r in one line\n")
            raw.write("€".encode() * (3 * 1024 * 1024 // 3) + b"\n")
        log.seek(0, os.SEEK_END)  # the text handle goes on after the raw bytes
    for step in range(int(config.get("fake_log_lines", 20))):
        log.write(f"step:{step}/1000 train_loss:{5.0 - step * 1e-4:.4f} train_time:{step}ms step_avg:1.00ms\n")
        if step == 5:
            log.flush()
            time.sleep(float(config.get("fake_pause_s", 0.0)))
    artifact = hashlib.sha256(str(config["seed"]).encode()).digest() * 100
    if not config.get("fake_no_artifact"):
        (out / "final_model.int8.ptz").write_bytes(artifact)
    with open(out / "metrics.jsonl", "w") as metrics:
        metrics.write(json.dumps({"event": "final", "val_loss": 2.5, "val_bpb": 1.48}) + "\n")
    results = {
        "val_loss": 2.5, "val_bpb": 1.48, "pre_quant_val_bpb": 1.47, "steps": 1000,
        "train_time_s": 0.5, "eval_time_s": 0.25, "val_tokens": 62_021_632,
        "artifact_file": "final_model.int8.ptz", "artifact_sha256": hashlib.sha256(artifact).hexdigest(),
        "seed": config["seed"], "config": config,
    }
    results.update(config.get("fake_results", {}))
    (out / "results.json").write_text(json.dumps(results))
    log.write("final_int8_zlib_roundtrip_exact val_loss:2.5 val_bpb:1.48\nno newline at the end")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
