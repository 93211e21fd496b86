"""`caddie logs parse`, run as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.communitylog import parse_log
from tests.fixture_files import RECORD_LOGS

REPO = Path(__file__).resolve().parents[2]
# The `caddie` entry point with only the `logs` command registered.
CADDIE = [sys.executable, "-m", "cli.main"]

LOG = """val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./tok/sp1024.model
seed:31
step:0/500 val_loss:6.9000 val_bpb:4.0900 train_time:0ms step_avg:0.02ms
step:420/500 val_loss:2.2000 val_bpb:1.3000 train_time:29400ms step_avg:70.00ms
stopping_early: wallclock_cap train_time:29400ms step:420/500
Serialized model int6+zstd: 16100000 bytes
Code size: 40000 bytes
Total submission size int6+zstd: 16140000 bytes
final_int6_roundtrip val_loss:2.2345 val_bpb:1.3234 eval_time:2500ms
final_int6_roundtrip_exact val_loss:2.23450000 val_bpb:1.32340000
"""


def _caddie(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CADDIE + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.log"
    path.write_text(LOG)
    return path


def test_json_output_is_the_parse_result(log_file: Path) -> None:
    done = _caddie("logs", "parse", str(log_file), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == parse_log(log_file.read_bytes())
    assert json.loads(done.stdout)["score"]["val_bpb"] == 1.3234


def test_summary_shows_score_size_and_warnings(log_file: Path) -> None:
    done = _caddie("logs", "parse", str(log_file))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "score   1.32340000 bpb, 2.23450000 nats/token (final_int6_roundtrip_exact)"
    assert lines[1] == "size    16,140,000 bytes (code 40,000 + model 16,100,000)"
    assert lines[2] == "train   420 steps in 29.4 s (70.00 ms/step)"
    assert lines[3] == "eval    2.5 s"
    assert lines[4] == "seed    31; val tokens ?"
    assert lines[5].startswith("warning: bytes_total 16,140,000 is over")


def test_missing_file_is_one_line_on_stderr_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.log"
    done = _caddie("logs", "parse", str(missing))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"caddie logs parse: cannot read {missing}: No such file or directory"]


def test_directory_is_refused_the_same_way(tmp_path: Path) -> None:
    done = _caddie("logs", "parse", str(tmp_path), "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and str(tmp_path) in done.stderr


def test_record_log_summary() -> None:
    path = RECORD_LOGS / "legal_ttt_seed1337.log"
    assert path.is_file(), f"test fixture {path} is missing from the checkout"
    done = _caddie("logs", "parse", str(path))
    assert done.returncode == 0, done.stderr
    assert "1.11922988 bpb" in done.stdout and "(legal_ttt_exact)" in done.stdout
    assert "15,977,386 bytes" in done.stdout
