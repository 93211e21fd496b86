"""The schema's cross-field rules: one evaluator (trainer/config.py), which the trainer
runs on every config and the server at submit time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from server import presets
from trainer.config import (
    DERIVED,
    MICRO_BATCHES,
    PRESETS,
    RULES,
    SCHEMA_PATH,
    ConfigError,
    expression_value,
    failed_rules,
    load_config,
    load_schema,
)

# For every rule: overrides of the `tiny` preset that break that rule and no other.
VIOLATIONS = {
    "heads_divide_width": {"model_dim": 66},
    "kv_heads_divide_heads": {"num_kv_heads": 3},
    "even_head_size": {"model_dim": 60, "num_heads": 4},
    "whole_train_sequences": {"train_batch_tokens": 4000},
    "val_batch_holds_a_sequence": {"val_batch_size": 1000},
    "positive_softcap": {"logit_softcap": 0.0},
    "rope_dims_fit_the_head": {"rope_dims": 6, "model_dim": 16, "num_heads": 4},
    "xsa_layers_exist": {"xsa_last_n": 3},
    "bigram_buckets_not_one": {"bigram_buckets": 1},
    "ttt_needs_sliding": {"ttt_epochs": 1, "ttt_chunk_tokens": 128},
    "ttt_chunk_covers_window": {"ttt_epochs": 1, "eval_mode": "sliding", "ttt_chunk_tokens": 64},
    "stride_within_window": {"eval_mode": "sliding", "eval_stride": 129},
    "recurrence_within_layers": {"recur_layers": 2, "recur_start": 1},
    "parallel_layers_exist": {"parallel_last_n": 3},
    "gptq_reserve_within_budget": {"gptq": True, "max_wallclock_seconds": 10.0,
                                   "gptq_reserve_s": 10.0},
}


def trainer_problem(overrides: dict, tmp_path: Path, preset: str = "tiny") -> str | None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": preset, **overrides}))
    try:
        load_config(path, {})
    except ConfigError as exc:
        return str(exc)
    return None


def server_problem(overrides: dict, preset: str = "tiny") -> str | None:
    try:
        presets.check_combination(preset, overrides)
    except ValueError as exc:
        return str(exc)
    return None


def lower_names(message: str) -> str:
    """The trainer names variables (MODEL_DIM=...); the server names fields (model_dim=...)."""
    return re.sub(r"\b([A-Z][A-Z0-9_]*)=", lambda m: m.group(1).lower() + "=", message)


def test_every_rule_has_a_violation_here():
    assert set(VIOLATIONS) == {rule["id"] for rule in RULES}


@pytest.mark.parametrize("rule_id", sorted(VIOLATIONS))
def test_each_rule_is_refused_by_the_trainer_and_at_submit(rule_id, tmp_path):
    overrides = VIOLATIONS[rule_id]
    values = {**presets.resolved_config("tiny", overrides)}
    assert [rule["id"] for rule, _ in failed_rules(values)] == [rule_id]
    in_trainer = trainer_problem(overrides, tmp_path)
    in_server = server_problem(overrides)
    assert in_trainer is not None and in_server is not None
    rule = next(r for r in RULES if r["id"] == rule_id)
    blamed = next(f for f in rule["fields"] if f in overrides)
    assert in_server == f"config.{blamed}: {lower_names(in_trainer)}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_passes_every_rule(preset, tmp_path):
    assert trainer_problem({}, tmp_path, preset) is None
    assert server_problem({}, preset) is None


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("0 or 5", 5),
        ("3 or 5", 3),
        ("3 and 0", 0),
        ("not 0", True),
        ("7 // 2 % 3 + 1 * 2 - 1", 1),
        ("1 < 2 <= 2 != 3", True),
        ("1 < 2 > 3", False),
        ("mode == 'sliding'", True),
    ],
)
def test_the_evaluator_has_python_semantics(expression, value):
    assert expression_value(expression, {"mode": "sliding"}) == value


def test_other_syntax_is_refused():
    with pytest.raises(ConfigError, match="unsupported syntax"):
        expression_value("__import__('os')", {})


def test_micro_batches_of_the_rules_are_the_trainers():
    assert expression_value(DERIVED["micro_batches"], {}) == MICRO_BATCHES


def test_a_rule_naming_an_unknown_field_breaks_the_schema(tmp_path):
    schema = json.loads(SCHEMA_PATH.read_text())
    schema["rules"].append(
        {"id": "typo", "fields": ["num_layers"], "check": "num_layer > 0", "message": "x"}
    )
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ConfigError, match="rule 'typo' uses unknown names \\['num_layer'\\]"):
        load_schema(path)
