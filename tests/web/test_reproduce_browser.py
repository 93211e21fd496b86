"""The re-run action and verdict in a real headless Chromium: an imported record's page offers
"Reproduce this record", the plan shows the code's sha256 and the editable env, an edited
value is refused under the form or carried into the new experiment, and the verdict block
shows on the re-run's page, on the record's page and in the leaderboard's "Re-run" column; a
zip uploaded on the "Reproduce" form shows its plan and launches with an edited env."""

import hashlib
from pathlib import Path

import pytest
from playwright.sync_api import Page
from sqlmodel import Session, select

from server.models import Experiment, Run
from server.records import import_records
from tests.fixture_files import FIXTURES
from tests.web.live import LiveServer
from tests.web.test_browser import browser, page, screenshot  # noqa: F401  (fixtures)
from tests.web.test_reproduce_source_page import folder_zip

pytestmark = [pytest.mark.browser, pytest.mark.postgres,
              pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
GOOD = FIXTURES / "reproduce" / "records" / "good"
CARRIED = FIXTURES / "reproduce" / "records" / "carried"


def scored_like_claims(session: Session, rerun_id: int, worse_by: float) -> None:
    """The re-run's seeds as the worker leaves them (setup, not the state machine)."""
    rerun = session.get(Experiment, rerun_id)
    claims = {c["seed"]: c for c in rerun.source["reproduce"]["claims"]}
    for run in session.exec(select(Run).where(Run.experiment_id == rerun_id)).all():
        claim = claims[run.seed]
        run.status, run.val_bpb, run.val_loss = "succeeded", claim["val_bpb"] + worse_by, claim["val_loss"]
        run.bytes_total, run.train_time_s, run.eval_time_s = 7972, 0.6, 0.15
        session.add(run)
    session.commit()


def test_reproduce_action_plan_and_verdict(page: Page, live_server: LiveServer,  # noqa: F811
                                           session: Session, admin_token: str) -> None:
    page.context.add_cookies([{"name": "caddie_token", "value": admin_token, "url": live_server.url}])
    (imported,) = import_records(session, GOOD)
    page.goto(f"/experiments/{imported.experiment_id}")
    page.click("a.reproduce-action")
    page.wait_for_url("**/reproduce")
    sha = page.locator("table.files code.hash").first.inner_text()
    assert sha == hashlib.sha256((GOOD / "train_gpt.py").read_bytes()).hexdigest()
    assert "MATRIX_LR=0.025" in page.locator("#env").input_value()
    assert page.locator("#seed_env").input_value().splitlines()[-1] == "3: ITERATIONS=40"
    assert "$" in page.locator("p.estimate").inner_text()
    page.fill("#env", "LD_PRELOAD=/tmp/x.so")
    page.click("form.reproduce button[type=submit]")
    assert "LD_PRELOAD: reserved" in page.locator("ul.problems").inner_text()
    page.fill("#env", "NUM_LAYERS=11\nMATRIX_LR=0.03")
    page.select_option("#provider", "local")
    page.fill("#seeds", "1, 2")
    screenshot(page, "reproduce-plan")
    page.click("form.reproduce button[type=submit]")
    page.wait_for_url("**/experiments/*")
    rerun_id = int(Path(page.url).name)
    assert page.locator(".verdict-outcome").inner_text() == "running"
    created = session.get(Experiment, rerun_id)
    session.refresh(created)
    assert created.env == {"NUM_LAYERS": "11", "MATRIX_LR": "0.03"} and created.seeds == [1, 2]

    scored_like_claims(session, rerun_id, worse_by=0.02)
    page.reload()
    assert page.locator(".verdict-outcome").inner_text() == "not reproduced: score"
    assert "bpb worse than claimed" in page.locator("ul.verdict-reasons").inner_text()
    assert page.locator("table.verdict-seeds tbody tr").count() == 2
    screenshot(page, "reproduce-verdict")
    page.goto(f"/experiments/{imported.experiment_id}")
    block = page.locator("section.verdict")
    assert block.locator(f"a[href='/experiments/{rerun_id}']").count() == 1
    assert block.locator(".verdict-outcome").inner_text() == "not reproduced: score"

    record = session.get(Experiment, imported.experiment_id)
    session.refresh(record)
    page.goto(f"/?unverified=1&track={record.track}")
    column = page.locator(f"#experiment-{imported.experiment_id} td.rerun a")
    assert column.inner_text() == "not reproduced: score"
    column.click()
    page.wait_for_url(f"**/experiments/{rerun_id}")


def test_reproduce_a_zip_from_the_source_form(page: Page, live_server: LiveServer,  # noqa: F811
                                              session: Session, admin_token: str, tmp_path: Path) -> None:
    page.context.add_cookies([{"name": "caddie_token", "value": admin_token, "url": live_server.url}])
    archive = tmp_path / "carried.zip"
    archive.write_bytes(folder_zip(CARRIED))
    page.goto("/")
    page.click("nav a[href='/reproduce']")
    page.wait_for_url("**/reproduce")
    page.set_input_files("#zip-file", str(archive))
    page.click("form.reproduce-zip button[type=submit]")
    page.wait_for_url("**/reproduce/zip")
    assert "train_gpt_cuda.py" in page.locator("p.entrypoint").inner_text()
    model_row = page.locator("table.files tr", has_text="tokenizers/tok.model")
    model = (CARRIED / "tokenizers" / "tok.model").read_bytes()
    assert model_row.locator("code.hash").inner_text() == hashlib.sha256(model).hexdigest()
    assert page.locator("#env").input_value() == "QK_GAIN=5.0"
    page.fill("#env", "QK_GAIN=4.5\nNUM_LAYERS=3")
    page.select_option("#provider", "local")
    screenshot(page, "reproduce-zip-plan")
    page.click("form.reproduce button[type=submit]")
    page.wait_for_url("**/experiments/*")
    created = session.get(Experiment, int(Path(page.url).name))
    session.refresh(created)
    assert created.env == {"QK_GAIN": "4.5", "NUM_LAYERS": "3"}
    assert created.source["reproduce"]["entrypoint"] == "train_gpt_cuda.py"
    assert page.locator(".verdict-outcome").inner_text() == "running"

    page.goto("/reproduce")
    page.fill("#git-url", "ext::sh -c id")
    page.fill("#git-commit", "a" * 40)
    page.click("form.reproduce-git button[type=submit]")
    assert "source.url" in page.locator("ul.problems").inner_text()
    assert page.locator("#git-url").input_value() == "ext::sh -c id"
