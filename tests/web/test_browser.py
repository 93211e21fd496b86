"""The pages in a real headless Chromium (Debian `chromium`, driven by Playwright) against
the app on uvicorn over PostgreSQL. Screenshots go to test-artifacts/."""

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from server import records, runlog_stream
from server.models import Experiment
from server.tracks import NON_RECORD_TRACK, RECORD_TRACK
from tests.factories import (
    make_experiment,
    make_finished_experiment,
    make_log,
    make_run,
    make_scored_run,
)
from tests.web.live import LiveServer
from tests.web.test_experiment_page import import_tree
from tests.web.test_log_stream import append, line

pytestmark = [pytest.mark.browser, pytest.mark.postgres,
              pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, live_server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280,
                                                                       "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(5000)
    refused: list[str] = []  # what the pages' Content-Security-Policy blocked
    tab.on("console", lambda message: refused.append(message.text)
           if "Content Security Policy" in message.text else None)
    yield tab
    context.close()
    assert refused == []


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_leaderboard_numbers_sort_and_pages(page: Page, session: Session) -> None:
    for index in range(27):  # more than one page of 25
        scores = [1.3 - index * 0.001, 1.31 - index * 0.001, 1.305 - index * 0.001]
        make_finished_experiment(session, scores, name=f"exp-{index:02d}", author=f"a{index % 3}")

    page.goto("/")
    rows = page.locator("table.board > tbody.entry")
    assert rows.count() == 25
    first = rows.nth(0)
    assert first.locator("th.name a").inner_text() == "exp-26"
    assert first.locator("td.rank").inner_text() == "1"
    # mean of 1.274, 1.284, 1.279 and its sample std 0.005
    assert first.locator("td.mean").inner_text().split() == ["1.27900", "±", "0.00500"]
    assert first.locator("td.seeds").inner_text() == "3/3"
    first.locator("summary").click()
    assert first.locator("table.seeds tbody tr").count() == 3
    screenshot(page, "leaderboard")

    page.locator("a[data-sort=name]").click()
    page.wait_for_url("**/?sort=name")
    assert page.locator("table.board th.name a").first.inner_text() == "exp-00"
    page.locator("a[rel=next]").click()
    page.wait_for_url("**/?sort=name&page=2")
    assert page.locator("table.board th.name a").all_inner_texts() == ["exp-25", "exp-26"]


def test_run_page_shows_new_lines_within_a_second_and_plots_them(page: Page,
                                                                 session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1337, status="running")
    make_log(session, run, [line(1) + line(2)])

    page.goto(f"/runs/{run.id}")
    page.wait_for_selector("text=Live:")
    assert page.locator("polyline.series.train").get_attribute("data-count") == "2"

    append(run.id, line(3))
    # Locator assertions, not wait_for_function: the pages' CSP forbids evaluating strings.
    expect(page.locator("pre.log")).to_contain_text("step:3/40", timeout=1000)
    append(run.id, "step:3/40 val_loss:6.5000 val_bpb:3.9000 train_time:30ms\n")
    page.wait_for_selector("circle.dot.val", timeout=1000)
    assert page.locator("polyline.series.train").get_attribute("data-count") == "3"
    assert page.locator("pre.log").inner_text().count("step:3/40 train_loss") == 1
    assert page.locator(".loss-summary").inner_text() == (
        "Last train_loss 6.7000 at step 3; last val_loss 6.5000 at step 3.")
    screenshot(page, "run")


def test_submit_form_creates_an_experiment_and_shows_field_errors(page: Page, session: Session,
                                                                   admin_token: str) -> None:
    page.goto("/submit")
    assert page.locator("h1").inner_text().startswith("401")  # submitting needs a token
    page.click("text=Sign in with an API token")
    page.fill("#token", "cad_not-a-token")
    page.click("form.signin button[type=submit]")
    assert page.locator("#token-error").inner_text() == "the API token is unknown or revoked"
    page.fill("#token", admin_token)
    page.click("form.signin button[type=submit]")
    page.wait_for_url("**/submit")

    page.fill("#f-name", "browser baseline")
    page.fill("#f-seeds", "7, 8, 9")
    page.locator("details.overrides summary").click()
    page.fill("[id='f-config.num_layers']", "99")
    page.click("main button[type=submit]")

    error = page.locator("[data-field='config.num_layers'] .field-error")
    assert error.inner_text() == "must be <= 64, got 99"
    screenshot(page, "submit-invalid")

    page.fill("[id='f-config.num_layers']", "6")
    page.click("main button[type=submit]")
    page.wait_for_url("**/experiments/*")
    assert page.locator("h1").inner_text().startswith("browser baseline")
    assert page.locator("table.runs tbody tr").count() == 3
    screenshot(page, "experiment")


def test_compare_page(page: Page, session: Session) -> None:
    a = make_finished_experiment(session, [1.2001, 1.2012, 1.1995], name="better")
    b = make_finished_experiment(session, [1.2301, 1.2322, 1.2289], name="older")

    page.goto(f"/experiments/{a.id}")
    page.fill("#compare-b", str(b.id))
    page.click("form.compare button")
    page.wait_for_url(f"**/compare?a={a.id}&b={b.id}")
    assert "A is better" in page.locator("dd.verdict").inner_text()
    screenshot(page, "compare")


def test_run_page_resumes_the_log_after_a_dropped_connection(
        page: Page, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection is cut after one event; the browser reconnects with Last-Event-ID
    and the page shows each line once."""
    starts: list[int] = []
    real = runlog_stream.log_events

    async def one_event_per_connection(engine: Engine, run_id: int,
                                       offset: int) -> AsyncIterator[runlog_stream.LogEvent]:
        starts.append(offset)
        async for event in real(engine, run_id, offset):
            yield event
            return

    monkeypatch.setattr(runlog_stream, "log_events", one_event_per_connection)
    run = make_run(session, make_experiment(session), seed=5, status="running")
    make_log(session, run, [line(1)])

    page.goto(f"/runs/{run.id}")
    page.wait_for_selector("text=Live:")
    for n in (2, 3, 4):
        append(run.id, line(n))
        expect(page.locator("pre.log")).to_contain_text(f"step:{n}/40", timeout=4000)

    text = page.locator("pre.log").inner_text()
    assert [text.count(f"step:{n}/40 ") for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    first_offset = len(line(1).encode())
    assert starts[0] == first_offset and len(starts) >= 3
    assert starts == sorted(starts)  # each reconnect resumed further on, never from 0


def test_submit_page_estimate_follows_the_fields(page: Page, live_server: LiveServer,
                                                 admin_token: str) -> None:
    page.context.add_cookies([{"name": "caddie_token", "value": admin_token,
                               "url": live_server.url}])
    page.goto("/submit")
    estimate = page.locator("[data-estimate-text]")
    assert estimate.inner_text().startswith("$0.00 for 3 seeds")

    page.select_option("#f-provider", "runpod")
    page.fill("#f-seeds", "1, 2")
    # 2 seeds of 40 min (600 s + 600 s + 300 s grace + 900 s pod margin) at $21.52/hour.
    expect(estimate).to_have_text(re.compile(r"^\$28\.69 for 2 seeds"), timeout=3000)
    assert "40 min 00 s of pod time each" in estimate.inner_text()
    page.locator("details.overrides summary").click()
    page.fill("[id='f-config.max_wallclock_seconds']", "1200")
    expect(estimate).to_have_text(re.compile(r"^\$35\.87 for 2 seeds"), timeout=3000)
    assert "50 min 00 s of pod time each" in estimate.inner_text()
    screenshot(page, "submit-estimate")


def test_script_upload_experiment_actions_and_queue(page: Page, live_server: LiveServer,
                                                    session: Session, admin_token: str,
                                                    tmp_path: Path) -> None:
    page.context.add_cookies([{"name": "caddie_token", "value": admin_token,
                               "url": live_server.url}])
    script = tmp_path / "train_gpt.py"
    script.write_text("import os\nprint('seed', os.environ['SEED'])\n")
    page.goto("/submit")
    page.fill("#f-name", "own script")
    page.fill("#f-seeds", "1, 2")
    page.set_input_files("[id='f-file.train_gpt.py']", str(script))
    page.fill("#f-env", "SEED=4")
    page.click("main button[type=submit]")
    assert page.locator("[data-field=env] .field-error").inner_text() == (
        "SEED: reserved (set by Caddie or unsafe to change)")
    page.set_input_files("[id='f-file.train_gpt.py']", str(script))  # chosen again
    page.fill("#f-env", "NUM_LAYERS=11")
    page.select_option("#f-failure_policy", "retry")
    page.click("main button[type=submit]")
    page.wait_for_url("**/experiments/*")
    assert page.locator("dd.kind").inner_text() == "own script (train_gpt.py)"
    assert page.locator("table.files tbody th").inner_text() == "train_gpt.py"
    page.fill("#add-seeds", "1")
    page.click("form.add-seeds button")
    assert page.locator("[data-field=seeds] .field-error").inner_text().startswith(
        "already used by this experiment")
    screenshot(page, "experiment-script")

    page.goto("/queue")
    assert page.locator("table.queue tbody tr").count() == 1
    screenshot(page, "queue")


def test_experiment_page_with_its_test_and_reference(page: Page, live_server: LiveServer,
                                                     session: Session, admin_token: str) -> None:
    page.context.add_cookies([{"name": "caddie_token", "value": admin_token,
                               "url": live_server.url}])
    experiment = make_finished_experiment(session, [1.20576485, 1.20617460, 1.20715923],
                                          name="reference line", reference_bpb=1.2266)
    page.goto(f"/experiments/{experiment.id}")
    assert page.locator("svg.seed-plot line.reference").count() == 2  # the plot's and the key's
    assert page.locator("dd.test-name").inner_text() == "one-sided one-sample t-test"
    with page.expect_download() as download:
        page.click("form.export button")
    assert download.value.suggested_filename.endswith(".zip")
    screenshot(page, "experiment-statistics")


def test_sign_in_shows_who_in_the_nav_and_the_form_takes_variants(page: Page, session: Session,
                                                                  live_server: LiveServer, admin_token: str) -> None:
    page.goto("/submit")
    assert page.locator("h1").inner_text().startswith("401")
    nav = page.locator("header.site nav")
    assert nav.locator("a[href='/signin']").inner_text() == "Sign in"
    page.click("text=Sign in with an API token")
    page.fill("#token", admin_token)
    page.click("form.signin button[type=submit]")
    page.wait_for_url("**/submit")
    assert nav.locator("#signed-in").inner_text() == "Signed in as admin"
    assert nav.locator("a[href='/signin']").count() == 0
    screenshot(page, "nav-signed-in")

    page.fill("#f-name", "ablate mlp and depth")
    page.fill("#f-seeds", "1, 2")
    page.fill("#f-variants", "mlp3: mlp_mult=3\nlayers3: num_layers=3")
    screenshot(page, "submit-variants")
    page.click("main button[type=submit]")
    page.wait_for_url("**/experiments/*")
    arms = page.locator("table.runs tbody tr")
    assert arms.count() == 6  # 2 seeds × (control + 2 variants)
    with Session(session.get_bind()) as fresh:
        (experiment,) = fresh.exec(select(Experiment)).all()
        assert experiment.variants == [{"name": "mlp3", "config": {"mlp_mult": 3}},
                                       {"name": "layers3", "config": {"num_layers": 3}}]

    nav.locator("form.signout button").click()
    page.wait_for_url(f"{live_server.url}/")
    assert nav.locator("a[href='/signin']").inner_text() == "Sign in"
    assert nav.locator("#signed-in").count() == 0


def test_api_docs_render_with_no_network(page: Page, live_server: LiveServer) -> None:
    outside: list[str] = []

    def only_this_server(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", only_this_server)
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)  # a 1.5 MB script on a busy machine
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("Caddie")
    assert page.locator(".opblock-summary-path[data-path='/api/experiments']").count() >= 1
    assert outside == []  # nothing was fetched from anywhere else
    screenshot(page, "api-docs-offline")


def logged_run(session: Session, experiment: Experiment, seed: int, start: float, variant: str = "") -> None:
    run = make_scored_run(session, experiment, seed=seed, val_bpb=start / 2, variant=variant)
    lines = [f"step:{step}/100 train_loss:{start - step / 80:.4f} train_time:{step}ms step_avg:1.00ms"
             for step in range(10, 101, 10)]
    lines += [f"step:100/100 val_loss:{start - 1.1:.4f} val_bpb:{(start - 1.1) / 1.6:.4f} train_time:100ms",
              f"final_int8_zlib_roundtrip_exact val_loss:{start - 1.08:.8f} val_bpb:{(start - 1.08) / 1.6:.8f}"]
    make_log(session, run, ["\n".join(lines) + "\n"])


def test_compare_picks_experiments_and_overlays_their_curves(page: Page, session: Session) -> None:
    wide = make_experiment(session, name="wide mlp", preset="tiny", seeds=[1, 2], config={"mlp_mult": 3})
    deep = make_experiment(session, name="deeper", preset="tiny", seeds=[1, 2], config={"num_layers": 3})
    other = make_experiment(session, name="not picked", preset="tiny", seeds=[1])
    for experiment, shift in ((wide, 0.0), (deep, 0.15), (other, 0.3)):
        for seed in experiment.seeds:
            logged_run(session, experiment, seed, 4.0 + shift + seed / 50)

    page.goto("/compare")
    assert page.locator("form.compare-pick tbody tr").count() == 3
    page.check(f"#pick-{wide.id}")
    page.check(f"#pick-{deep.id}")
    screenshot(page, "compare-pick")
    page.click("form.compare-pick button[type=submit]")
    page.wait_for_url(f"**/compare?ids={deep.id}&ids={wide.id}")  # the list is newest first

    loss = page.locator("figure[data-overlay=loss] svg")
    assert loss.is_visible()
    labels = loss.locator("g.run").evaluate_all("(gs) => gs.map((g) => g.dataset.label)")
    assert labels == [f"#{deep.id} seed 1", f"#{deep.id} seed 2", f"#{wide.id} seed 1", f"#{wide.id} seed 2"]
    assert page.locator("figure[data-overlay=bpb] svg g.run").count() == 4
    diff = page.locator("table.config-diff tbody tr")
    assert diff.locator("th").all_inner_texts() == ["mlp_mult", "num_layers"]
    assert page.locator("dd.verdict").count() == 1  # two picked: Welch's test between them
    screenshot(page, "compare-overlay")

    page.goto(f"/experiments/{wide.id}")
    assert page.locator("figure[data-overlay=loss] svg g.run").count() == 2
    screenshot(page, "experiment-curves")


def test_track_switch_and_an_imports_page(page: Page, session: Session, tmp_path: Path) -> None:
    make_finished_experiment(session, [1.12, 1.12, 1.13], name="ten minutes")
    make_finished_experiment(session, [1.00, 1.01, 1.00], name="two hours", track=NON_RECORD_TRACK)
    records.import_records(session, import_tree(tmp_path / "records"), reference_bpb=2.0)

    page.goto("/")
    assert page.locator("table.board th.name a").all_inner_texts() == ["ten minutes"]
    page.locator(f"a[data-track={NON_RECORD_TRACK}]").click()
    page.wait_for_url(f"**/?track={NON_RECORD_TRACK}")
    assert page.locator("p.track-name").inner_text().startswith("non-record track")
    assert page.locator("table.board th.name a").all_inner_texts() == ["two hours"]
    assert page.locator("table.board td.rank").all_inner_texts() == ["1"]
    screenshot(page, "leaderboard-non-record-track")

    page.locator(f"a[data-track={RECORD_TRACK}]").click()
    page.locator("a[data-filter=unverified]").click()
    page.wait_for_url("**/?unverified=1")
    imported = page.locator("tbody.entry", has_text="Optimistic")
    assert imported.locator(".badge.unverified").inner_text() == (
        "score read from the submission's logs")
    screenshot(page, "leaderboard-every-score")

    imported.locator("th.name a").click()
    section = page.locator("section.import")
    assert section.locator("dd.accepted").is_visible()
    assert section.locator("ul.disagreements li").count() >= 2
    assert "None" not in section.inner_text()
    assert page.locator("dd.source").inner_text().endswith("2026-04-12_Optimistic")
    screenshot(page, "experiment-import")
