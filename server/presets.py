"""Trainer presets and config overrides, checked against `trainer/schema.json`.

The schema is read as a data file: the server never imports the trainer (it needs torch).
Format: {"version", "fields": {name: {type, default, help, min?, max?, choices?}},
"derived": {name: expression}, "rules": [{id, fields, check, message}],
"presets": {name: {field: value}}}. The rules are the trainer's cross-field checks; this
module evaluates them with its own copy of the trainer's small expression evaluator, so a
config the trainer would refuse is refused at submit time (a test holds the two together).
"""

import ast
import json
import math
import operator
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import server

SCHEMA_PATH = Path(server.__file__).parent.parent / "trainer" / "schema.json"
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
    names = rule_names(resolved_config(preset, overrides))
    errors = []
    for rule in load_schema()["rules"]:
        if not _holds(rule["check"], names):
            blamed = next((f for f in rule["fields"] if f in overrides), rule["fields"][0])
            errors.append(f"config.{blamed}: {rule_message(rule, names)}")
    if errors:
        raise ValueError("; ".join(errors))


def rule_names(config: dict[str, Any]) -> dict[str, Any]:
    """Every field's value plus the schema's derived names, computed in order."""
    names = dict(config)
    for name, expression in load_schema()["derived"].items():
        names[name] = expression_value(expression, names)
    return names


def rule_message(rule: dict[str, Any], names: dict[str, Any]) -> str:
    """The rule's message: `{field}` rendered as `field=value`, `{derived}` as its value."""
    fields = load_schema()["fields"]

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{name}={names[name]!r}" if name in fields else repr(names[name])

    return _PLACEHOLDER.sub(render, rule["message"])


def _holds(check: str, names: dict[str, Any]) -> bool:
    try:
        return bool(expression_value(check, names))
    except ZeroDivisionError:
        return False


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def expression_value(expression: str, names: dict[str, Any]) -> Any:
    """A schema expression's value: constants, names, + - * // %, comparisons and
    and / or / not with Python's semantics; other syntax is a broken schema."""
    return _value(ast.parse(expression, mode="eval").body, names)


def _value(node: ast.AST, names: dict[str, Any]) -> Any:
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
    raise RuntimeError(f"trainer schema expression uses unsupported syntax: {ast.unparse(node)}")


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
