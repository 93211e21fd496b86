"""Bring-your-own-script experiments through the API: what is refused (422 naming the field,
nothing stored) and what a good one stores and shows, on SQLite and PostgreSQL."""

import hashlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server import scripts
from server.models import Experiment, ExperimentFile, Run

SCRIPT = 'print("step:1/1 val_loss:2.0 val_bpb:1.2")\n'
SPEC: dict[str, Any] = {
    "name": "my script",
    "kind": "script",
    "seeds": [1, 2],
    "files": {"train_gpt.py": SCRIPT},
    "env": {"NUM_LAYERS": "11"},
}


def post(client: TestClient, **changes: Any) -> Any:
    # ASCII JSON: a lone surrogate travels as the escape "\\ud800", as a hostile client sends it.
    return client.post("/api/experiments", content=json.dumps(SPEC | changes),
                       headers={"Content-Type": "application/json"})


def assert_refused(response: Any, session: Session, field: str, *words: str) -> None:
    """422 whose message starts with `field` and holds `words`; no row of any kind stored."""
    assert response.status_code == 422, response.text
    messages = [p["msg"] for p in response.json()["detail"]]
    assert any(m.startswith(field) and all(w in m for w in words) for m in messages), messages
    assert session.exec(select(Experiment)).all() == []
    assert session.exec(select(ExperimentFile)).all() == []
    assert session.exec(select(Run)).all() == []


BAD_NAMES = ["../x", "/etc/passwd", "a/b", ".bashrc", "..", ".", "a\x00b", "a\nb", "train_gpt.py\n",
             "x" * 101, "", "a b", "a\\b", "-rf", "ünï.py", "final_model.int8.ptz",
             # what `caddie export` writes beside the code
             "README.md", "submission.json", "run.json", "train_seed42.log"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_file_names_that_are_not_plain_names_are_refused(client: TestClient, session: Session,
                                                         name: str) -> None:
    response = post(client, files={"train_gpt.py": SCRIPT, name: "x"})
    assert_refused(response, session, "files.")


def test_an_oversize_file_is_refused_naming_it(client: TestClient, session: Session) -> None:
    big = "#" * (scripts.MAX_FILE_BYTES + 1)
    response = post(client, files={"train_gpt.py": SCRIPT, "data.txt": big})
    assert_refused(response, session, "files.data.txt", f"{scripts.MAX_FILE_BYTES:,}")


def test_bytes_are_counted_in_utf8_not_characters(client: TestClient, session: Session) -> None:
    wide = "é" * (scripts.MAX_FILE_BYTES // 2 + 1)  # few enough characters, too many bytes
    assert_refused(post(client, files={"train_gpt.py": wide}), session, "files.train_gpt.py")


def test_files_over_the_total_are_refused(client: TestClient, session: Session) -> None:
    part = "#" * scripts.MAX_FILE_BYTES
    files = {"train_gpt.py": SCRIPT, "a.py": part, "b.py": part, "c.py": part}
    assert_refused(post(client, files=files), session, "files:", "in all")


def test_too_many_files_are_refused(client: TestClient, session: Session) -> None:
    files = {"train_gpt.py": SCRIPT} | {f"f{i}.py": "" for i in range(scripts.MAX_FILES)}
    assert_refused(post(client, files=files), session, "files:", "at most")


@pytest.mark.parametrize("text", ["a\x00b", "\ud800"])
def test_binary_or_broken_text_is_refused(client: TestClient, session: Session, text: str) -> None:
    assert_refused(post(client, files={"train_gpt.py": text}), session, "files.train_gpt.py")


def test_a_script_experiment_needs_train_gpt_py(client: TestClient, session: Session) -> None:
    response = post(client, files={"model.py": SCRIPT})
    assert_refused(response, session, "files:", "train_gpt.py")


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "IFS", "SEED",
                                  "RUN_ID", "CADDIE_DATABASE_URL", "RUNPOD_API_KEY", "BASH_FUNC_x%%",
                                  "lower", "1ABC", "A-B", "A B", "A=B", "A;B", "$(X)", "A\nB", "",
                                  "X" * 65, "É"])
def test_reserved_or_invalid_env_names_are_refused(client: TestClient, session: Session,
                                                   name: str) -> None:
    assert_refused(post(client, env={name: "1"}), session, "env.")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "\ud800",
                                   "x" * (scripts.MAX_ENV_VALUE + 1)])
def test_env_values_with_line_breaks_nul_or_too_long_are_refused(client: TestClient, session: Session,
                                                                 value: str) -> None:
    assert_refused(post(client, env={"NUM_LAYERS": value}), session, "env.NUM_LAYERS")


def test_too_many_env_variables_are_refused(client: TestClient, session: Session) -> None:
    env = {f"V{i}": "1" for i in range(scripts.MAX_ENV + 1)}
    assert_refused(post(client, env=env), session, "env:", "at most")


@pytest.mark.parametrize("changes", [{"kind": "trainer"}, {"config": {"num_layers": 3}}])
def test_files_and_config_do_not_mix(client: TestClient, session: Session, changes: dict[str, Any]) -> None:
    response = post(client, **changes)
    assert response.status_code == 422, response.text
    assert session.exec(select(Experiment)).all() == []


def test_a_good_script_experiment_stores_its_files_and_shows_them_without_content(
        client: TestClient, session: Session) -> None:
    requirements = "sentencepiece==0.2.0\n"
    value = "$(touch /tmp/x) `id` ' \" ; | & ü ✓"
    response = post(client, files={"train_gpt.py": SCRIPT, "requirements.txt": requirements},
                    env={"NUM_LAYERS": "11", "NOTE": value})
    assert response.status_code == 201, response.text
    body = response.json()

    assert body["kind"] == "script" and body["env"] == {"NUM_LAYERS": "11", "NOTE": value}
    expected = [{"name": name, "nbytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
                for name, text in (("requirements.txt", requirements), ("train_gpt.py", SCRIPT))]
    assert body["files"] == expected
    assert SCRIPT not in response.text  # names, sizes and digests only
    shown = client.get(f"/api/experiments/{body['id']}").json()
    assert shown["files"] == expected and shown["env"] == body["env"]
    rows = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == body["id"])).all()
    assert {row.name: row.content for row in rows} == {"train_gpt.py": SCRIPT.encode(),
                                                       "requirements.txt": requirements.encode()}
    assert len(session.exec(select(Run).where(Run.experiment_id == body["id"])).all()) == 2


def test_a_trainer_experiment_has_no_files(client: TestClient) -> None:
    response = client.post("/api/experiments", json={"name": "t", "preset": "tiny", "seeds": [1]})
    assert response.status_code == 201, response.text
    assert response.json()["files"] == [] and response.json()["kind"] == "trainer"
