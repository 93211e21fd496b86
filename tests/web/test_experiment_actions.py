"""The experiment page: the test against the reference and its plot lines, the new spec
fields, a script's files, an ablation table, and the add-seeds and export actions."""

import hashlib
import io
import json
import math
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server import scripts
from server.auth import Role, create_token
from server.experiments import finalize_experiment
from server.models import Run
from tests.factories import (
    LOSS_PER_BPB,
    make_experiment,
    make_finished_experiment,
    make_run,
    make_scored_run,
)
from tests.web.dom import Element, cells, fetch, form_token, parse
from tests.web.test_experiment_page import facts

SCORES = [1.20576485, 1.20617460, 1.20715923]
# The record margin, 0.005 nats per token, in bits per byte of the factory's runs.
RECORD_MARGIN_BPB = 0.005 / LOSS_PER_BPB


def plot_line(page: Element, kind: str) -> float:
    (line,) = [e for e in page.find("svg", class_="seed-plot").find_all("line", class_=kind)
               if f"data-{kind}" in e.attrs]
    return float(line.attrs[f"data-{kind}"])


def test_statistics_show_the_test_and_the_plot_its_reference(client: TestClient,
                                                            session: Session) -> None:
    # The example: threshold 1.2193657 gives t≈31.4, df=2, one-sided p≈0.0005.
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds",
                                             reference_bpb=1.2193657 + RECORD_MARGIN_BPB).id

    page = fetch(client, f"/experiments/{experiment_id}")

    test = facts(page, "stats-heading", index=1)
    assert test["Test"] == "one-sided one-sample t-test"
    assert test["Units"] == "nats per token"
    assert test["Against"].startswith(f"val_bpb {1.2193657 + RECORD_MARGIN_BPB:.5f} (chosen at submission")
    assert test["Threshold"].startswith(f"{1.2193657 * LOSS_PER_BPB:.8g} nats per token")
    assert test["Δ"].startswith(f"{(sum(SCORES) / 3 - 1.2193657 - RECORD_MARGIN_BPB) * LOSS_PER_BPB:.5g}")
    assert f"{LOSS_PER_BPB / math.log(2):.4f} bytes per token" in test["Δ"]
    assert test["t"].startswith("31.4") and (test["df"], test["Significant"]) == ("2", "yes")
    assert test["p"].startswith("0.0005")
    assert "More seeds" not in test
    assert plot_line(page, "reference") == round(1.2193657 + RECORD_MARGIN_BPB, 6)
    assert plot_line(page, "threshold") == round(1.2193657, 6)
    legend = page.find("g", class_="legend").text()
    assert "mean 1.2064" in legend and "reference 1.2223" in legend
    assert "threshold 1.2194" in legend
    caption = page.find("figure", class_="seed-scores").find("figcaption").text()
    assert "reference" in caption and "threshold" in caption


def test_a_close_result_says_how_many_more_seeds(client: TestClient, session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds",
                                             reference_bpb=1.2066 + RECORD_MARGIN_BPB + 0.0005).id

    test = facts(fetch(client, f"/experiments/{experiment_id}"), "stats-heading", index=1)

    assert test["Significant"] == "no"
    assert test["More seeds"].startswith("about ")
    assert test["More seeds"].endswith("would likely reach p < 0.01")


def test_spec_shows_policies_hardware_and_a_scripts_files(client: TestClient,
                                                          session: Session) -> None:
    script = "import os\nprint('hello', os.environ['SEED'])\n"
    experiment = make_experiment(
        session, name="own script", kind="script",
        env={"NUM_LAYERS": "11", "WARMUP": "20", "HF_TOKEN": "hf_secretvalue"},
        failure_policy="replace", max_retries=1, alpha=0.05, max_seeds=8, priority=5,
        budget_usd=120.0, gpu_type="NVIDIA H100 80GB HBM3", gpu_count=8, share_pods=True)
    scripts.store_files(session, experiment.id, {"train_gpt.py": script})
    session.commit()

    page = fetch(client, f"/experiments/{experiment.id}")

    spec = facts(page, "spec-heading")
    assert spec["Kind"] == "own script (train_gpt.py)"
    assert "Preset" not in spec
    assert spec["Hardware"] == "8 × NVIDIA H100 80GB HBM3"
    assert spec["Pods"].startswith("shared")
    assert spec["Failed seeds"] == "replaced by a new seed, at most 1 extra run"
    assert spec["Adaptive seeding"] == ("seeding α = 0.05: seeds are added while the test's p ≥ 0.05, "
                                        "up to 8")
    assert (spec["Priority"], spec["Budget"]) == ("5", "$120.00")
    (row,) = page.find("table", class_="files").find("tbody").find_all("tr")
    assert cells(row) == ["train_gpt.py", f"{len(script.encode()):,}",
                          hashlib.sha256(script.encode()).hexdigest()]
    env = {cells(row)[0]: cells(row)[1] for row in page.find("table", class_="env").find("tbody").find_all("tr")}
    # The values the participant set, except those whose names look like secrets.
    assert env == {"HF_TOKEN": "hidden: the name looks like a secret", "NUM_LAYERS": "11", "WARMUP": "20"}
    assert "hf_secretvalue" not in page.text()


def test_defaults_read_plainly(client: TestClient, session: Session) -> None:
    spec = facts(fetch(client, f"/experiments/{make_experiment(session).id}"), "spec-heading")

    assert (spec["Kind"], spec["Preset"], spec["Pods"]) == (
        "bundled trainer", "baseline", "one pod per seed")
    assert spec["Hardware"].startswith("the provider's default")
    assert (spec["Failed seeds"], spec["Adaptive seeding"], spec["Budget"]) == (
        "left as they are", "off (no max seeds; its α, 0.01, is unused)", "no cap of its own")


def test_ablation_rows_are_a_table(client: TestClient, session: Session) -> None:
    rows = [{"variant": "no-smear", "changes": {"smear_gate": False}, "n": 3, "seeds": [1, 2, 3],
             "mean_diff_bpb": 0.0021, "ci_low": 0.0009, "ci_high": 0.0033,
             "mean_diff_nats": 0.0021 * math.log(2), "t": 7.5, "df": 2, "p": 0.0173, "note": ""},
            {"variant": "wide", "changes": {"mlp_mult": 4, "num_layers": 9}, "n": 1,
             "seeds": [1], "mean_diff_bpb": -0.001, "ci_low": None, "ci_high": None,
             "mean_diff_nats": None, "t": None, "df": None, "p": None,
             "note": "fewer than 2 pairs"}]
    stats = {"ablation": {"control": {"n": 3, "mean_val_bpb": 1.2}, "rows": rows}}
    experiment = make_experiment(session, stats=stats, variants=[
        {"name": "no-smear", "config": {"smear_gate": False}},
        {"name": "wide", "config": {"mlp_mult": 4, "num_layers": 9}}])

    table = fetch(client, f"/experiments/{experiment.id}").find("table", class_="ablation")

    headers = [th.text() for th in table.find("thead").find_all("th")]
    assert headers == ["Variant", "Changes", "Pairs", "Δ val_bpb", "95% CI low", "95% CI high",
                       "Δ nats", "t", "df", "p"]
    first, second = (cells(row) for row in table.find("tbody").find_all("tr"))
    assert first == ["no-smear", "smear_gate=false", "3", "0.0021", "0.0009", "0.0033",
                     "0.001456", "7.5", "2", "0.0173"]
    assert second[:4] == ["wide", "mlp_mult=4, num_layers=9 fewer than 2 pairs", "1", "-0.001"]
    assert second[4:] == ["—"] * 6


def test_an_arm_that_ran_the_controls_settings_reads_as_not_a_result(client: TestClient,
                                                                    session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2], variants=[{"name": "mlp3", "config": {"mlp_mult": 3}}])
    for seed in (1, 2):  # the case: the variant ran the control's config, scores identical
        for arm in ("", "mlp3"):
            make_scored_run(session, experiment, seed=seed, val_bpb=1.3 + seed / 100, variant=arm,
                            results={"config": {"mlp_mult": 2, "num_layers": 2, "seed": seed}})
    finalize_experiment(session, experiment.id)

    page = fetch(client, f"/experiments/{experiment.id}")

    assert page.find("p", id="ablation-error").text().startswith(
        "Not a result: mlp3 ran the same settings as the control")
    (row,) = page.find("table", class_="ablation").find("tbody").find_all("tr")
    assert "mlp3 ran exactly the control's settings" in cells(row)[1]
    assert "0" not in cells(row)[2:] and cells(row)[3] == "—"  # no Δ 0


def test_add_seeds_queues_runs_and_reopens_a_finished_experiment(client: TestClient,
                                                                 session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds",
                                             reference_bpb=2.0).id
    token = form_token(client, f"/experiments/{experiment_id}")

    response = client.post(f"/experiments/{experiment_id}/seeds",
                           data={"csrf_token": token, "seeds": "7, 8"}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == f"/experiments/{experiment_id}"
    added = session.exec(select(Run).where(Run.experiment_id == experiment_id,
                                           Run.seed.in_([7, 8]))).all()  # type: ignore[attr-defined]
    assert sorted((r.seed, r.status) for r in added) == [(7, "queued"), (8, "queued")]
    session.rollback()
    page = fetch(client, f"/experiments/{experiment_id}")
    assert page.find("h1").text() == "three seeds running"


def test_add_seeds_problems_show_under_the_field(client: TestClient, session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds").id
    token = form_token(client, f"/experiments/{experiment_id}")

    for seeds, message in [("2, 9", "already used by this experiment: [2]"),
                           ("nine", "'nine' is not a whole number"),
                           ("", "give at least one seed, e.g. 1337, 42, 2025")]:
        response = client.post(f"/experiments/{experiment_id}/seeds",
                               data={"csrf_token": token, "seeds": seeds})
        assert response.status_code == 422, seeds
        field = parse(response.text).find("div", data_field="seeds")
        assert field.find("p", class_="field-error").text() == message
        assert field.find("input").attrs["value"] == seeds
    assert len(session.exec(select(Run).where(Run.experiment_id == experiment_id)).all()) == 3


def test_actions_need_the_owner_and_the_form_token(client: TestClient, session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds").id
    with Session(session.get_bind()) as other:
        stranger = create_token(other, name="stranger", role=Role.member)[1]
    token = form_token(client, f"/experiments/{experiment_id}")

    assert client.post(f"/experiments/{experiment_id}/seeds",
                       data={"seeds": "9"}).status_code == 403  # no form token
    assert client.post(f"/experiments/{experiment_id}/export", data={}).status_code == 403
    client.cookies.set("caddie_token", stranger)
    for action, data in (("seeds", {"seeds": "9"}), ("export", {})):
        response = client.post(f"/experiments/{experiment_id}/{action}",
                               data={"csrf_token": token, **data})
        assert response.status_code == 403, action
    assert len(session.exec(select(Run).where(Run.experiment_id == experiment_id)).all()) == 3


def test_export_downloads_the_records_folder(client: TestClient, session: Session) -> None:
    experiment_id = make_finished_experiment(session, SCORES, name="three seeds").id
    token = form_token(client, f"/experiments/{experiment_id}")

    response = client.post(f"/experiments/{experiment_id}/export", data={"csrf_token": token})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=") and disposition.endswith('.zip"')
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        top = names[0].split("/")[0]
        assert disposition == f'attachment; filename="{top}.zip"'
        submission = json.loads(archive.read(f"{top}/submission.json"))
    assert f"{top}/README.md" in names
    assert submission["val_bpb"] == pytest.approx(sum(SCORES) / 3)


def test_a_cancelled_experiment_offers_no_seeds(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, status="cancelled")
    make_run(session, experiment, seed=1, status="cancelled")

    page = fetch(client, f"/experiments/{experiment.id}")

    assert page.find_all("form", class_="add-seeds") == []
    assert page.find("form", class_="export").attrs["action"] == (
        f"/experiments/{experiment.id}/export")
