"""The resolved training config: schema defaults < preset < run.json < environment.

Torch-free, so the worker and tests can resolve a config without the trainer's heavy
dependencies. Fields, types, ranges and presets are data in `schema.json`; the
environment variable of a field is its name in upper case (NUM_LAYERS, SEED, ...), as
the community scripts read them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer import contract

SCHEMA_PATH = Path(__file__).with_name(contract.SCHEMA)
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field or variable."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The parsed schema.json: {"version", "fields": {...}, "presets": {...}}."""
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    for name, spec in schema["fields"].items():
        if spec.get("type") not in _TYPES:
            raise ConfigError(f"schema field {name!r} has unknown type {spec.get('type')!r}")
    return schema


_SCHEMA = load_schema()
FIELDS: dict[str, dict[str, Any]] = _SCHEMA["fields"]
PRESETS: dict[str, dict[str, Any]] = _SCHEMA["presets"]


def _as_dict(self: Any) -> dict[str, Any]:
    return dataclasses.asdict(self)


# One attribute per schema field, plus the preset the values started from.
Config = dataclasses.make_dataclass(
    "Config",
    [(contract.PRESET_KEY, str)] + [(name, _TYPES[spec["type"]]) for name, spec in FIELDS.items()],
    frozen=True,
    namespace={"as_dict": _as_dict, "__doc__": "The resolved config; one attribute per field."},
)


def env_name(field: str) -> str:
    """The environment variable that overrides `field`."""
    return field.upper()


def load_config(config_path: str | Path | None, env: Mapping[str, str]) -> Any:
    """Resolve the config from run.json (optional) and the environment; raise ConfigError."""
    file_values = _read_run_json(Path(config_path)) if config_path else {}
    preset = file_values.pop(contract.PRESET_KEY, "baseline")
    if not isinstance(preset, str) or preset not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise ConfigError(f"unknown preset {preset!r} in {config_path} (known: {known})")
    values = {name: spec["default"] for name, spec in FIELDS.items()}
    for source, layer in (
        (f"preset {preset!r}", PRESETS[preset]),
        (str(config_path), file_values),
    ):
        for key, raw in layer.items():
            if key not in FIELDS:
                raise ConfigError(f"unknown key {key!r} in {source}")
            values[key] = _from_json(key, raw, source)
    for name in FIELDS:
        var = env_name(name)
        if var in env:
            values[name] = _from_env(name, var, env[var])
    for name, value in values.items():
        label = env_name(name) if env_name(name) in env else name
        _check_range(name, label, value)
    config = Config(preset=preset, **values)
    _check_shapes(config)
    return config


def config_from_dict(values: Mapping[str, Any]) -> Any:
    """Rebuild a Config from `as_dict()` output (e.g. a results.json); unknown keys fail."""
    values = dict(values)
    preset = values.pop(contract.PRESET_KEY, "baseline")
    merged = {name: spec["default"] for name, spec in FIELDS.items()}
    for key, raw in values.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown key {key!r} in config")
        merged[key] = _from_json(key, raw, "config")
    return Config(preset=preset, **merged)


def _read_run_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _from_json(name: str, raw: Any, source: str) -> Any:
    kind = FIELDS[name]["type"]
    ok = {
        "int": isinstance(raw, int) and not isinstance(raw, bool),
        "float": isinstance(raw, int | float) and not isinstance(raw, bool),
        "bool": isinstance(raw, bool),
        "str": isinstance(raw, str),
    }[kind]
    if not ok:
        raise ConfigError(f"{name}={raw!r} in {source} is not a {kind}")
    value = float(raw) if kind == "float" else raw
    _check_choices(name, name, value)
    return value


def _from_env(name: str, var: str, raw: str) -> Any:
    kind = FIELDS[name]["type"]
    text = raw.strip()
    try:
        if kind == "int":
            value: Any = int(text)
        elif kind == "float":
            value = float(text)
        elif kind == "bool":
            value = _parse_bool(text)
        else:
            value = raw
    except ValueError:
        article = "an" if kind == "int" else "a"
        raise ConfigError(f"{var}={raw!r} is not {article} {kind}") from None
    _check_choices(name, var, value)
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(text)


def _check_choices(name: str, label: str, value: Any) -> None:
    choices = FIELDS[name].get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{label}={value!r} is not one of {choices}")


def _check_range(name: str, label: str, value: Any) -> None:
    spec = FIELDS[name]
    if "min" in spec and value < spec["min"]:
        raise ConfigError(f"{label}={value!r} is below the minimum {spec['min']}")
    if "max" in spec and value > spec["max"]:
        raise ConfigError(f"{label}={value!r} is above the maximum {spec['max']}")


# Every launch splits a batch over world_size * grad_accum_steps = 8 micro-batches.
MICRO_BATCHES = 8


def _check_shapes(c: Any) -> None:
    """Cross-field rules the model and loaders rely on, named by their variables."""
    if c.model_dim % c.num_heads:
        raise ConfigError(f"MODEL_DIM={c.model_dim} is not divisible by NUM_HEADS={c.num_heads}")
    if c.num_heads % c.num_kv_heads:
        raise ConfigError(
            f"NUM_HEADS={c.num_heads} is not divisible by NUM_KV_HEADS={c.num_kv_heads}"
        )
    if (c.model_dim // c.num_heads) % 2:
        raise ConfigError(f"MODEL_DIM/NUM_HEADS={c.model_dim // c.num_heads} must be even for RoPE")
    local = c.train_batch_tokens // MICRO_BATCHES
    if local < c.train_seq_len or local % c.train_seq_len:
        raise ConfigError(
            f"TRAIN_BATCH_TOKENS={c.train_batch_tokens} must split into {MICRO_BATCHES} "
            f"micro-batches of whole TRAIN_SEQ_LEN={c.train_seq_len} sequences"
        )
    if c.val_batch_size // MICRO_BATCHES < c.train_seq_len:
        raise ConfigError(
            f"VAL_BATCH_SIZE={c.val_batch_size} must give each of {MICRO_BATCHES} "
            f"micro-batches at least TRAIN_SEQ_LEN={c.train_seq_len} tokens"
        )
    if c.logit_softcap <= 0:
        raise ConfigError(f"LOGIT_SOFTCAP={c.logit_softcap} must be positive")
    _check_switches(c)


def _check_switches(c: Any) -> None:
    head_dim = c.model_dim // c.num_heads
    if c.rope_dims % 2 or c.rope_dims > head_dim:
        raise ConfigError(
            f"ROPE_DIMS={c.rope_dims} must be even and at most the head size {head_dim}"
        )
    if c.xsa_last_n > c.num_layers:
        raise ConfigError(f"XSA_LAST_N={c.xsa_last_n} exceeds NUM_LAYERS={c.num_layers}")
    if c.bigram_buckets == 1:
        raise ConfigError("BIGRAM_BUCKETS=1 is too few: use 0 (off) or at least 2")
    window = c.eval_seq_len or c.train_seq_len
    if c.ttt_epochs and c.eval_mode != "sliding":
        raise ConfigError(f"TTT_EPOCHS={c.ttt_epochs} needs EVAL_MODE='sliding'")
    if c.ttt_epochs and c.ttt_chunk_tokens < window:
        raise ConfigError(
            f"TTT_CHUNK_TOKENS={c.ttt_chunk_tokens} is shorter than the window {window}"
        )
    if c.eval_mode == "sliding" and c.eval_stride > window:
        raise ConfigError(f"EVAL_STRIDE={c.eval_stride} exceeds the window EVAL_SEQ_LEN={window}")
