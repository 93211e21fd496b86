"""The runpod provider against a local stand-in of RunPod's API whose pod is a real sshd."""

import json
import os
import signal
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from server import costs
from server.experiments import cancel_run
from server.models import Experiment, LogChunk, Pod, Run, RunEvent
from server.states import FINAL_RUN_STATUSES, RunStatus
from tests.worker.conftest import FETCH_ALLOWANCE_S
from tests.worker.harness import drive, new_run, read_run, running_past_its_deadline
from tests.worker.runpod_standin import ACCOUNT_KEY
from worker import reconciler
from worker.errors import StepFailed
from worker.providers import RetryLater
from worker.providers.runpod import NoCapacity, RunPodAPI, RunPodProvider

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)


def pod_rows(engine) -> list[Pod]:
    with Session(engine) as session:
        return list(session.exec(select(Pod).order_by(Pod.id)).all())


def creates(runpod) -> list[dict]:
    """The input of every create Caddie sent (GraphQL podFindAndDeployOnDemand; never v2's POST)."""
    assert runpod.count("POST", "/v2/pods") == 0
    return runpod.deploys()


def everything_written(engine, folder: Path) -> str:
    """Every row of the run tables and every file under folder, as one text to search."""
    parts = []
    with Session(engine) as session:
        for table in (Run, Pod, LogChunk, RunEvent):
            parts += [json.dumps(row.model_dump(), default=str) for row in session.exec(select(table)).all()]
    parts += [p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file()]
    return "\n".join(parts)


def stop_watchdog(run_dir: Path) -> int:
    """Kill the watchdog this test's run started (`bash watchdog.sh` in run_dir); how many there were."""
    for _ in range(100):  # launch.sh starts it just after the run is marked running
        if (run_dir / "watchdog.out").exists():
            break
        time.sleep(0.05)
    killed = 0
    for proc in Path("/proc").iterdir():
        try:
            found = (proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == run_dir
                     and b"watchdog.sh" in (proc / "cmdline").read_bytes())
        except OSError:
            continue
        if found:
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


@pytest.mark.faults
def test_a_run_on_runpod_succeeds_and_its_pod_is_terminated(runpod_director, runpod, engine, runpod_settings,
                                                            caplog):
    caplog.set_level("DEBUG")
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.connecting})
    rented_until = pod_rows(engine)[0].deadline_at.replace(tzinfo=UTC)  # before the data fetch moves it on
    drive(runpod_director, run_id, until={RunStatus.running})
    key_file = runpod_settings.data_dir.resolve() / "keys" / f"caddie-run-{run_id}"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The pod's private key, whole and a line at a time (its public half is all a pod gets).
    private = [key_file.read_text().strip()] + [
        line for line in key_file.read_text().splitlines() if line and "-----" not in line]
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason

    (body,) = creates(runpod)
    assert set(body) == {"name", "imageName", "gpuTypeId", "gpuCount", "cloudType", "containerDiskInGb",
                         "volumeInGb", "ports", "supportPublicIp", "startSsh", "env", "terminateAfter"}
    assert body["name"] == f"caddie-run-{run_id}" and body["imageName"] == runpod_settings.runpod_image
    assert (body["gpuTypeId"], body["gpuCount"]) == ("NVIDIA H100 80GB HBM3", 8)
    assert (body["cloudType"], body["ports"], body["containerDiskInGb"], body["volumeInGb"]) == (
        "SECURE", "22/tcp", runpod_settings.runpod_disk_gb, 0)
    (env,) = body["env"]
    assert env["key"] == "PUBLIC_KEY" and env["value"].startswith("ssh-ed25519 ")
    (pod,) = pod_rows(engine)
    assert (pod.status, pod.host, pod.port) == ("terminated", "127.0.0.1", runpod.sshd.port)
    assert runpod.live() == [] and pod.external_id in runpod.ended and runpod.ended_by_deadline == {}
    # RunPod's own stop is the pod's deadline plus the data-download allowance, in UTC, to the
    # second (never before it).
    stop = datetime.fromisoformat(body["terminateAfter"])
    assert body["terminateAfter"].endswith("+00:00")
    assert 0 <= (stop - rented_until).total_seconds() - FETCH_ALLOWANCE_S < 1
    assert runpod.ended[pod.external_id]["terminate_after"] == stop
    assert [r.status for r in runpod.requests if r.method == "DELETE"] == [204]
    assert not key_file.exists()  # the pod is gone; so is its key

    watchdog = Path(run.remote_dir, "watchdog.sh").read_text()
    assert f"{runpod.url}/v2/pods/" in watchdog and "RUNPOD_API_KEY" in watchdog
    sent_to_pod = everything_written(engine, Path(runpod_settings.runpod_workdir))
    assert "train_loss" in sent_to_pod  # the search covers the log and files
    assert ACCOUNT_KEY not in sent_to_pod + json.dumps(body) + caplog.text
    assert "RUNPOD_API_KEY" not in json.dumps(body)  # RunPod puts the pod's own key there; never ours
    assert len(private) > 2 and not [p for p in private if p in sent_to_pod + json.dumps(body) + caplog.text]


def test_a_data_download_that_would_outlast_runpods_deadline_fails_the_run(runpod_director, runpod, engine,
                                                                           runpod_settings):
    runpod_director.settings = runpod_settings.model_copy(update={"pod_fetch_allowance_s": 0.0})
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason.startswith("the data download took so long that the provider would end the pod at ")
    assert runpod.live() == []


def test_a_redelivered_create_adopts_the_pod_made_before(runpod_director, runpod, engine, runpod_settings):
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.provisioning})
    # The earlier try made the key and the pod, then died before it wrote the pod's id down.
    name = f"caddie-run-{run_id}"
    public = RunPodProvider(runpod_settings).public_key(Pod(provider="runpod", name=name))
    made = runpod.add_pod(name, status="STARTING", public_key=public)
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert creates(runpod) == []
    assert pod_rows(engine)[0].external_id == made and runpod.live() == []


@pytest.mark.faults
def test_a_create_whose_answer_is_lost_makes_one_pod(runpod_director, runpod, engine):
    runpod.faults["create"] = ["made-then-timeout"]
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.connecting})
    # The adopting try asked for a later deadline; the pod keeps the one RunPod was told.
    (body,) = creates(runpod)
    assert pod_rows(engine)[0].deadline_at.replace(tzinfo=UTC) + timedelta(seconds=FETCH_ALLOWANCE_S) == (
        datetime.fromisoformat(body["terminateAfter"]))
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert len(creates(runpod)) == 1 and len(runpod.ended) == 1 and runpod.live() == []


@pytest.mark.faults
def test_5xx_and_timeouts_are_retried(runpod_director, runpod, engine):
    runpod.faults["create"] = ["500", "timeout"]
    run_id = new_run(engine, provider="runpod")
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert len(creates(runpod)) == 3 and len(runpod.ended) == 1 and runpod.live() == []


@pytest.mark.faults
def test_no_capacity_fails_clearly_after_the_tries_with_no_pod_left(runpod_director, runpod, engine):
    runpod.faults["create"] = ["capacity"] * 3
    run_id = new_run(engine, provider="runpod")
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "failed"
    assert run.reason.startswith("RunPod has no capacity for 8 x NVIDIA H100 80GB HBM3 on SECURE cloud")
    assert run.reason.endswith("(after 3 attempts)")
    assert len(creates(runpod)) == 3 and runpod.live() == []
    assert pod_rows(engine)[0].status == "terminated"


@pytest.mark.faults
def test_graphql_capacity_errors_move_through_the_data_centres_then_fail_naming_them(runpod_director, runpod,
                                                                                    engine, runpod_settings):
    runpod.full_centers = {"EU-RO-1", "US-KS-2"}
    runpod_director.settings = runpod_settings.model_copy(update={"runpod_data_centers": "EU-RO-1, US-KS-2"})
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == ("RunPod has no capacity for 8 x NVIDIA H100 80GB HBM3 on SECURE cloud in EU-RO-1, "
                          "US-KS-2: There are no longer any instances available with the requested "
                          "specifications. (after 3 attempts)")
    assert [b["dataCenterId"] for b in creates(runpod)] == ["EU-RO-1", "US-KS-2"] * 3
    assert all(r.status == 200 for r in runpod.requests if r.path == "/graphql")  # GraphQL's way to refuse
    assert runpod.live() == [] and pod_rows(engine)[0].status == "terminated"


@pytest.mark.faults
def test_runpods_own_deadline_ends_the_pod_when_the_watchdog_and_reconciler_do_not(runpod_director, runpod,
                                                                                    engine):
    run_id = new_run(engine, provider="runpod", fake_mode="sleep")
    run = drive(runpod_director, run_id, until={RunStatus.running})
    assert stop_watchdog(Path(run.remote_dir))  # the pod's own stop is off; no reconciler runs here
    (pod,) = pod_rows(engine)
    (body,) = creates(runpod)
    stop = datetime.fromisoformat(body["terminateAfter"])

    runpod.clock_offset_s = (stop - datetime.now(UTC)).total_seconds() - 2  # RunPod's clock: 2 s before
    time.sleep(0.5)
    assert [p["id"] for p in runpod.live()] == [pod.external_id]
    runpod.clock_offset_s += 2.5  # and past it
    for _ in range(100):
        if not runpod.live():
            break
        time.sleep(0.05)
    assert runpod.live() == [] and stop <= runpod.ended_by_deadline[pod.external_id] < stop + timedelta(seconds=2)

    run = drive(runpod_director, run_id, until=FINAL)  # the pod is gone: SSH to it fails, the run fails
    assert run.status == "failed" and "(after 3 attempts)" in run.reason, run.reason
    assert pod_rows(engine)[0].status == "terminated" and runpod.live() == []


def test_a_refused_key_fails_at_once_without_the_key_in_the_reason(runpod_settings, engine, finalized, runpod):
    from pydantic import SecretStr

    from tests.worker.harness import FAKE_TRAINER
    from worker.bundle import TrainerBundle
    from worker.director import RunDirector

    wrong = "rpa_WRONGKEY_do_not_echo"
    settings = runpod_settings.model_copy(update={"runpod_api_key": SecretStr(wrong)})
    director = RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)
    run = drive(director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == "RunPod refused the API key for GET /pods (HTTP 401)"
    assert runpod.live() == []


def test_a_pod_that_never_publishes_ssh_fails_and_is_terminated(runpod_director, runpod, engine, runpod_settings):
    runpod.boot_gets = 10**6
    runpod_director.settings = runpod_settings.model_copy(update={"runpod_start_timeout_s": 0.3})
    run_id = new_run(engine, provider="runpod")
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "failed"
    assert "was not reachable over SSH within 0.3 s (last status STARTING)" in run.reason
    assert runpod.live() == []


@pytest.mark.faults
def test_termination_is_retried_until_runpod_confirms(runpod_director, runpod, engine):
    runpod.faults["delete"] = ["linger", "500"]
    run_id = new_run(engine, provider="runpod")
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert len(runpod.live()) == 1 and pod_rows(engine)[0].status == "busy"  # not confirmed: not terminated
    reconciler.release_stray_pods(runpod_director)  # DELETE answers 500: still not terminated
    assert len(runpod.live()) == 1 and pod_rows(engine)[0].status == "busy"
    reconciler.release_stray_pods(runpod_director)
    assert runpod.live() == [] and pod_rows(engine)[0].status == "terminated"


@pytest.mark.faults
def test_the_reconciler_ends_a_pod_made_behind_the_databases_back(runpod_director, runpod, engine):
    stray = runpod.add_pod("caddie-run-999")
    foreign = runpod.add_pod("someone-elses-notebook")
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.running})
    ours = pod_rows(engine)[0].external_id

    assert reconciler.end_unexpected_pods(runpod_director) == [stray]
    assert {p["id"] for p in runpod.live()} == {foreign, ours}
    assert drive(runpod_director, run_id, until=FINAL).status == "succeeded"


@pytest.mark.faults
def test_the_reconciler_ends_a_pod_past_its_deadline_and_the_run_fails(runpod_director, runpod, engine):
    run_id, external_id = running_past_its_deadline(runpod_director, engine)

    assert reconciler.end_unexpected_pods(runpod_director) == [external_id]
    assert runpod.live() == [] and pod_rows(engine)[0].status == "terminated"
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "failed" and run.reason.startswith(f"its pod caddie-run-{run_id} was ended (past its deadline")


def second_run_behind_a_live_pod(runpod_director, runpod, engine) -> tuple[Run, Run]:
    """A second run held back while a first one trains on its pod, then let go by cancelling
    the first: (the second while it waits, the second when it has ended)."""
    first = new_run(engine, provider="runpod", fake_mode="sleep")
    second = new_run(engine, provider="runpod", seed=8)
    drive(runpod_director, first, until={RunStatus.running})
    for _ in range(3):
        runpod_director.advance(second)
    waiting = read_run(engine, second)
    assert waiting.status == "provisioning" and len(runpod.live()) == 1
    with Session(engine) as session:
        cancel_run(session, first)
    drive(runpod_director, first, until=FINAL)
    return waiting, drive(runpod_director, second, until=FINAL)


def test_the_concurrent_pod_cap_makes_runs_wait_with_a_reason(runpod_director, runpod, engine, runpod_settings):
    runpod_director.settings = runpod_settings.model_copy(update={"max_pods": 1})
    waiting, run = second_run_behind_a_live_pod(runpod_director, runpod, engine)
    assert waiting.reason == ("waiting for a pod: 1 runpod pods are up or ahead in line, "
                              "the cap is 1 (CADDIE_MAX_PODS)")
    assert run.status == "succeeded" and run.reason is None and runpod.live() == []


@pytest.mark.parametrize("state", ["queued", "provisioning", "connecting", "uploading", "running",
                                   "collecting", "verifying"])
def test_cancel_in_any_state_leaves_no_pod_running(runpod_director, runpod, engine, state):
    run_id = new_run(engine, provider="runpod", fake_mode="sleep" if state == "running" else "ok")
    if state != "queued":
        drive(runpod_director, run_id, until={RunStatus(state)})
    if state == "provisioning":
        runpod_director.advance(run_id)  # the pod is asked for and is starting
        assert read_run(engine, run_id).status == "provisioning" and len(runpod.live()) == 1
    with Session(engine) as session:
        cancel_run(session, run_id)
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "cancelled"
    assert runpod.live() == []
    assert all(p.status == "terminated" for p in pod_rows(engine))
    if state == "running":
        alive = subprocess.run(["pgrep", "-f", f"{run.remote_dir}/run.json"], capture_output=True)
        assert alive.returncode == 1, alive.stdout  # no trainer left on the pod


def test_cancel_after_the_reconciler_ended_the_pod_still_cancels(runpod_director, runpod, engine):
    run_id, _ = running_past_its_deadline(runpod_director, engine)
    with Session(engine) as session:
        cancel_run(session, run_id)
    reconciler.end_unexpected_pods(runpod_director)
    run = drive(runpod_director, run_id, until=FINAL)
    assert (run.status, run.reason) == ("cancelled", "cancelled on request") and runpod.live() == []


def run_watchdog(runpod_settings, runpod, script: Path, name: str) -> str:
    """A pod on the stand-in and its watchdog, with a 1 s deadline, run to its end in the pod's
    environment (its pod id and pod-scoped key); returns the pod's id."""
    pod_id = runpod.add_pod(name)
    pod = Pod(provider="runpod", name=name, external_id=pod_id)
    script.write_text(RunPodProvider(runpod_settings).watchdog_script(pod, 1))
    env = {"PATH": "/usr/bin:/bin", "RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": runpod.pod_keys[pod_id]}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return pod_id


def test_the_watchdog_ends_its_pod_with_the_pod_key_at_the_deadline(runpod_settings, runpod, tmp_path):
    script = tmp_path / "watchdog.sh"
    pod_id = run_watchdog(runpod_settings, runpod, script, "caddie-run-5")
    assert runpod.live() == []
    assert runpod.pod_delete_by_pod_key(pod_id, runpod.pod_keys[pod_id])
    assert ACCOUNT_KEY not in script.read_text()


def test_the_pods_price_is_kept_and_costs_add_up(runpod_director, runpod, engine):
    run_id = new_run(engine, provider="runpod")
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert run.results["worker"]["pod"] == {"provider": "runpod", "name": f"caddie-run-{run_id}",
                                            "cost_per_hour": 21.52}
    assert run.results["worker"]["preflight"]["python"]  # both kept: neither step overwrote the other
    with Session(engine) as session:
        pod = session.get(Pod, run.pod_id)
        seconds = (pod.terminated_at - pod.created_at).total_seconds()
        cost = costs.run_cost(session, run)
        total = costs.spend(session, experiment_id=run.experiment_id)
    assert cost == pytest.approx(21.52 * seconds / 3600, abs=1e-6) and cost > 0
    assert total.spent == total.committed == pytest.approx(cost)


def test_a_run_past_the_experiment_budget_fails_before_renting(runpod_director, runpod, engine, runpod_settings):
    runpod_director.settings = runpod_settings.model_copy(update={"experiment_budget_usd": 1.0})
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == ("a pod estimated at $12.73 would pass the experiment's budget "
                          "(CADDIE_EXPERIMENT_BUDGET_USD) of $1.00 ($0.00 spent, $0.00 committed)")
    assert creates(runpod) == [] and runpod.live() == []


def test_a_run_past_its_own_budget_usd_fails_before_renting(runpod_director, runpod, engine):
    run_id = new_run(engine, provider="runpod")
    with Session(engine) as session:
        experiment = session.get(Experiment, read_run(engine, run_id).experiment_id)
        experiment.budget_usd = 5.0  # as submitted: below one pod's worst case
        session.add(experiment)
        session.commit()
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "failed"
    assert run.reason == ("a pod estimated at $12.73 would pass the experiment's budget_usd "
                          "of $5.00 ($0.00 spent, $0.00 committed)")
    assert creates(runpod) == [] and runpod.live() == []


def test_a_run_waits_while_live_pods_hold_the_overall_budget(runpod_director, runpod, engine, runpod_settings):
    runpod_director.settings = runpod_settings.model_copy(update={"budget_usd": 20.0})
    waiting, run = second_run_behind_a_live_pod(runpod_director, runpod, engine)
    assert waiting.reason.startswith("waiting: a pod estimated at $12.73 would pass the budget "
                                     "(CADDIE_BUDGET_USD) of $20.00 ($0.")
    assert run.status == "succeeded" and runpod.live() == []


# --- RunPod's API as documented (docs/orchestration.md, "RunPod API facts") -------------


def test_a_create_field_graphql_does_not_know_is_refused_with_runpods_words(runpod_settings, runpod):
    api = RunPodAPI(runpod_settings)
    pod_input = {"name": "caddie-run-1", "imageName": "runpod/pytorch", "gpuTypeId": "NVIDIA H100 80GB HBM3",
                 "gpuCount": 8, "cloudType": "SECURE", "terminateAfter": "2030-01-01T00:00:00+00:00",
                 "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 8}}  # v2's name for it
    with pytest.raises(StepFailed) as refused:
        api.deploy(pod_input)
    assert refused.value.reason == ('RunPod API refused podFindAndDeployOnDemand: HTTP 400: Variable "$input" '
                                    'got invalid value; Field "gpu" is not defined by type '
                                    '"PodFindAndDeployOnDemandInput".')
    with pytest.raises(StepFailed) as naive:
        api.deploy({**{k: v for k, v in pod_input.items() if k != "gpu"}, "terminateAfter": "2030-01-01T00:00:00"})
    assert naive.value.reason.endswith('Field "terminateAfter": a DateTime needs its UTC offset.')
    assert runpod.live() == []


def test_a_validation_error_fails_the_run_at_once(runpod_director, runpod, engine):
    runpod.faults["create"] = ["invalid"]
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == ('RunPod API refused podFindAndDeployOnDemand: HTTP 400: Variable "$input" got invalid '
                          'value; Value "MOON" does not exist in "CloudTypeEnum" enum.')
    assert len(creates(runpod)) == 1 and runpod.live() == []


@pytest.mark.parametrize(("message", "reason"), [
    ("Unauthorized", "RunPod refused the API key for podFindAndDeployOnDemand (Unauthorized)"),
    ("Something went wrong. Please try again later.",
     "RunPod API failed podFindAndDeployOnDemand: Something went wrong. Please try again later."),
    ("gpuTypeId is not available in cloud SECURE", "RunPod API refused podFindAndDeployOnDemand: "
                                                   "gpuTypeId is not available in cloud SECURE")])
def test_graphql_errors_in_a_200_are_told_apart(runpod_settings, message, reason):
    with pytest.raises(StepFailed) as failed:
        RunPodAPI(runpod_settings)._graphql_error(message, "podFindAndDeployOnDemand")
    assert failed.value.reason == reason
    assert isinstance(failed.value, RetryLater) == ("try again" in message)


def test_a_running_pod_is_not_used_before_its_22_has_a_public_mapping(runpod_director, runpod, engine,
                                                                       runpod_settings):
    runpod.ssh_public = False
    runpod_director.settings = runpod_settings.model_copy(update={"runpod_start_timeout_s": 0.3})
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert "was not reachable over SSH within 0.3 s (last status RUNNING)" in run.reason
    assert runpod.live() == [] and pod_rows(engine)[0].host is None


def test_a_second_delete_answers_404_and_still_counts_as_gone(runpod_settings, runpod):
    pod_id = runpod.add_pod("caddie-run-7")
    provider = RunPodProvider(runpod_settings)
    assert provider.terminate(pod_id) and provider.terminate(pod_id)
    assert [r.status for r in runpod.requests if r.method == "DELETE"] == [204, 404]
    assert [r.status for r in runpod.requests if r.method == "GET"] == [404, 404]


def test_a_rate_limit_waits_at_least_what_retry_after_asks(runpod_settings, runpod):
    runpod.faults["list"] = ["429"]
    with pytest.raises(RetryLater) as later:
        RunPodAPI(runpod_settings).list()
    assert later.value.backoff_s == 12.0
    assert later.value.reason == ("RunPod API limited the rate of GET /pods: HTTP 429: "
                                  "rate limit exceeded for the minute window")


def test_graphql_refuses_a_wrong_key_with_401(runpod_settings, runpod):
    wrong = runpod_settings.model_copy(update={"runpod_api_key": SecretStr("rpa_WRONG")})
    with pytest.raises(StepFailed) as refused:
        RunPodProvider(wrong).balance()
    assert refused.value.reason == "RunPod refused the API key for graphql (HTTP 401)"
    with pytest.raises(StepFailed) as create:
        RunPodAPI(wrong).deploy({"name": "caddie-run-1"})
    assert create.value.reason == "RunPod refused the API key for podFindAndDeployOnDemand (HTTP 401)"
    assert RunPodProvider(runpod_settings).balance() == {"balance": 256.19, "spend_per_hour": 0}


@pytest.mark.parametrize("words", [
    "There are no longer any instances available with the requested specifications.",
    "This machine does not have the resources to deploy your pod.",  # RunPod SDK's phrases
    "insufficient capacity", "No available machine for gpu type", "GPU out of stock"])
def test_runpods_capacity_words_are_recognised(runpod_settings, words):
    refusal = httpx.Response(400, json={"title": "Bad Request", "status": 400, "detail": words})
    with pytest.raises(NoCapacity) as full:
        RunPodAPI(runpod_settings)._refused(refusal, "POST /pods")
    assert full.value.message == words


def test_the_watchdog_falls_back_to_graphql_when_rest_refuses_the_pod_key(runpod_settings, runpod, tmp_path):
    runpod.pod_key_rest = False
    pod_id = run_watchdog(runpod_settings, runpod, tmp_path / "watchdog.sh", "caddie-run-6")
    assert runpod.live() == [] and pod_id in runpod.ended
    (rest,) = [r for r in runpod.requests if r.method == "DELETE"]
    (graphql,) = [r for r in runpod.requests if r.path == "/graphql"]
    assert rest.status == 403 and graphql.status == 200
    assert graphql.headers["authorization"] == f"Bearer {runpod.pod_keys[pod_id]}"
    assert json.loads(graphql.body) == {"query": f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}'}


def test_the_login_user_is_read_from_the_pods_ssh_direct(runpod_director, runpod, engine, runpod_settings):
    # The setting is only the fallback for an answer without `ssh.direct.username`.
    runpod_director.settings = runpod_settings.model_copy(update={"runpod_ssh_user": "no-such-user"})
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "succeeded", run.reason
    (pod,) = pod_rows(engine)
    assert pod.username == runpod.sshd.user != "no-such-user"


def test_a_graphql_that_refuses_terminate_after_falls_back_to_the_rest_create(runpod_director, runpod, engine,
                                                                                 runpod_settings, caplog):
    runpod.knows_terminate_after = False
    runpod.faults["create"] = ["capacity"]  # the first REST create finds no machine: the step tries again
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.connecting})
    refused = runpod.deploys()  # each try asks GraphQL first, refused for the field ...
    assert len(refused) == 2 and all("terminateAfter" in r for r in refused)
    assert runpod.count("POST", "/v2/pods") == 2  # ... then REST v2's create, in its own names
    (made,) = runpod.live()
    assert made["terminate_after"] is None and made["body"]["gpu"] == {"id": "NVIDIA H100 80GB HBM3", "count": 8}
    assert made["env"]["PUBLIC_KEY"].startswith("ssh-ed25519 ")
    provider = RunPodProvider(runpod_settings)
    assert provider.stop_at(pod_rows(engine)[0]) is None  # no provider deadline is assumed
    with Session(engine) as session:
        notes = [e.reason for e in session.exec(select(RunEvent).where(RunEvent.run_id == run_id)).all()
                 if e.reason and "terminateAfter" in e.reason]
    assert len(notes) == 1 and "REST v2" in notes[0] and "watchdog and the reconciler" in notes[0]  # once a run
    assert any(r.levelname == "WARNING" and "refused terminateAfter" in r.getMessage() for r in caplog.records)
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert runpod.live() == [] and ACCOUNT_KEY not in notes[0]


def test_the_rest_fallback_still_moves_through_the_data_centres(runpod_director, runpod, engine, runpod_settings):
    runpod.knows_terminate_after = False
    runpod.full_centers = {"EU-RO-1"}
    runpod_director.settings = runpod_settings.model_copy(update={"runpod_data_centers": "EU-RO-1,US-KS-2"})
    run_id = new_run(engine, provider="runpod")
    drive(runpod_director, run_id, until={RunStatus.connecting})
    assert len(runpod.deploys()) == 1  # GraphQL is not asked again once it refused the field
    bodies = [json.loads(r.body) for r in runpod.requests if r.method == "POST" and r.path == "/v2/pods"]
    assert [b["dataCenterIds"] for b in bodies] == [["EU-RO-1"], ["US-KS-2"]]
    assert [p["dataCenterId"] for p in runpod.live()] == ["US-KS-2"]
