"""GET/POST /submit: inputs from the trainer schema, the experiment created through the
service, and the server's own message next to a bad field."""

import stat
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server import presets
from server.experiments import ExperimentCreate
from server.models import Experiment, Run
from tests.web.dom import Element, fetch, form_token, parse


def field_error(page: Element, field: str) -> str:
    return page.find("div", data_field=field).find("p", class_="field-error").text()


def valid_form(client: TestClient, **changes: str) -> dict[str, str]:
    return {"csrf_token": form_token(client, "/submit"), "name": "wider mlp", "author": "ada",
            "preset": "tiny", "seeds": "1337, 42 2025", "provider": "local"} | changes


def test_form_has_an_input_with_help_for_every_field(client: TestClient) -> None:
    page = fetch(client, "/submit")

    fields = presets.load_schema()["fields"]
    shown = {div.attrs["data-field"].removeprefix("config."): div
             for div in page.find_all("div", class_="field")
             if div.attrs["data-field"].startswith("config.")}
    assert set(shown) == set(fields) - set(presets.RESERVED_FIELDS)
    layers = shown["num_layers"]
    assert layers.find("label").attrs["for"] == "f-config.num_layers"
    assert layers.find("input").attrs["placeholder"] == str(
        presets.resolved_config("baseline", {})["num_layers"])
    assert "transformer blocks" in layers.find("p", class_="help").text()
    options = [o.attrs["value"] for o in shown["eval_mode"].find("select").find_all("option")]
    assert options == ["", "standard", "sliding"]
    preset_options = page.find("select", id="f-preset").find_all("option")
    assert [o.attrs["value"] for o in preset_options] == presets.preset_names()


def test_valid_form_creates_the_experiment(client: TestClient, session: Session) -> None:
    form = valid_form(client) | {"config.num_layers": "4", "config.matrix_lr": "0.05",
                                 "config.tie_embeddings": "false", "config.eval_mode": "sliding",
                                 "config.model_dim": ""}

    response = client.post("/submit", data=form, follow_redirects=False)

    assert response.status_code == 303
    experiment = session.exec(select(Experiment)).one()
    assert response.headers["location"] == f"/experiments/{experiment.id}"
    assert (experiment.name, experiment.author, experiment.preset, experiment.provider) == (
        "wider mlp", "ada", "tiny", "local")
    assert experiment.config == {"num_layers": 4, "matrix_lr": 0.05, "tie_embeddings": False,
                                 "eval_mode": "sliding"}
    assert experiment.seeds == [1337, 42, 2025]
    assert sorted(r.seed for r in session.exec(select(Run))) == [42, 1337, 2025]


def test_invalid_field_shows_the_servers_message_next_to_it(client: TestClient,
                                                           session: Session) -> None:
    form = valid_form(client) | {"config.num_layers": "99", "config.matrix_lr": "fast"}

    response = client.post("/submit", data=form)

    assert response.status_code == 422
    page = parse(response.text)
    # The very messages the API gives for the same spec.
    try:
        ExperimentCreate(name="x", seeds=[1], config={"num_layers": 99})
    except ValueError as exc:
        assert "config.num_layers: must be <= 64, got 99" in str(exc)
    assert field_error(page, "config.num_layers") == "must be <= 64, got 99"
    assert field_error(page, "config.matrix_lr") == 'must be a number, got "fast"'
    layers = page.find("input", id="f-config.num_layers")
    assert layers.attrs["value"] == "99" and layers.attrs["aria-invalid"] == "true"
    assert page.find("input", id="f-name").attrs["value"] == "wider mlp"  # kept
    assert "open" in page.find("details", class_="overrides").attrs
    assert session.exec(select(Experiment)).all() == []


def test_bad_seeds_name_and_provider(client: TestClient, session: Session) -> None:
    form = valid_form(client, name="  ", seeds="1, 1", provider="aws")

    page = parse(client.post("/submit", data=form).text)

    assert field_error(page, "seeds") == "seeds must be unique; repeated: [1]"
    assert "at least 1 character" in field_error(page, "name")
    assert "'local', 'ssh' or 'runpod'" in field_error(page, "provider")
    form = valid_form(client, seeds="12, twelve")
    assert field_error(parse(client.post("/submit", data=form).text),
                       "seeds") == "seeds: 'twelve' is not a whole number"
    assert session.exec(select(Experiment)).all() == []


def test_submit_without_token_is_refused(client: TestClient, session: Session) -> None:
    form = valid_form(client)
    del form["csrf_token"]

    assert client.post("/submit", data=form).status_code == 403
    assert session.exec(select(Experiment)).all() == []


def test_csrf_key_is_made_once_and_private(client: TestClient, data_dir: Path) -> None:
    first = form_token(client, "/submit")
    key = data_dir / "csrf.key"

    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert form_token(client, "/submit") == first  # the browser's valid cookie is kept
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".csrf")] == []
