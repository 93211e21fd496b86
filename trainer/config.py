"""The resolved training config: schema defaults < preset < run.json < environment.

Torch-free, so the worker and tests can resolve a config without the trainer's heavy
dependencies. Fields, types, ranges and presets are data in `schema.json`; the
environment variable of a field is its name in upper case (NUM_LAYERS, SEED, ...), as
the community scripts read them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import operator
import re
from collections.abc import Callable, Mapping
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
    """The parsed schema.json: {"version", "fields", "derived", "rules", "presets"}."""
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    for name, spec in schema["fields"].items():
        if spec.get("type") not in _TYPES:
            raise ConfigError(f"schema field {name!r} has unknown type {spec.get('type')!r}")
    _check_expressions(schema)
    return schema


def _check_expressions(schema: dict[str, Any]) -> None:
    """Every derived name and rule uses only fields and earlier derived names."""
    known = set(schema["fields"])
    for name, expression in schema["derived"].items():
        _check_names(expression, known, f"derived {name!r}")
        known.add(name)
    for rule in schema["rules"]:
        where = f"rule {rule['id']!r}"
        _check_names(rule["check"], known, where)
        used = set(rule["fields"]) | set(re.findall(r"\{(\w+)\}", rule["message"]))
        if used - known:
            raise ConfigError(f"schema {where} names unknown {sorted(used - known)}")


def _check_names(expression: str, known: set[str], where: str) -> None:
    names = {n.id for n in ast.walk(ast.parse(expression, mode="eval")) if isinstance(n, ast.Name)}
    if names - known:
        raise ConfigError(f"schema {where} uses unknown names {sorted(names - known)}")


def _embedded_schema() -> dict[str, Any] | None:
    """The schema the single-file form carries as EMBEDDED_SCHEMA (defined above this code
    there, where no schema.json lies beside the script); None in the package."""
    schema = globals().get("EMBEDDED_SCHEMA")
    if schema is not None:
        _check_expressions(schema)
    return schema


_SCHEMA = _embedded_schema() or load_schema()
FIELDS: dict[str, dict[str, Any]] = _SCHEMA["fields"]
PRESETS: dict[str, dict[str, Any]] = _SCHEMA["presets"]
DERIVED: dict[str, str] = _SCHEMA["derived"]
RULES: list[dict[str, Any]] = _SCHEMA["rules"]


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


def load_config(config_path: str | Path | None, env: Mapping[str, str],
                settings: Mapping[str, Any] | None = None) -> Any:
    """Resolve the config from run.json (optional) and the environment; raise ConfigError.

    `settings` ({"preset": NAME, FIELD: VALUE, ...}) stand in for a run.json when none is
    given: the single-file form's Hyperparameters."""
    if config_path:
        file_values = _read_run_json(Path(config_path))
    else:
        file_values = dict(settings or {})
        config_path = "Hyperparameters" if settings else None
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


# Every launch splits a batch over world_size * grad_accum_steps = 8 micro-batches (the
# schema's derived `micro_batches` says the same to the rules).
MICRO_BATCHES = 8


def _check_shapes(c: Any) -> None:
    """The schema's cross-field rules (the server checks them too, at submit time)."""
    problems = [rule_message(failure, env_name) for failure in failed_rules(c.as_dict())]
    if problems:
        raise ConfigError("; ".join(problems))


# ======================================================================================
# Rules: `schema.json` "rules" are Python-like boolean expressions over the fields and
# the "derived" names. This is their one evaluator: the server imports it to refuse at
# submit time what the trainer would refuse (server/presets.py: check_combination).
# ======================================================================================

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def expression_value(expression: str, names: Mapping[str, Any]) -> Any:
    """The value of a schema expression: constants, names, + - * // %, comparisons,
    and / or / not (with Python's semantics); anything else is refused."""
    return _value(ast.parse(expression, mode="eval").body, names)


def _value(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BoolOp):
        stop_when = isinstance(node.op, ast.Or)  # `or` stops at a true value, `and` at a false
        for item in node.values:
            result = _value(item, names)
            if bool(result) == stop_when:
                return result
        return result
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _value(node.operand, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_value(node.left, names), _value(node.right, names))
    if isinstance(node, ast.Compare):
        left = _value(node.left, names)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _value(right_node, names)
            if type(op) not in _COMPARE or not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ConfigError(f"schema expression uses unsupported syntax: {ast.unparse(node)}")


def rule_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """The field values plus every derived name, computed in the schema's order."""
    names = dict(values)
    for name, expression in DERIVED.items():
        names[name] = expression_value(expression, names)
    return names


def failed_rules(values: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(rule, names) for every rule the field values break, in the schema's order."""
    names = rule_names(values)
    failed = []
    for rule in RULES:
        try:
            ok = bool(expression_value(rule["check"], names))
        except ZeroDivisionError:
            ok = False
        if not ok:
            failed.append((rule, names))
    return failed


def rule_message(failure: tuple[dict[str, Any], dict[str, Any]], label: Callable[[str], str]) -> str:
    """The rule's message with `{field}` as `label(field)=value` (the trainer's env_name:
    `NUM_HEADS=8`; the server's field name: `num_heads=8`) and `{derived}` as its value."""
    rule, names = failure

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        value = repr(names[name])
        return f"{label(name)}={value}" if name in FIELDS else value

    return _PLACEHOLDER.sub(render, rule["message"])
