"""GET /runs/{id}: status, timeline, verification checklist, loss points, log and its live
stream URL; downloads (log, results.json, artifact); cancel."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server import runlog
from server.runs import transition
from server.states import RunStatus
from tests.factories import make_experiment, make_log, make_pod, make_run, make_scored_run
from tests.web.dom import Element, cells, fetch, form_token
from web import curves
from web.pages import LOG_TAIL_BYTES

LOG = ["step:1/20 train_loss:6.93 train_time:10ms step_avg:10.00ms\n",
       "step:2/20 train_loss:6.51 train_time:20ms <b>not markup</b>\n",
       "final_int8_zlib_roundtrip_exact val_loss:2.07 val_bpb:1.2244 — ok ✓\n"]


def checklist(page: Element) -> dict[str, tuple[str, str, str, str]]:
    """Rule -> (limit, measured, result, row class)."""
    rows = page.find("table", class_="checklist").find("tbody").find_all("tr")
    table = {}
    for row in rows:
        rule, limit, measured, result = cells(row)
        table[rule] = (limit, measured, result, row.classes()[1])
    return table


def test_checklist_of_an_eligible_run(client: TestClient, session: Session) -> None:
    run = make_scored_run(session, make_experiment(session), seed=1337, val_bpb=1.2244,
                          bytes_total=15_912_345, code_bytes=47_345, model_bytes=15_865_000,
                          train_time_s=598.25, eval_time_s=71.04)

    checks = checklist(fetch(client, f"/runs/{run.id}"))

    assert checks == {
        "Artifact size (code + model)": (
            "≤ 16,000,000 bytes",
            "15,912,345 bytes (code 47,345 + model 15,865,000); 87,655 to spare", "✓ pass",
            "pass"),
        "Train time": ("≤ 600 s", "598.2 s", "✓ pass", "pass"),
        "Eval time": ("≤ 600 s", "71.0 s", "✓ pass", "pass"),
        "Full validation split": (
            "full split: sp1024 62,021,632, sp4096 45,508,608, sp8192 40,540,160 tokens",
            "62,021,632 tokens (sp1024)", "✓ pass", "pass"),
        "Hardware": ("8 × H100", "8 × NVIDIA H100 80GB HBM3", "✓ pass", "pass"),
    }


def test_limits_are_inclusive(client: TestClient, session: Session) -> None:
    run = make_scored_run(session, make_experiment(session), seed=1, val_bpb=1.2,
                          bytes_total=16_000_000, code_bytes=None, train_time_s=600.0,
                          eval_time_s=600.0)

    checks = checklist(fetch(client, f"/runs/{run.id}"))

    assert checks["Artifact size (code + model)"][1:3] == ("16,000,000 bytes; 0 to spare",
                                                           "✓ pass")
    assert (checks["Train time"][2], checks["Eval time"][2]) == ("✓ pass", "✓ pass")


def test_checklist_of_a_run_that_breaks_the_rules(client: TestClient, session: Session) -> None:
    reasons = ["bytes_total 16,000,001 > 16,000,000", "train time 601.5 s > 600 s",
               "eval time unknown", "val_tokens 4096 is not a full official validation split",
               "hardware 1×NVIDIA A100-SXM4-40GB is not 8×H100"]
    run = make_scored_run(session, make_experiment(session), seed=3, val_bpb=1.3,
                          bytes_total=16_000_001, code_bytes=None, train_time_s=601.5,
                          eval_time_s=None, val_tokens=4096, gpu_name="NVIDIA A100-SXM4-40GB",
                          gpu_count=1, eligible=False, reasons=reasons)

    page = fetch(client, f"/runs/{run.id}")

    checks = checklist(page)
    assert checks["Artifact size (code + model)"][1:] == ("16,000,001 bytes; 1 over", "✗ fail",
                                                          "fail")
    assert checks["Train time"][1:] == ("601.5 s", "✗ fail", "fail")
    assert checks["Eval time"][1:] == ("—", "not measured", "unknown")
    assert checks["Full validation split"][1:] == ("4,096 tokens (not a full split)", "✗ fail",
                                                   "fail")
    assert checks["Hardware"][1:] == ("1 × NVIDIA A100-SXM4-40GB", "✗ fail", "fail")
    assert [li.text() for li in page.find("ul", class_="reasons").find_all("li")] == reasons
    assert page.find("span", class_="badge").attrs["title"].split("\n") == reasons


def test_a_queued_run_has_nothing_measured(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=9)

    page = fetch(client, f"/runs/{run.id}")

    assert {c[2] for c in checklist(page).values()} == {"not measured"}
    assert page.find("p", class_="empty").text() == "No log stored yet."
    form = page.find("form", class_="cancel")
    assert form.attrs["action"] == f"/runs/{run.id}/cancel"


def test_status_reason_and_timeline(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, name="timeline")
    experiment_id, run_id = experiment.id, make_run(session, experiment, seed=5).id
    transition(session, run_id, RunStatus.provisioning, fence=None)
    transition(session, run_id, RunStatus.failed, fence=None, reason="no host free")

    page = fetch(client, f"/runs/{run_id}")

    assert page.find("h1").text() == "Seed 5 failed"
    assert page.find("p", class_="reason").text() == "Why it ended: no host free"
    assert page.find("p", class_="crumbs").find_all("a")[1].attrs["href"] == (
        f"/experiments/{experiment_id}")
    steps = page.find("ol", class_="timeline").find_all("li")
    assert [li.attrs["data-status"] for li in steps] == ["queued", "provisioning", "failed"]
    assert steps[2].find("span", class_="why").text() == "no host free"
    assert steps[0].find_all("span", class_="elapsed") == []
    assert steps[2].find("span", class_="elapsed").text().startswith("after ")
    for li in steps:
        stamp = li.find("time").attrs["datetime"]
        assert stamp.endswith("Z") and len(stamp) == len("2026-05-01T12:00:00Z")
    assert page.find("main").find_all("form") == []  # the nav's sign-out aside


def test_log_is_shown_and_downloadable(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG)

    page = fetch(client, f"/runs/{run.id}")

    assert page.find("pre", class_="log").raw_text() == "".join(LOG)
    link = page.find("ul", class_="downloads").find_all("a")[0]
    assert link.attrs["href"] == f"/runs/{run.id}/train.log"
    response = client.get(link.attrs["href"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == "".join(LOG).encode()


def test_long_log_shows_its_last_whole_lines(client: TestClient, session: Session) -> None:
    lines = [f"step:{i}/5000 train_loss:{i / 1000:.3f} train_time:{i * 10}ms\n"
             for i in range(1, 5001)]
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, ["".join(lines[:2500]), "".join(lines[2500:])])

    shown = fetch(client, f"/runs/{run.id}").find("pre", class_="log").raw_text()

    assert len(shown.encode()) <= LOG_TAIL_BYTES
    assert shown.endswith(lines[-1])
    first = shown.splitlines(keepends=True)[0]
    assert first in lines and shown == "".join(lines[lines.index(first):])


def test_download_joins_reads_of_a_long_log(client: TestClient, session: Session,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlog, "MAX_READ_BYTES", 50)  # several reads for the few lines below
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG * 3)

    assert client.get(f"/runs/{run.id}/train.log").content == ("".join(LOG) * 3).encode()


def test_cancel_run_form(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1)

    token = form_token(client, f"/runs/{run.id}")

    response = client.post(f"/runs/{run.id}/cancel", data={"csrf_token": token},
                           follow_redirects=False)

    assert (response.status_code, response.headers["location"]) == (303, f"/runs/{run.id}")
    page = fetch(client, f"/runs/{run.id}")
    assert page.find("h1").text() == "Seed 1 cancelled"
    assert client.post(f"/runs/{run.id}/cancel", data={"csrf_token": token}).status_code == 409


def test_unknown_run_is_a_404_page(client: TestClient) -> None:
    assert fetch(client, "/runs/404", status=404).find("ul", class_="problems").text() == (
        "run 404 not found")
    assert fetch(client, "/runs/404/train.log", status=404).find("h1").text() == "404 Not Found"


def test_live_log_starts_where_the_shown_tail_ends(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG)

    pre = fetch(client, f"/runs/{run.id}").find("pre", class_="log")

    assert pre.attrs["data-stream"] == f"/api/runs/{run.id}/logs/stream?offset={run.log_offset}"
    assert "data-final" not in pre.attrs


def test_ended_run_is_not_followed(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="failed")
    make_log(session, run, LOG)

    page = fetch(client, f"/runs/{run.id}")

    assert "data-final" in page.find("pre", class_="log").attrs
    assert "has ended" in page.find("p", class_="live").text()


def test_loss_points_come_from_the_whole_stored_log(client: TestClient, session: Session) -> None:
    lines = [f"step:{i}/400 train_loss:{8 - i / 100:.4f} train_time:{i}ms step_avg:1.00ms\n"
             for i in range(1, 401)]
    lines.insert(200, "step:200/400 val_loss:5.5000 val_bpb:3.1000 train_time:200ms\n")
    lines.append("step:400/400 val_loss:4.2500 val_bpb:2.5000 train_time:400ms\n")
    run = make_run(session, make_experiment(session), seed=1, status="running")
    # More than the shown tail: the chart still gets the first points.
    make_log(session, run, ["".join(lines)] + ["x" * 1000 + "\n"] * 70)

    page = fetch(client, f"/runs/{run.id}")

    points = json.loads(page.find("script", id="loss-points").raw_text())
    assert points["train"][0] == [1, 7.99] and points["train"][-1] == [400, 4.0]
    assert len(points["train"]) == 400
    assert points["val"] == [[200, 5.5], [400, 4.25]]
    assert page.find("span", class_="loss-summary").text() == (
        "Last train_loss 4.0000 at step 400; last val_loss 4.2500 at step 400.")


def test_results_and_artifact_downloads(client: TestClient, session: Session,
                                        data_dir: Path) -> None:
    results = {"val_bpb": 1.2, "artifact_file": "model.ptz"}
    run = make_scored_run(session, make_experiment(session), seed=1, val_bpb=1.2,
                          results=results)
    folder = data_dir / "runs" / str(run.id)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "model.ptz").write_bytes(b"\x00\x01artifact")

    page = fetch(client, f"/runs/{run.id}")
    links = {a.attrs["data-download"]: a.attrs["href"]
             for a in page.find("ul", class_="downloads").find_all("a") if "data-download" in a.attrs}

    assert links == {"results.json": f"/runs/{run.id}/results.json",
                     "artifact": f"/runs/{run.id}/artifact"}
    assert client.get(links["results.json"]).json() == results
    artifact = client.get(links["artifact"])
    assert artifact.content == b"\x00\x01artifact"
    assert "model.ptz" in artifact.headers["content-disposition"]


def test_downloads_missing_files_are_404_and_not_linked(client: TestClient,
                                                       session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")

    page = fetch(client, f"/runs/{run.id}")

    assert [a for a in page.find("ul", class_="downloads").find_all("a")
            if "data-download" in a.attrs] == []
    assert client.get(f"/runs/{run.id}/results.json").status_code == 404
    assert client.get(f"/runs/{run.id}/artifact").status_code == 404
    assert client.get("/runs/999/results.json").status_code == 404


def test_artifact_name_cannot_leave_the_runs_folder(client: TestClient, session: Session,
                                                    data_dir: Path) -> None:
    secret = data_dir / "caddie.secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    secret.write_text("not for download")
    run = make_scored_run(session, make_experiment(session), seed=1, val_bpb=1.2,
                          results={"artifact_file": "../../caddie.secret"})
    (data_dir / "runs" / str(run.id)).mkdir(parents=True)

    response = client.get(f"/runs/{run.id}/artifact")

    assert response.status_code == 404
    assert "not for download" not in response.text


def test_cost_so_far_of_a_rented_pod(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, provider="runpod")
    rented = make_scored_run(session, experiment, seed=1, val_bpb=1.2)
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    make_pod(session, rented, cost_per_hour=21.52, created_at=start,
             terminated_at=start + timedelta(minutes=30))
    local = make_scored_run(session, make_experiment(session), seed=1, val_bpb=1.2)

    assert fetch(client, f"/runs/{rented.id}").find("dd", class_="cost").text() == "$10.76"
    assert fetch(client, f"/runs/{local.id}").find("dd", class_="cost").text() == "—"


def test_pages_and_api_answers_carry_the_security_headers(
        client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    for path in (f"/runs/{run.id}", f"/api/runs/{run.id}", "/static/app.js", "/nowhere"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "same-origin"
        policy = headers["content-security-policy"]
        # Only this site's own script and style files run: no inline code, no framing.
        assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy
        assert "frame-ancestors 'none'" in policy


def test_curves_come_from_the_downloaded_metrics_file(client: TestClient, session: Session,
                                                      data_dir: Path) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="succeeded")
    make_log(session, run, ["step:1/2 train_loss:9.0000 train_time:1ms\n"])  # not read
    folder = data_dir / "runs" / str(run.id)
    folder.mkdir(parents=True)
    events = [{"event": "phase", "phase": "train", "state": "start", "elapsed_ms": 0},
              {"event": "train_step", "step": 1, "train_loss": 6.5, "train_time_ms": 10},
              {"event": "val", "step": 2, "val_loss": 5.25, "val_bpb": 3.1},
              {"event": "train_step", "step": 2, "train_loss": float("nan")},
              {"event": "final", "tag": "final_int8_zlib_roundtrip_exact", "val_loss": 5.0,
               "val_bpb": 3.0, "eval_time_ms": 20}]
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events) + '{"event": "train_st')  # cut short

    page = fetch(client, f"/runs/{run.id}")

    points = json.loads(page.find("script", id="loss-points").raw_text())
    assert points == {"train": [[1, 6.5]], "val": [[2, 5.25]], "val_bpb": [[2, 3.1]],
                      "final": [[2, 5.0]], "final_bpb": [[2, 3.0]]}


def test_curves_of_a_huge_log_read_only_its_ends(client: TestClient, session: Session,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without metrics.jsonl, a log over twice the window gives the points of its first and
    last LOG_SCAN_BYTES: a page view no longer reads a 197 MB log whole."""
    monkeypatch.setattr(curves, "LOG_SCAN_BYTES", 2000)
    lines = [f"step:{i}/400 train_loss:{8 - i / 100:.4f} train_time:{i}ms\n" for i in range(1, 401)]
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, ["".join(lines[:200]), "".join(lines[200:])])
    read: list[int] = []
    read_log = runlog.read_log
    monkeypatch.setattr(runlog, "read_log", lambda s, r, offset, limit: (
        read.append(limit), read_log(s, r, offset=offset, limit=limit))[1])

    page = fetch(client, f"/runs/{run.id}")

    steps = [step for step, _ in json.loads(page.find("script", id="loss-points").raw_text())["train"]]
    assert steps[0] == 1 and steps[-1] == 400 and 200 not in steps
    assert steps == sorted(steps) and len(steps) > 40
    assert sum(read) <= 2 * 2000 + LOG_TAIL_BYTES  # the curves' two windows and the tail


def test_the_log_download_is_streamed(client: TestClient, session: Session,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlog, "MAX_READ_BYTES", 50)
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG * 3)

    with client.stream("GET", f"/runs/{run.id}/train.log") as response:
        assert "content-length" not in response.headers  # sent as it is read, not built whole
        pieces = list(response.iter_raw())
    assert b"".join(pieces) == ("".join(LOG) * 3).encode()
    assert client.get("/runs/4242/train.log").status_code == 404


def test_the_chart_carries_the_final_val_loss_of_the_scored_model(client: TestClient, session: Session) -> None:
    log = ("step:100/200 train_loss:3.1000 train_time:100ms step_avg:1.00ms\n"
           "step:200/200 val_loss:2.9000 val_bpb:1.7000 train_time:200ms step_avg:1.00ms\n"
           "final_int8_zlib_roundtrip val_loss:2.9512 val_bpb:1.7400 eval_time:300ms\n"
           "final_int8_zlib_roundtrip_exact val_loss:2.95123456 val_bpb:1.74012345\n")
    run = make_run(session, make_experiment(session), seed=1, status="succeeded")
    make_log(session, run, [log])

    page = fetch(client, f"/runs/{run.id}")

    points = json.loads(page.find("script", id="loss-points").raw_text())
    assert points["final"] == [[200, 2.95123456]]  # the _exact line, at the last step
    assert points["final_bpb"] == [[200, 1.74012345]] and points["val_bpb"] == [[200, 1.7]]
    assert page.find("span", class_="final-loss").text() == "Final val_loss 2.9512."
    assert page.find("figure", class_="loss-chart").find("svg").attrs["viewbox"] == "0 0 960 360"  # the parser lowers names
