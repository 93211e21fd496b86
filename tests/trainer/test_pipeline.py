"""End to end on CPU: data build → `python -m trainer train` → `python -m trainer eval`."""

from __future__ import annotations

import hashlib
import json
import math
import re

import sentencepiece as spm

from trainer import contract
from trainer.data import find_shards, read_shard

from .conftest import REPO, TINY_STEPS, VAL_DOCS, VOCAB, Dataset, TrainedRun, trainer_cmd

# --- data build -------------------------------------------------------------------------


def test_data_build_writes_the_challenge_layout(dataset: Dataset):
    assert (
        dataset.tokenizer == dataset.tokenizer.parents[1] / "tokenizers" / f"custom_sp{VOCAB}.model"
    )
    assert dataset.data_path == dataset.tokenizer.parents[1] / "datasets" / f"custom_sp{VOCAB}"
    sp = spm.SentencePieceProcessor(model_file=str(dataset.tokenizer))
    assert sp.vocab_size() == VOCAB
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sum(sp.is_byte(i) for i in range(VOCAB)) == 256  # byte fallback
    val = read_shard(find_shards(dataset.data_path, "fineweb_val_*.bin")[0])
    train = read_shard(find_shards(dataset.data_path, "fineweb_train_*.bin")[0])
    # One BOS per document, at the start of each; no EOS anywhere.
    assert val[0] == 1 and train[0] == 1
    assert int((val == 1).sum()) == VAL_DOCS
    assert int((train == 1).sum()) == len(dataset.docs) - VAL_DOCS
    assert not (val == 2).any() and not (train == 2).any()
    first_doc = val[1 : int(((val == 1).nonzero()[0])[1])].tolist()
    assert first_doc == sp.encode(dataset.docs[0])


def test_data_build_with_an_existing_tokenizer_reuses_it(dataset: Dataset, tmp_path):
    jsonl = tmp_path / "text" / "docs.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in dataset.docs[:4]) + "\n")
    done = trainer_cmd(
        "data",
        "build",
        "--text",
        str(jsonl.parent),
        "--out",
        str(tmp_path / "o"),
        "--tokenizer",
        str(dataset.tokenizer),
        "--val-docs",
        "1",
        "--name",
        "mine",
    )
    assert done.returncode == 0, done.stderr
    tokenizer, data_path = done.stdout.split()
    assert tokenizer.endswith("tokenizers/mine.model") and data_path.endswith("datasets/mine")
    assert open(tokenizer, "rb").read() == dataset.tokenizer.read_bytes()
    val = read_shard(find_shards(data_path, "fineweb_val_*.bin")[0])
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    assert val.tolist() == [1, *sp.encode(dataset.docs[0])]


def test_data_build_errors_name_the_missing_path(tmp_path):
    done = trainer_cmd("data", "build", "--text", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert done.returncode == 2
    assert f"text folder not found: {tmp_path / 'nowhere'}" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("hello world")
    (tmp_path / "t" / "b.txt").write_text("goodbye world")
    done = trainer_cmd(
        "data",
        "build",
        "--text",
        str(tmp_path / "t"),
        "--out",
        str(tmp_path),
        "--tokenizer",
        str(tmp_path / "missing.model"),
    )
    assert done.returncode == 2
    assert f"tokenizer not found: {tmp_path / 'missing.model'}" in done.stderr


# --- train --------------------------------------------------------------------------------


def test_tiny_run_writes_every_output_with_sane_values(tiny_run: TrainedRun):
    r = tiny_run.results
    assert set(contract.RESULT_KEYS) <= set(r)
    assert r["steps"] == TINY_STEPS and r["seed"] == 7
    assert r["score_tag"] == "final_int8_zlib_roundtrip_exact"
    # Trained: well below the uniform loss, and int8 costs little.
    assert r["val_loss"] < math.log(VOCAB) - 1.0
    assert abs(r["val_bpb"] - r["pre_quant_val_bpb"]) < 0.05
    assert r["val_bpb"] == (r["val_loss"] / math.log(2)) * (r["val_tokens"] / r["val_bytes"])
    for key in ("train_time_s", "artifact_time_s", "eval_time_s"):
        assert 0 < r[key] < 120, key
    artifact = tiny_run.out / contract.ARTIFACT
    assert r["artifact_file"] == contract.ARTIFACT
    assert r["model_bytes"] == artifact.stat().st_size
    assert r["artifact_sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert r["hardware"] == {
        "device": "cpu",
        "gpu_name": None,
        "gpu_count": 0,
        "world_size": 1,
        "nvidia_smi": None,
    }
    assert r["config"]["preset"] == "tiny" and r["config"]["iterations"] == TINY_STEPS
    assert set(r["versions"]) == {"python", "torch", "numpy", "sentencepiece"}


def test_code_bytes_are_the_trainer_package_files(tiny_run: TrainedRun):
    r = tiny_run.results
    expected = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "trainer").glob("*.py"))
    expected = sorted([*expected, "trainer/schema.json"], key=lambda p: p.split("/")[-1])
    assert r["code_files"] == expected
    blobs = [(REPO / p).read_bytes() for p in r["code_files"]]
    assert r["code_bytes"] == sum(len(b) for b in blobs)
    listing = "".join(f"{hashlib.sha256(b).hexdigest()}  {p}\n"
                      for p, b in sorted(zip(r["code_files"], blobs, strict=True)))
    assert r["code_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert r["bytes_total"] == r["code_bytes"] + r["model_bytes"]


def test_train_log_has_the_community_lines(tiny_run: TrainedRun):
    log = (tiny_run.out / contract.TRAIN_LOG).read_text()
    r = tiny_run.results
    assert log.startswith("run_id:")
    assert re.search(r"^config:\{.*\"seed\": 7", log, re.M)
    assert re.search(r"^python:\S+ torch:\S+ numpy:\S+ sentencepiece:\S+$", log, re.M)
    assert re.search(r"^device:cpu ", log, re.M)
    steps = re.findall(
        rf"^step:(\d+)/{TINY_STEPS} train_loss:\d+\.\d{{4}} train_time:\d+ms "
        r"step_avg:\d+\.\d{2}ms$",
        log,
        re.M,
    )
    assert steps[:10] == [str(i) for i in range(1, 11)] and steps[-1] == str(TINY_STEPS)
    assert re.search(
        rf"^step:{TINY_STEPS}/{TINY_STEPS} val_loss:\d+\.\d{{4}} val_bpb:\d+\.\d{{4}}", log, re.M
    )
    # The baseline's five size lines, in its order: the raw weights first, then the artifact.
    sizes = re.search(
        r"^Serialized model: (\d+) bytes\nCode size: (\d+) bytes\n"
        r"Total submission size: (\d+) bytes\n"
        r"Serialized model int8\+zlib: (\d+) bytes \(payload:\d+ raw_torch:\d+ "
        r"payload_ratio:\d+\.\d\dx\)\nTotal submission size int8\+zlib: (\d+) bytes$",
        log,
        re.M,
    )
    raw, code, raw_total, model, total = (int(n) for n in sizes.groups())
    assert (code, model, total) == (r["code_bytes"], r["model_bytes"], r["bytes_total"])
    assert raw_total == raw + code and raw > model
    assert not (tiny_run.out / contract.RAW_MODEL).exists()  # only with SAVE_RAW_MODEL
    assert re.search(
        r"^final_int8_zlib_roundtrip val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} "
        r"eval_time:\d+ms$",
        log,
        re.M,
    )
    exact = (
        f"final_int8_zlib_roundtrip_exact val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f}"
    )
    assert log.rstrip().endswith(exact)
    assert "stopping_early" not in log
    assert exact in tiny_run.stdout


def test_metrics_jsonl_holds_the_contract_events(tiny_run: TrainedRun):
    lines = (tiny_run.out / contract.METRICS).read_text().splitlines()
    events = [json.loads(line) for line in lines]
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e["event"], []).append(e)
    steps = by_kind[contract.EVENT_TRAIN_STEP]
    assert steps[-1]["step"] == TINY_STEPS
    assert {"train_loss", "train_time_ms", "step_avg_ms"} <= set(steps[0])
    assert by_kind[contract.EVENT_VAL][-1]["val_bpb"] == tiny_run.results["pre_quant_val_bpb"]
    final = by_kind[contract.EVENT_FINAL][0]
    assert final["tag"] == "final_int8_zlib_roundtrip_exact"
    assert final["val_bpb"] == tiny_run.results["val_bpb"]
    phases = [(e["phase"], e["state"]) for e in by_kind[contract.EVENT_PHASE]]
    order = ["setup", "warmup", "train", "artifact", "eval"]
    assert phases == [(p, s) for p in order for s in ("start", "end")]
    results = by_kind[contract.EVENT_RESULTS]
    assert len(results) == 1 and events[-1] is results[0]
    assert {k: v for k, v in results[0].items() if k not in ("event", "time")} == tiny_run.results
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_eval_in_a_fresh_process_reproduces_the_score_exactly(tiny_run: TrainedRun):
    done = trainer_cmd("eval", "--artifact", str(tiny_run.out / contract.ARTIFACT), "--json")
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    assert scored["val_loss"] == tiny_run.results["val_loss"]
    assert scored["val_bpb"] == tiny_run.results["val_bpb"]
    assert scored["val_tokens"] == tiny_run.results["val_tokens"]
    assert scored["artifact_sha256"] == tiny_run.results["artifact_sha256"]


def test_eval_errors_are_one_line(tiny_run: TrainedRun, tmp_path):
    missing = tmp_path / "none.ptz"
    done = trainer_cmd("eval", "--artifact", str(missing))
    assert done.returncode == 2 and done.stderr.strip() == f"error: artifact not found: {missing}"
    done = trainer_cmd(
        "eval", "--artifact", str(tiny_run.out / contract.ARTIFACT), "--data-path", str(tmp_path)
    )
    assert done.returncode == 2 and "no shards matching fineweb_val_*.bin" in done.stderr


def test_bad_config_exits_2_naming_the_variable(tiny_run: TrainedRun, tmp_path):
    done = tiny_run.again(tmp_path, env={"NUM_LAYERS": "abc"})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: NUM_LAYERS='abc' is not an int"
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"preset": "tiny", "learning_rate": 1}))
    done = trainer_cmd("train", "--config", str(bad), "--out", str(tmp_path))
    assert done.returncode == 2 and "unknown key 'learning_rate'" in done.stderr
    assert not (tmp_path / contract.RESULTS).exists()


def test_missing_data_exits_2_naming_the_path(tiny_run: TrainedRun, tmp_path):
    done = tiny_run.again(tmp_path, env={"DATA_PATH": str(tmp_path / "void")})
    assert done.returncode == 2
    assert f"DATA_PATH='{tmp_path / 'void'}' is not a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_wallclock_cap_stops_training_early(dataset: Dataset, tiny_run: TrainedRun, tmp_path):
    env = {
        "ITERATIONS": "100000",
        "MAX_WALLCLOCK_SECONDS": "1.0",
        "WARMUP_STEPS": "0",
        "VAL_MAX_TOKENS": "2048",
    }
    done = tiny_run.again(tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / contract.RESULTS).read_text())
    log = (tmp_path / contract.TRAIN_LOG).read_text()
    match = re.search(
        r"^stopping_early: wallclock_cap train_time:(\d+)ms step:(\d+)/100000$", log, re.M
    )
    assert match and int(match.group(2)) == results["steps"] < 100000
    assert results["train_time_s"] >= 1.0
    assert abs(results["train_time_s"] * 1000 - int(match.group(1))) < 1.0
    assert results["val_tokens"] == 2048  # VAL_MAX_TOKENS honoured, in whole sequences
