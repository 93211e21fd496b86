"""The trainer bundle, run.json and the launcher's deadline."""

from pathlib import Path

import pytest

from server.eligibility import MAX_EVAL_SECONDS
from server.models import Experiment, Run
from trainer import contract
from trainer.contract import code_digest
from worker.bundle import TrainerBundle, _single_file, default_bundle, run_config, run_deadline_s
from worker.launcher import launch_script

SCHEMA = {"fields": {"max_wallclock_seconds": {"default": 600.0}},
          "presets": {"quick": {"max_wallclock_seconds": 60.0}, "nocap": {"max_wallclock_seconds": 0.0}}}


def test_the_trainer_package_bundle_holds_its_files_and_schema():
    files = TrainerBundle(Path(contract.__file__).resolve().parent).files()
    assert "trainer/contract.py" in files and "trainer/schema.json" in files
    assert all(rel.startswith("trainer/") and rel.endswith((".py", ".json")) for rel in files)


def test_code_digest_counts_bytes_and_changes_with_any_byte(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "a.py").write_bytes(b"x = 1\n")
    (tmp_path / "trainer" / "schema.json").write_text("{}")
    files = TrainerBundle(tmp_path / "trainer").files()
    total, digest = code_digest(files)
    assert total == 8
    assert code_digest({**files, "trainer/a.py": b"x = 2\n"})[1] != digest


def test_a_bundle_without_python_files_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"trainer bundle {tmp_path} holds no"):
        TrainerBundle(tmp_path).files()


def test_run_json_puts_the_runs_seed_and_id_over_the_experiments_config():
    experiment = Experiment(name="e", preset="tiny", config={"seed": 1, "num_layers": 3})
    config = run_config(experiment, Run(id=12, experiment_id=1, seed=99))
    assert config == {"preset": "tiny", "seed": 99, "num_layers": 3, "run_id": "12"}


@pytest.mark.parametrize(
    ("config", "training_s"),
    [({"preset": "baseline"}, 600.0), ({"preset": "quick"}, 60.0),
     ({"preset": "quick", "max_wallclock_seconds": 30}, 30.0), ({"preset": "nocap"}, 600.0)],
)
def test_deadline_is_training_cap_plus_eval_cap_plus_grace(config, training_s):
    assert run_deadline_s(config, SCHEMA, grace_s=5) == training_s + MAX_EVAL_SECONDS + 5


def test_a_non_numeric_cap_names_the_field():
    with pytest.raises(ValueError, match="max_wallclock_seconds 'soon' is not a number"):
        run_deadline_s({"max_wallclock_seconds": "soon"}, SCHEMA, grace_s=0)


def test_the_launch_script_quotes_paths_and_carries_the_deadline():
    argv = TrainerBundle(Path("/x/trainer")).argv("/opt/py/bin/python3", config_path="/tmp/runs/run 1/run.json",
                                                  run_dir="/tmp/runs/run 1")
    script = launch_script(run_dir="/tmp/runs/run 1", argv=argv, deadline_s=1230.7,
                           pythonpath="/tmp/runs/run 1/code")
    assert "timeout --kill-after=30 1230s /opt/py/bin/python3 -m trainer train --config '/tmp/runs/run 1/run.json'" \
        in script
    assert "run='/tmp/runs/run 1'" in script and "PYTHONPATH='/tmp/runs/run 1/code'" in script
    assert "CADDIE_" not in script  # nothing of the worker's environment


def test_the_default_bundle_is_the_single_file_trainer_and_runs_it_as_a_script():
    bundle = default_bundle()
    files = bundle.files()
    assert list(files) == ["train_gpt.py"] and 30_000 < len(files["train_gpt.py"]) < 80_000
    assert bundle.files() is not None and _single_file.cache_info().hits >= 1  # built once per process
    assert bundle.argv("python3", config_path="/r/run.json", run_dir="/r") == [
        "python3", "/r/code/train_gpt.py", "train", "--config", "/r/run.json", "--out", "/r"]
    assert "max_wallclock_seconds" in bundle.schema()["fields"]
