"""GET/POST /submit: inputs from the trainer schema, the experiment created through the
service, and the server's own message next to a bad field."""

import stat
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server import presets, scripts
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


def test_cost_estimate_is_rendered_for_the_values_shown(client: TestClient) -> None:
    page = fetch(client, "/submit")
    text = page.find("p", data_estimate_text="").text()
    assert text.startswith("$0.00 for 3 seeds: $0.00 and at most 40 min 00 s of pod time each")
    assert "local hosts are the operator's own: no charge" in text

    form = valid_form(client, seeds="1 2 3 4", provider="runpod", name="")
    again = parse(client.post("/submit", data=form).text)  # 422: the name is missing
    # 4 seeds of 2,400 s at $21.52/hour: $14.35 each.
    assert again.find("strong", data_estimate_total="").text() == "$57.39"

    broken = parse(client.post("/submit", data=valid_form(client, seeds="x", name="")).text)
    assert broken.find("p", data_estimate_text="").text().startswith("No estimate until")


SCRIPT = "import os\nprint('seed', os.environ['SEED'])\n"


def post(client: TestClient, form: dict[str, str],
         files: dict[str, tuple[str, bytes]] | None = None) -> tuple[int, Element]:
    response = client.post("/submit", data=form, files=files, follow_redirects=False)
    return response.status_code, parse(response.text)


def test_policies_hardware_and_budget_reach_the_experiment(client: TestClient,
                                                           session: Session) -> None:
    form = valid_form(client, failure_policy="replace", max_retries="1", alpha="0.05",
                      max_seeds="6", priority="7", budget_usd="99.5", gpu_type="NVIDIA H200",
                      gpu_count="4", share_pods="on", provider="runpod")

    status, _ = post(client, form)

    assert status == 303
    experiment = session.exec(select(Experiment)).one()
    assert (experiment.failure_policy, experiment.max_retries, experiment.alpha,
            experiment.max_seeds, experiment.priority, experiment.budget_usd) == (
        "replace", 1, 0.05, 6, 7, 99.5)
    assert (experiment.gpu_type, experiment.gpu_count, experiment.share_pods,
            experiment.provider, experiment.kind) == ("NVIDIA H200", 4, True, "runpod", "trainer")


def test_blank_optional_fields_keep_the_defaults(client: TestClient, session: Session) -> None:
    form = valid_form(client, max_retries="", alpha=" ", max_seeds="", budget_usd="",
                      gpu_type="", gpu_count="")

    assert post(client, form)[0] == 303
    experiment = session.exec(select(Experiment)).one()
    assert (experiment.max_retries, experiment.alpha, experiment.max_seeds, experiment.budget_usd,
            experiment.gpu_type, experiment.gpu_count, experiment.share_pods) == (
        2, 0.01, None, None, None, None, False)


def test_bad_policy_fields_show_the_servers_messages(client: TestClient,
                                                      session: Session) -> None:
    form = valid_form(client, alpha="often", priority="1000", gpu_count="9", max_seeds="2",
                      failure_policy="pray")

    status, page = post(client, form)

    assert status == 422
    assert field_error(page, "alpha") == "Input should be a valid number, unable to parse string as a number"
    assert field_error(page, "priority") == "Input should be less than or equal to 100"
    assert field_error(page, "gpu_count") == "Input should be less than or equal to 8"
    assert "'none', 'retry' or 'replace'" in field_error(page, "failure_policy")
    assert page.find("input", id="f-alpha").attrs["value"] == "often"
    assert session.exec(select(Experiment)).all() == []


def test_uploaded_script_makes_a_script_experiment(client: TestClient, session: Session) -> None:
    form = valid_form(client, env="NUM_LAYERS=11\n# a comment\n\nWARMUP_STEPS=20\n")
    files = {"file.train_gpt.py": ("train_gpt.py", SCRIPT.encode()),
             "file.requirements.txt": ("requirements.txt", b"sentencepiece\n")}

    status, _ = post(client, form, files)

    assert status == 303
    experiment = session.exec(select(Experiment)).one()
    assert (experiment.kind, experiment.env) == ("script", {"NUM_LAYERS": "11",
                                                            "WARMUP_STEPS": "20"})
    stored = {f.name: f.content for f in scripts.list_files(session, experiment.id)}
    assert stored == {"train_gpt.py": SCRIPT.encode(), "requirements.txt": b"sentencepiece\n"}


def test_script_problems_show_next_to_their_fields(client: TestClient, session: Session) -> None:
    cases = [
        ({"env": "SEED=3"}, {"file.train_gpt.py": ("t.py", SCRIPT.encode())},
         "env", "SEED: reserved (set by Caddie or unsafe to change)"),
        ({"env": "JUST_A_NAME"}, {"file.train_gpt.py": ("t.py", SCRIPT.encode())},
         "env", "line 1: NAME=value expected"),
        ({}, {"file.train_gpt.py": ("t.py", b"\xff\xfeprint(1)\n")},
         "file.train_gpt.py", "not UTF-8 text (byte 0)"),
        ({}, {"file.requirements.txt": ("r.txt", b"numpy\n")},
         "file.train_gpt.py", "a script experiment needs train_gpt.py"),
        ({"config.num_layers": "4"}, {"file.train_gpt.py": ("t.py", SCRIPT.encode())},
         "config", "a script experiment takes env, not config"),
        ({}, {"file.train_gpt.py": ("t.py", b"x" * (scripts.MAX_FILE_BYTES + 5))},
         "file.train_gpt.py", f"more than {scripts.MAX_FILE_BYTES:,} bytes, the limit"),
    ]
    for changes, files, field, message in cases:
        status, page = post(client, valid_form(client, **changes), files)
        assert status == 422, (field, message)
        shown = (page.find("p", id="error-config").text() if field == "config"
                 else field_error(page, field))
        assert shown == message
    assert session.exec(select(Experiment)).all() == []


def test_ablation_variants_from_the_form_reach_the_experiment(client: TestClient, session: Session) -> None:
    assert fetch(client, "/submit").find("textarea", id="f-variants").attrs["name"] == "variants"
    form = valid_form(client, variants="mlp3: mlp_mult=3\n# a comment\n\nwide: model_dim=96, tie_embeddings=false\n")

    status, _ = post(client, form)

    assert status == 303
    experiment = session.exec(select(Experiment)).one()
    assert experiment.variants == [{"name": "mlp3", "config": {"mlp_mult": 3}},
                                   {"name": "wide", "config": {"model_dim": 96, "tie_embeddings": False}}]
    arms = sorted({run.variant for run in session.exec(select(Run))})
    assert arms == ["", "mlp3", "wide"]


def test_a_scripts_variants_are_env_lines(client: TestClient, session: Session) -> None:
    form = valid_form(client, env="MATRIX_LR=0.04\n", variants="lr8: MATRIX_LR=0.08\n")
    files = {"file.train_gpt.py": ("train_gpt.py", SCRIPT.encode())}

    status, _ = post(client, form, files)

    assert status == 303
    experiment = session.exec(select(Experiment)).one()
    assert (experiment.kind, experiment.preset) == ("script", "script")
    assert experiment.variants == [{"name": "lr8", "env": {"MATRIX_LR": "0.08"}}]


def test_bad_variant_lines_are_shown_under_the_variants_field(client: TestClient, session: Session) -> None:
    cases = [("mlp3 mlp_mult=3", "line 1: name: field=value, ... expected"),
             ("mlp3: mlp_mult", "line 1: 'mlp_mult' is not name=value"),
             ("deep: num_layers=999", "num_layers"),
             ("mlp3: nonsense_field=1", "nonsense_field")]
    for text, message in cases:
        status, page = post(client, valid_form(client, variants=text))
        assert status == 422, text
        assert message in field_error(page, "variants"), (text, field_error(page, "variants"))
        assert page.find("textarea", id="f-variants").text() == text  # kept to fix
    assert session.exec(select(Experiment)).all() == []
