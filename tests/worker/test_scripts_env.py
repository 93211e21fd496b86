"""Environment variables of a script experiment can never become shell: any name and value the
validator accepts reaches the script byte for byte, and nothing else runs.

Hypothesis renders launch.sh for many environments and runs each with a real bash; one run on
the real sshd pod carries a batch of hostile values through the whole director.
"""

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from server.scripts import check_env, store_files
from server.states import FINAL_RUN_STATUSES
from tests.factories import make_experiment, make_run
from tests.worker.harness import FAKE_TRAINER, drive
from worker import launcher
from worker.bundle import TrainerBundle
from worker.director import RunDirector

MARKER = "/tmp/caddie-env-injected"  # what every hostile value tries to create
FRAGMENTS = [f"$(touch {MARKER})", f"`touch {MARKER}`", f"; touch {MARKER}", f"' ; touch {MARKER}; '",
             f'" ; touch {MARKER}; "', f"&& touch {MARKER}", f"| touch {MARKER}", f"${{IFS}}touch{MARKER}",
             "$HOME", "${PATH}", "\\", "'", '"', "*", "~", "!!", "#", "-", "=", "\t", "\x1b[31m", "é", "✓",
             "\u2028", " ", "$((1+1))", "<(id)", ">x", "2>&1", "%s", "\\'"]
DUMP = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"

names = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,20}\Z")
values = st.lists(st.one_of(st.sampled_from(FRAGMENTS),
                            st.text(st.characters(blacklist_characters="\x00\n\r", blacklist_categories=("Cs",)),
                                    max_size=12)),
                  max_size=6).map("".join)


def accepted(env: dict[str, str]) -> bool:
    try:
        check_env(env)
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def no_marker():
    Path(MARKER).unlink(missing_ok=True)
    yield
    assert not Path(MARKER).exists(), "an environment value ran a command"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(names, values, min_size=1, max_size=8))
def test_launch_sh_passes_any_accepted_env_byte_for_byte(env: dict[str, str], tmp_path_factory):
    assume(accepted(env))
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "code").mkdir()
    script = launcher.launch_script(run_dir=str(run_dir), argv=[sys.executable, "-c", DUMP, str(run_dir / "env.json")],
                                    deadline_s=60, cwd=str(run_dir / "code"), env=env, output="train.log")
    (run_dir / "launch.sh").write_text(script)
    subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", "launch.sh"], cwd=run_dir, timeout=60, check=True)

    assert (run_dir / "exit_code").read_text() == "0\n", (run_dir / "train.log").read_text()
    dumped = json.loads((run_dir / "env.json").read_text())
    assert {name: dumped.get(name) for name in env} == env
    assert not Path(MARKER).exists()


def test_names_that_are_not_names_never_reach_a_launch_script():
    for name in ("A;touch x", "$(x)", "A B", "", "1A", "A=B"):
        with pytest.raises(ValueError, match="not a variable name"):
            launcher.launch_script(run_dir="/r", argv=["true"], deadline_s=1, env={name: "1"})


@pytest.mark.sshd
def test_hostile_values_arrive_intact_on_the_real_pod(ssh_settings, engine, finalized, tmp_path):
    env = {f"HOSTILE_{i}": f"a{fragment}b" for i, fragment in enumerate(FRAGMENTS)}
    env["EVERYTHING"] = "".join(FRAGMENTS)
    env["PRINTABLE"] = string.printable.replace("\n", "").replace("\r", "")
    check_env(env)
    dump = tmp_path / "dumped env.json"
    env["DUMP_ENV"] = str(dump)
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, provider="ssh", kind="script", env=env)
        store_files(session, experiment.id,
                    {"train_gpt.py": (Path(__file__).parent / "byo" / "train_gpt.py").read_text()})
        session.commit()
        run_id = make_run(session, experiment, seed=3).id
    director = RunDirector(ssh_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)

    run = drive(director, run_id, until=set(FINAL_RUN_STATUSES), timeout_s=120)

    assert run.status == "succeeded", f"{run.reason}\n{run.last_log_lines}"
    dumped = json.loads(dump.read_text())
    assert {name: dumped.get(name) for name in env} == env
    assert (dumped["SEED"], dumped["RUN_ID"], dumped["MAX_WALLCLOCK_SECONDS"]) == ("3", str(run_id), "600")
    assert not any(name.startswith("CADDIE_") for name in dumped)  # nothing of the worker's environment
