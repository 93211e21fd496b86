"""`caddie import records` and `caddie export`, run as real subprocesses on a migrated SQLite file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.migrate import upgrade_head
from tests.server.test_records import (
    HONEST_LOGS,
    disagreeing_submission,
    fixture_log,
    honest_submission,
    make_folder,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'caddie.db'}"
    upgrade_head(url)
    return {**os.environ, "CADDIE_DATABASE_URL": url, "CADDIE_DATA_DIR": str(tmp_path / "data"),
            "CADDIE_REDIS_URL": ""}


def caddie(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_prints_verdicts_and_disagreements_then_export_writes_the_folder(
        env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "records"
    make_folder(root, "2026-04-11_Honest", {n: fixture_log(n) for n in HONEST_LOGS}, honest_submission())
    make_folder(root, "2026-04-12_Optimistic", {"train_seed42.log": fixture_log("sp4096_seed42.log"),
                                                "train_seed1.log": fixture_log("phased_ttt_timestamped_seed1.log")},
                disagreeing_submission())
    done = caddie(env, "import", "records", str(root), "--reference-bpb", "2.0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "track_10min_16mb/2026-04-11_Honest: imported as experiment 1 'Three honest seeds', " \
           "3 scored seed(s), mean val_bpb 1.08488229, record-eligible" in out
    assert "Optimistic', 2 scored seed(s)" in out and "not record-eligible" in out
    assert "  disagrees: val_bpb stated 1.07300174, logs 1.08522007 (equals seed 1's log, " \
           "not the mean of 2 seed(s))" in out
    assert "  disagrees: seeds stated [1, 7, 42], logs [1, 42] (no scored log for seed(s) [7])" in out

    again = caddie(env, "import", "records", str(root), "--json")
    assert again.returncode == 0, again.stderr
    assert [(r["experiment_id"], r["created"]) for r in json.loads(again.stdout)] == [(1, False), (2, False)]

    target = tmp_path / "pr" / "2026-04-11_Honest"
    exported = caddie(env, "export", "1", str(target), "--github-id", "grace-h", "--blurb", "Three seeds, honest.")
    assert exported.returncode == 0, exported.stderr
    assert "wrote 7 file(s)" in exported.stdout
    submission = json.loads((target / "submission.json").read_text())
    assert submission["seeds"] == [42, 1234, 0] and submission["blurb"] == "Three seeds, honest."


def test_bad_arguments_are_errors_not_tracebacks(env: dict[str, str], tmp_path: Path) -> None:
    missing = caddie(env, "import", "records", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"caddie: {tmp_path / 'nope'} is not a directory"
    unknown = caddie(env, "export", "42", str(tmp_path / "out"))
    assert (unknown.returncode, unknown.stdout.strip()) == (2, "caddie: experiment 42 not found")
    assert "Traceback" not in missing.stderr + unknown.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "10"])
def test_a_reference_bpb_the_api_would_refuse_is_a_usage_error(env: dict[str, str], tmp_path: Path,
                                                               value: str) -> None:
    make_folder(tmp_path / "records", "2026-04-11_Honest", {n: fixture_log(n) for n in HONEST_LOGS},
                honest_submission())
    result = caddie(env, "import", "records", str(tmp_path / "records"), "--reference-bpb", value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--reference-bpb" in result.stderr and "Traceback" not in result.stderr
    listed = caddie(env, "import", "records", str(tmp_path / "records"), "--json")
    assert [r["created"] for r in json.loads(listed.stdout)] == [True]  # nothing was stored before
