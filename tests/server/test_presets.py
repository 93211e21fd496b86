"""Config overrides checked against trainer/schema.json, read as data."""

import json
import re

import pytest

from server import presets


def test_schema_is_the_trainers_file() -> None:
    assert presets.SCHEMA_PATH.name == "schema.json"
    assert presets.load_schema() == json.loads(presets.SCHEMA_PATH.read_text())
    assert {"baseline", "tiny"} <= set(presets.preset_names())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_layers": 2.0}, "config.num_layers: must be an integer, got 2.0"),
    ({"num_layers": False}, "config.num_layers: must be an integer, got false"),
    ({"num_layers": None}, "config.num_layers: must be an integer, got null"),
    ({"num_layers": 0}, "config.num_layers: must be >= 1, got 0"),
    ({"num_layers": 65}, "config.num_layers: must be <= 64, got 65"),
    ({"beta1": True}, "config.beta1: must be a number, got true"),
    ({"beta1": 1.5}, "config.beta1: must be <= 1.0, got 1.5"),
    ({"beta1": float("nan")}, "config.beta1: must be a finite number"),
    ({"tie_embeddings": 0}, "config.tie_embeddings: must be a boolean, got 0"),
    ({"tie_embeddings": "yes"}, "config.tie_embeddings: must be a boolean"),
    ({"data_path": ["a"]}, "config.data_path: must be a string"),
    ({"data_path": "a\x00b"}, "config.data_path: must not contain NUL"),
    ({"no_such_field": 1}, "config.no_such_field: unknown field"),
    ({"seed": 1}, "config.seed: set seeds in the experiment's `seeds`"),
    ({"run_id": "x"}, "config.run_id: set by Caddie"),
])
def test_bad_overrides_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        presets.check_config(overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        presets.check_config({"num_layers": "9", "mystery": 1})
    assert str(caught.value) == (
        'config.num_layers: must be an integer, got "9"; config.mystery: unknown field')


def test_good_overrides_pass_unchanged() -> None:
    overrides = {"num_layers": 12, "beta1": 1, "matrix_lr": 0.02, "tie_embeddings": False,
                 "data_path": "/data/fineweb10B_sp1024"}
    assert presets.check_config(overrides) is overrides


def test_choices_are_enforced() -> None:
    spec = {"type": "str", "default": "a", "help": "", "choices": ["a", "b"]}
    assert presets.field_problem(spec, "b") is None
    assert presets.field_problem(spec, "c") == 'must be one of [\'a\', \'b\'], got "c"'


def test_unknown_preset_lists_the_known_ones() -> None:
    assert presets.check_preset("tiny") == "tiny"
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'huge'; known: .*baseline"):
        presets.check_preset("huge")


def test_resolved_config_layers_defaults_preset_and_overrides() -> None:
    schema = presets.load_schema()
    config = presets.resolved_config("tiny", {"num_layers": 3})
    assert set(config) == set(schema["fields"])
    assert config["num_layers"] == 3
    assert config["model_dim"] == schema["presets"]["tiny"]["model_dim"]
    assert config["rope_base"] == schema["fields"]["rope_base"]["default"]


def test_a_flood_of_problems_is_summarised() -> None:
    with pytest.raises(ValueError) as caught:
        presets.check_config({f"field_{i}": i for i in range(50)})
    message = str(caught.value)
    assert message.count("unknown field") == presets.MAX_REPORTED_PROBLEMS
    assert message.endswith(f"and {50 - presets.MAX_REPORTED_PROBLEMS} more")


def test_a_combination_the_trainer_would_refuse_names_the_overridden_field() -> None:
    # tiny has 4 heads: the rule names both fields and blames the one the user set.
    with pytest.raises(ValueError) as caught:
        presets.check_combination("tiny", {"num_kv_heads": 3})
    assert str(caught.value) == (
        "config.num_kv_heads: num_heads=4 is not divisible by num_kv_heads=3")
    with pytest.raises(ValueError, match=r"^config\.xsa_last_n: xsa_last_n=3 exceeds num_layers=2; "
                                         r"config\.ttt_epochs: ttt_epochs=1 needs sliding"):
        presets.check_combination("tiny", {"xsa_last_n": 3, "ttt_epochs": 1})


def test_a_rule_broken_by_the_preset_alone_blames_its_first_field() -> None:
    # The override is fine on its own; with tiny's 2 layers the range does not fit.
    with pytest.raises(ValueError, match=r"^config\.recur_start: the looped range"):
        presets.check_combination("tiny", {"recur_start": 1, "recur_layers": 2})


def test_combination_checks_fields_and_preset_first() -> None:
    with pytest.raises(ValueError, match=r"^config\.num_heads: must be an integer"):
        presets.check_combination("tiny", {"num_heads": "4"})
    with pytest.raises(ValueError, match=r"^preset: unknown preset"):
        presets.check_combination("huge", {})


def test_every_preset_and_good_overrides_pass() -> None:
    for name in presets.preset_names():
        assert presets.check_combination(name, {}) is None
    assert presets.check_combination("record", {"num_layers": 12, "xsa_last_n": 12}) is None
