"""Trainer presets and config overrides, checked against `trainer/schema.json`.

Format: {"version", "fields": {name: {type, default, help, min?, max?, choices?}},
"derived": {name: expression}, "rules": [{id, fields, check, message}],
"presets": {name: {field: value}}}. The rules are the trainer's cross-field checks,
evaluated by the trainer's own evaluator in the torch-free `trainer.config` (one of the
shared trainer modules the server may import, docs/architecture.md), so a config the
trainer would refuse is refused at submit time.
"""

import json
import math
from functools import lru_cache
from typing import Any

from trainer import config as trainer_config

SCHEMA_PATH = trainer_config.SCHEMA_PATH
# Set by Caddie for every run: seeds go in the experiment's `seeds`.
RESERVED_FIELDS = {
    "seed": "set seeds in the experiment's `seeds`, not in config",
    "run_id": "set by Caddie for every run",
}
MAX_REPORTED_PROBLEMS = 20  # keeps the error message readable for a wildly wrong config
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}


@lru_cache
def load_schema() -> dict[str, Any]:
    try:
        return json.loads(SCHEMA_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"trainer schema {SCHEMA_PATH} is unreadable: {exc}") from exc


def preset_names() -> list[str]:
    return sorted(load_schema()["presets"])


def check_preset(name: str) -> str:
    """Return `name` if it is a known preset; ValueError naming the field otherwise."""
    if name not in load_schema()["presets"]:
        raise ValueError(f"preset: unknown preset {name!r}; known: {', '.join(preset_names())}")
    return name


def check_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Return `overrides` if every field is known and its value fits; ValueError otherwise.

    The message lists every problem, each starting with its field (`config.num_layers: ...`).
    """
    fields = load_schema()["fields"]
    errors = []
    for name, value in overrides.items():
        if name in RESERVED_FIELDS:
            errors.append(f"config.{name}: {RESERVED_FIELDS[name]}")
        elif name not in fields:
            errors.append(f"config.{name}: unknown field")
        else:
            problem = field_problem(fields[name], value)
            if problem:
                errors.append(f"config.{name}: {problem}")
    if len(errors) > MAX_REPORTED_PROBLEMS:
        errors[MAX_REPORTED_PROBLEMS:] = [f"and {len(errors) - MAX_REPORTED_PROBLEMS} more"]
    if errors:
        raise ValueError("; ".join(errors))
    return overrides


def check_combination(preset: str, overrides: dict[str, Any]) -> None:
    """Refuse a preset + overrides that breaks a field or a cross-field rule of the schema.

    ValueError lists every problem; a broken rule names the first of its fields that the
    overrides set (else its first field): `config.num_heads: model_dim=100 is not
    divisible by num_heads=8`.
    """
    check_preset(preset)
    check_config(overrides)
    errors = []
    for failure in trainer_config.failed_rules(resolved_config(preset, overrides)):
        rule = failure[0]
        blamed = next((f for f in rule["fields"] if f in overrides), rule["fields"][0])
        errors.append(f"config.{blamed}: {trainer_config.rule_message(failure, _field_name)}")
    if errors:
        raise ValueError("; ".join(errors))


def _field_name(field: str) -> str:
    """A rule message names a field as submitted (`num_heads=8`), not as the trainer's
    environment variable (`NUM_HEADS=8`)."""
    return field


def resolved_config(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every field's value: schema defaults, then the preset, then the overrides."""
    schema = load_schema()
    config = {name: spec["default"] for name, spec in schema["fields"].items()}
    return config | schema["presets"][preset] | overrides


def field_problem(spec: dict[str, Any], value: Any) -> str | None:
    """Why `value` does not fit the field `spec`, or None when it does."""
    kind = spec["type"]
    if not _has_type(kind, value):
        return f"must be {_TYPE_NAMES[kind]}, got {json.dumps(value, default=repr)}"
    if kind == "float" and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if kind == "str" and "\x00" in value:
        return "must not contain NUL characters"
    if "choices" in spec and value not in spec["choices"]:
        return f"must be one of {spec['choices']}, got {json.dumps(value, default=repr)}"
    if "min" in spec and value < spec["min"]:
        return f"must be >= {spec['min']}, got {value}"
    if "max" in spec and value > spec["max"]:
        return f"must be <= {spec['max']}, got {value}"
    return None


def _has_type(kind: str, value: Any) -> bool:
    # bool is a subclass of int in Python; JSON true is never a number here.
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, int | float)
    if kind == "str":
        return isinstance(value, str)
    return False
