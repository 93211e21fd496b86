"""`caddie reproduce`: the plan of an imported record by its key, then the re-run with --yes, and
its evidence folder; run as real subprocesses on a migrated SQLite file."""

import json
import shutil
from pathlib import Path

from sqlmodel import Session, create_engine

from server.models import Experiment
from tests.cli.test_records_cli import caddie, env  # noqa: F401  (fixture)
from tests.fixture_files import FIXTURES
from tests.server.test_reproduce import bare_repository

GOOD = FIXTURES / "reproduce" / "records" / "good"


def test_plan_by_key_then_create_then_evidence(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "records" / "track_10min_16mb"
    shutil.copytree(GOOD, root / "2026-12-01_Tiny")
    assert caddie(env, "import", "records", str(tmp_path / "records")).returncode == 0
    plan = caddie(env, "reproduce", "track_10min_16mb/2026-12-01_Tiny", "--provider", "local")
    assert plan.returncode == 0, plan.stderr
    assert "train_gpt_decode.py" in plan.stdout and "MATRIX_LR=0.025" in plan.stdout
    assert "launches: torchrun --standalone --nproc_per_node=8 train_gpt.py" in plan.stdout
    assert "seed 3: ITERATIONS=40" in plan.stdout and "Nothing created" in plan.stdout
    unknown = caddie(env, "reproduce", "track_10min_16mb/nope")
    assert unknown.returncode == 2 and "no imported record" in unknown.stdout

    made = caddie(env, "reproduce", "track_10min_16mb/2026-12-01_Tiny", "--provider", "local",
                  "--seeds", "1,2", "--set", "NUM_LAYERS=12", "--yes", "--json")
    assert made.returncode == 0, made.stderr
    rerun_id = int(made.stdout.rsplit("created re-run experiment ", 1)[1])
    assert json.loads(made.stdout.split("\nNothing")[0].rsplit("\n\ncreated", 1)[0])["seeds"] == [1, 2]
    engine = create_engine(env["CADDIE_DATABASE_URL"])
    with Session(engine) as session:
        rerun = session.get(Experiment, rerun_id)
        assert rerun.env["NUM_LAYERS"] == "12" and rerun.reproduces_id is not None
    engine.dispose()

    out = tmp_path / "evidence"
    written = caddie(env, "reproduce", "evidence", str(rerun_id), str(out))
    assert written.returncode == 0, written.stdout + written.stderr
    assert "**Verdict: running**" in (out / "README.md").read_text()
    assert json.loads((out / "verdict.json").read_text())["outcome"] == "running"


def test_a_git_repository_at_a_commit(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    bare, commit = bare_repository(tmp_path)
    plan = caddie(env, "reproduce", f"file://{bare}", "--commit", commit, "--path",
                  "records/track_10min_16mb/good", "--provider", "local", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    found = json.loads(plan.stdout.split("\nNothing created")[0])
    assert found["origin"]["commit"] == commit and found["seeds"] == [1, 2, 3]
    missing = caddie(env, "reproduce", f"file://{bare}", "--commit", "0" * 40)
    assert missing.returncode == 2 and "source.commit" in missing.stdout
