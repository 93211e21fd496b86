"""The contract between the trainer and the worker: files, env vars and JSON keys.

Torch-free on purpose: the worker imports this module to read what the trainer
writes, without installing the trainer's heavy dependencies.
"""

import hashlib

# --- files the trainer writes into its run directory -------------------------------
TRAIN_LOG = "train.log"  # human log with the community's standard lines
METRICS = "metrics.jsonl"  # one JSON object per event, see EVENT_* below
RESULTS = "results.json"  # the final record, see RESULT_KEYS
ARTIFACT = "final_model.int8.ptz"  # compressed quantized model (baseline format)


def artifact_name(bits: int) -> str:
    """The artifact's file name for QUANT_BITS `bits`: final_model.int8.ptz, .int6.ptz, ..."""
    return ARTIFACT if bits == 8 else f"final_model.int{bits}.ptz"


RAW_MODEL = "final_model.pt"  # unquantized exported weights, only with SAVE_RAW_MODEL
SCHEMA = "schema.json"  # config fields and presets, beside this module

# --- how the trainer is launched ---------------------------------------------------
# `python -m trainer train --config run.json --out RUN_DIR` (or under torchrun).
# run.json is {"preset": NAME, FIELD: VALUE, ...}; env vars named like the field in
# upper case (NUM_LAYERS, SEED, ...) override it, as the community scripts expect.
CONFIG_FILE = "run.json"
# The single-file form (`python -m trainer bundle --single-file`) sets this to its own path,
# so the run counts that file's bytes as its code instead of the package's.
BUNDLE_ENV = "TRAINER_BUNDLE"
PRESET_KEY = "preset"

# --- metrics.jsonl events (key "event") --------------------------------------------
EVENT_TRAIN_STEP = "train_step"  # step, train_loss, train_time_ms, step_avg_ms
EVENT_VAL = "val"  # step, val_loss, val_bpb, train_time_ms
EVENT_PHASE = "phase"  # phase, state ("start"|"end"), elapsed_ms
EVENT_FINAL = "final"  # tag, val_loss, val_bpb, eval_time_ms
EVENT_RESULTS = "results"  # written once, same content as results.json

# --- results.json keys --------------------------------------------------------------
RESULT_KEYS = (
    "val_loss",  # nats per token of the scored (dequantized artifact) model
    "val_bpb",  # bits per byte of the scored model
    "score_tag",  # e.g. "final_int8_zlib_roundtrip_exact"
    "pre_quant_val_loss",
    "pre_quant_val_bpb",
    "steps",
    "train_time_s",  # everything that reads training data: the loop (validation excluded)
    # plus GPTQ calibration; results.json also reports gptq_calibration_s on its own
    "artifact_time_s",  # quantize + compress + write
    "eval_time_s",  # scoring the round-tripped artifact
    "code_bytes",
    "model_bytes",
    "bytes_total",
    "artifact_file",  # the artifact's name in the run directory (see artifact_name)
    "artifact_sha256",
    "code_sha256",
    "code_files",  # list of paths (relative to the bundle root) counted as code
    "val_tokens",  # target tokens scored
    "val_bytes",  # UTF-8 bytes of those targets
    "seed",
    "hardware",  # {"device", "gpu_name", "gpu_count", "world_size", "nvidia_smi"}
    "versions",  # {"python", "torch", "numpy", "sentencepiece"}
    "config",  # the full resolved config
)


def code_digest(files: dict[str, bytes]) -> tuple[int, str]:
    """(total bytes, sha256 of a sha256sum-style listing "<sha256>  <path>\\n" sorted by path).

    `files` maps a path relative to the folder holding `trainer/` (e.g. "trainer/model.py")
    to its bytes. The trainer reports this for the code it ran; the worker recomputes it
    from the files it uploaded, so the two can be compared.
    """
    listing = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(files.items()))
    return sum(len(data) for data in files.values()), hashlib.sha256(listing.encode()).hexdigest()
