"""The plan page of a records folder given as a zip or as a git repository at a commit: the
plan with the launched script, each file's sha256 and whether it counts, the editable values,
the launch that plans the same source again, and the refusals shown under the form."""

import base64
import hashlib
import io
import random
import zipfile
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.auth import create_token
from server.models import Experiment, ExperimentFile
from tests.fixture_files import FIXTURES
from tests.server.test_reproduce import bare_repository
from tests.web.dom import form_token, parse

CARRIED = FIXTURES / "reproduce" / "records" / "carried"


def folder_zip(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"carried/{path.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            archive.writestr(f"carried/{name}", data)
    return buffer.getvalue()


def launch_fields(html: str) -> dict[str, Any]:
    """The launch form's fields as the browser would post them (a repeated name as a list)."""
    form = parse(html).find("form", class_="reproduce")
    fields: dict[str, Any] = {}
    for field in form.find_all("input"):
        name, value = field.attrs["name"], field.attrs.get("value", "")
        fields[name] = [*fields[name], value] if name == "zip_data" and name in fields else (
            [value] if name == "zip_data" else value)
    fields.update({area.attrs["name"]: area.raw_text() for area in form.find_all("textarea")})
    return fields


def test_a_zip_plan_then_its_launch_with_an_edited_env(client: TestClient, session: Session) -> None:
    token = form_token(client, "/reproduce")
    data = folder_zip(CARRIED)
    response = client.post("/reproduce/zip", data={"csrf_token": token}, files={"file": ("carried.zip", data)})
    assert response.status_code == 200, response.text
    page = parse(response.text)
    assert "train_gpt_cuda.py" in page.find("p", class_="entrypoint").text()
    rows = {row.find("th").find("code").text(): row for row in page.find("table", class_="files").find_all("tr")[1:]}
    model = (CARRIED / "tokenizers" / "tok.model").read_bytes()
    assert rows["tokenizers/tok.model"].find("code", class_="hash").text() == hashlib.sha256(model).hexdigest()
    assert "(binary)" in rows["tokenizers/tok.model"].text()
    assert rows["kernels/ext.cpp"].find("td", class_="counted").text() == "yes"
    fields = launch_fields(response.text)
    assert fields["source"] == "zip" and base64.urlsafe_b64decode("".join(fields["zip_data"])) == data
    assert fields["env"] == "QK_GAIN=5.0"

    fields.update(env="QK_GAIN=4.5", provider="local", seeds="1, 2")
    created = client.post("/reproduce/create", data=fields, follow_redirects=False)
    assert created.status_code == 303, created.text
    experiment = session.get(Experiment, int(created.headers["location"].rsplit("/", 1)[1]))
    assert experiment.env == {"QK_GAIN": "4.5"} and experiment.seeds == [1, 2]
    assert experiment.source["reproduce"]["entrypoint"] == "train_gpt_cuda.py"
    stored = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == experiment.id)).all()
    assert {row.name: bytes(row.content) for row in stored}["tokenizers/tok.model"] == model


def test_refusals_show_under_the_forms_and_store_nothing(client: TestClient, session: Session) -> None:
    token = form_token(client, "/reproduce")
    bad = client.post("/reproduce/zip", data={"csrf_token": token}, files={"file": ("x.zip", b"PK nonsense")})
    assert bad.status_code == 422 and "source.zip: not a zip file" in parse(bad.text).find("ul", class_="problems").text()
    fields = launch_fields(client.post("/reproduce/zip", data={"csrf_token": token},
                                       files={"file": ("c.zip", folder_zip(CARRIED))}).text)
    refused = client.post("/reproduce/create", data={**fields, "env": "LD_PRELOAD=/tmp/x.so"})
    assert refused.status_code == 422 and "LD_PRELOAD: reserved" in refused.text
    damaged = client.post("/reproduce/create", data={**fields, "zip_data": "not base64!"})
    assert damaged.status_code == 422 and "upload it again" in damaged.text
    git = client.post("/reproduce/git", data={"csrf_token": token, "url": "ext::sh -c id", "commit": "a" * 40})
    assert git.status_code == 422 and "source.url" in git.text
    assert parse(git.text).find("input", id="git-url").attrs["value"] == "ext::sh -c id"
    assert session.exec(select(Experiment)).all() == []


def test_a_git_folder_at_a_commit_and_local_repositories_for_admins_only(
        client: TestClient, session: Session, tmp_path: Path) -> None:
    bare, commit = bare_repository(tmp_path)
    form = {"url": f"file://{bare}", "commit": commit, "path": "records/track_10min_16mb/good"}
    token = form_token(client, "/reproduce")
    response = client.post("/reproduce/git", data={"csrf_token": token, **form})
    assert response.status_code == 200, response.text
    assert commit in parse(response.text).find("p", class_="origin").text()
    fields = launch_fields(response.text)
    assert {k: fields[k] for k in form} == form
    created = client.post("/reproduce/create", data={**fields, "provider": "local"}, follow_redirects=False)
    assert created.status_code == 303, created.text
    experiment = session.get(Experiment, int(created.headers["location"].rsplit("/", 1)[1]))
    assert experiment.source["reproduce"]["origin"]["commit"] == commit

    member = create_token(session, name="mallory")[1]
    client.cookies.set("caddie_token", member)
    token = form_token(client, "/reproduce")
    refused = client.post("/reproduce/git", data={"csrf_token": token, **form})
    assert refused.status_code == 422 and "local repositories are for admins" in refused.text


def test_a_zip_bigger_than_a_form_field_travels_in_pieces(client: TestClient, session: Session) -> None:
    # 1.9 MB that does not compress: its base64 is over the form parser's 1 MiB per field.
    noise = bytes(random.Random(7).getrandbits(8) for _ in range(1_900_000))
    data = folder_zip(CARRIED, {"tokenizers/big.model": noise})
    token = form_token(client, "/reproduce")
    fields = launch_fields(client.post("/reproduce/zip", data={"csrf_token": token},
                                       files={"file": ("big.zip", data)}).text)
    assert len(fields["zip_data"]) == 5 and all(len(piece) <= 512 * 1024 for piece in fields["zip_data"])
    created = client.post("/reproduce/create", data={**fields, "provider": "local"}, follow_redirects=False)
    assert created.status_code == 303, created.text
    experiment_id = int(created.headers["location"].rsplit("/", 1)[1])
    too_big = client.post("/reproduce/zip", data={"csrf_token": token},
                          files={"file": ("huge.zip", b"PK" + bytes(5_000_000))})
    assert too_big.status_code == 422 and "the page takes 5,000,000" in too_big.text
    stored = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == experiment_id,
                                                       ExperimentFile.name == "tokenizers/big.model")).one()
    assert bytes(stored.content) == noise
