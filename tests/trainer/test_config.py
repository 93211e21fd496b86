"""Config resolution: defaults < preset < run.json < environment, and errors that name the variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import contract
from trainer.config import FIELDS, PRESETS, ConfigError, config_from_dict, load_config


def write_run_json(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / contract.CONFIG_FILE
    path.write_text(json.dumps(values))
    return path


def test_defaults_are_the_schema_defaults_and_the_baseline_preset():
    config = load_config(None, {})
    assert config.preset == "baseline"
    for name, spec in FIELDS.items():
        assert getattr(config, name) == spec["default"], name


def test_each_layer_overrides_the_one_below(tmp_path):
    # tiny sets num_layers and model_dim; run.json overrides model_dim and seed; env overrides seed.
    path = write_run_json(tmp_path, {"preset": "tiny", "model_dim": 96, "seed": 5, "mlp_mult": 3})
    config = load_config(path, {"SEED": "11", "UNRELATED": "x"})
    assert config.num_layers == PRESETS["tiny"]["num_layers"]  # preset over default
    assert config.model_dim == 96  # run.json over preset
    assert config.mlp_mult == 3  # run.json over default
    assert config.seed == 11  # env over run.json
    assert config.matrix_lr == FIELDS["matrix_lr"]["default"]  # untouched default
    assert config.as_dict()["preset"] == "tiny"


def test_env_values_are_parsed_by_type():
    config = load_config(
        None,
        {
            "TIE_EMBEDDINGS": "0",
            "MATRIX_LR": "0.02",
            "RUN_ID": "r1",
            "NUM_LAYERS": " 4 ",
            "TORCH_COMPILE": "false",
        },
    )
    assert config.tie_embeddings is False
    assert config.matrix_lr == 0.02
    assert config.run_id == "r1"
    assert config.num_layers == 4
    assert config.torch_compile is False


def test_every_preset_resolves_to_its_values(tmp_path):
    for preset, values in PRESETS.items():
        config = load_config(write_run_json(tmp_path, {"preset": preset}), {})
        assert config.preset == preset
        for name, value in values.items():
            assert getattr(config, name) == value, (preset, name)


def test_as_dict_round_trips(tmp_path):
    config = load_config(write_run_json(tmp_path, {"preset": "tiny", "seed": 3}), {})
    assert config_from_dict(config.as_dict()) == config


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NUM_LAYERS": "abc"}, "NUM_LAYERS='abc' is not an int"),
        ({"MATRIX_LR": "fast"}, "MATRIX_LR='fast' is not a float"),
        ({"TIE_EMBEDDINGS": "maybe"}, "TIE_EMBEDDINGS='maybe' is not a bool"),
        ({"NUM_LAYERS": "0"}, "NUM_LAYERS=0 is below the minimum 1"),
        ({"BETA1": "1.5"}, "BETA1=1.5 is above the maximum 1.0"),
        ({"MODEL_DIM": "100"}, "MODEL_DIM=100 is not divisible by NUM_HEADS=8"),
        ({"NUM_KV_HEADS": "3"}, "NUM_HEADS=8 is not divisible by NUM_KV_HEADS=3"),
        ({"TRAIN_BATCH_TOKENS": "1000"}, "TRAIN_BATCH_TOKENS=1000"),
        ({"VAL_BATCH_SIZE": "1024"}, "VAL_BATCH_SIZE=1024"),
    ],
)
def test_bad_env_value_names_the_variable(env, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, env)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_layerz": 3}, "unknown key 'num_layerz'"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"num_layers": "3"}, "num_layers='3'"),
        ({"num_layers": 2.5}, "num_layers=2.5"),
        ({"tie_embeddings": 1}, "tie_embeddings=1"),
        ({"seed": -1}, "seed=-1 is below the minimum 0"),
    ],
)
def test_bad_run_json_names_the_key(tmp_path, values, message):
    path = write_run_json(tmp_path, values)
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert message in str(err.value)


def test_run_json_must_exist_and_be_an_object(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        load_config(missing, {})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        load_config(broken, {})
    listed = write_run_json(tmp_path, [1, 2])
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(listed, {})


