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
    assert "  disagrees: val_bpb: the folder states 1.0730017, the logs show 1.0852201 (equals " \
           "seed 1's log, not the mean of 2 seed(s))" in out
    assert "  disagrees: seeds: the folder states 1, 7, 42, the logs show 1, 42 (no scored log " \
           "for seed(s) [7])" in out

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


def test_a_reference_bpb_the_api_would_refuse_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    make_folder(tmp_path / "records", "2026-04-11_Honest", {n: fixture_log(n) for n in HONEST_LOGS},
                honest_submission())
    for value in ("nan", "inf", "-1", "0", "10"):
        result = caddie(env, "import", "records", str(tmp_path / "records"), "--reference-bpb", value)
        assert result.returncode == 2, (value, result.stdout + result.stderr)
        assert "--reference-bpb" in result.stderr and "Traceback" not in result.stderr, value
    listed = caddie(env, "import", "records", str(tmp_path / "records"), "--json")
    assert [r["created"] for r in json.loads(listed.stdout)] == [True]  # none of them stored a row


def test_the_verdict_table_puts_both_words_side_by_side_and_counts(env: dict[str, str]) -> None:
    from tests.fixture_files import records_tree

    result = caddie(env, "import", "records", str(records_tree() / "records"), "--table")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[:8] == ["track", "folder", "challenge", "official", "stated",
                                        "caddie_mean", "n", "verdict"]
    rows = {line.split("\t")[1]: line.split("\t") for line in lines[1:] if "\t" in line}
    rescored = rows["2026-03-20_Rescored"]
    assert rescored[2:8] == ["accepted", "1.2100", "1.21000", "1.21000", "3", "eligible"]
    assert rescored[8].endswith("nats_per_token") and rescored[10] == "Middle 1.22000 2026-03-18"
    assert lines[0].split("\t")[-1] == "official_note" and rescored[12] == ""  # 1.2100 is its mean
    assert rows["2026-03-19_NotListed"][2] == "not listed"
    assert "track_10min_16mb: 5 folders, 4 accepted by the challenge" in result.stdout
    two_hours = rows["2026-03-19_TwoHours"]
    assert two_hours[7] == "non-record ok" and two_hours[11].startswith(
        "non-record: within 16,000,000 bytes (largest 15,847,000)")


def test_a_folder_with_nothing_to_import_shows_its_track_and_why(env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    import shutil

    from tests.fixture_files import records_tree

    shutil.copytree(records_tree(), tmp_path / "tree")  # the README above records/ too
    folder = tmp_path / "tree" / "records" / "track_non_record_16mb" / "2026-03-19_NoLogs_1x5090"
    folder.mkdir()
    (folder / "submission.json").write_text(json.dumps({"name": "No logs", "val_bpb": 1.328}))
    (folder / "results.tsv").write_text("exp\tval_bpb\nbase\t1.363\n")
    (folder / "train_gpt.py").write_text("")
    result = caddie(env, "import", "records", str(tmp_path / "tree" / "records"), "--table")
    assert result.returncode == 0, result.stderr
    (row,) = [line.split("\t") for line in result.stdout.splitlines() if "NoLogs" in line]
    assert row[0] == "track_non_record_16mb" and row[4] == "1.32800" and row[7] == "not imported"
    assert row[11] == ("nothing imported: no train log (a file with a step or final-score line) "
                       "among results.tsv, submission.json, train_gpt.py (empty)")
    assert "track_non_record_16mb: 1 folders, 1 accepted by the challenge, 1 within the track's " \
           "rules by Caddie, 1 of the accepted so; 1 folder(s) with nothing to import" in result.stdout


def test_a_closed_pipe_ends_the_command_quietly(env: dict[str, str]) -> None:
    """As `caddie import records DIR | head` when head has gone: stdout's reader is closed
    before the command writes a line."""
    from tests.fixture_files import records_tree

    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "import", "records", str(records_tree() / "records")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "Exception" not in stderr
