"""Pods before the trainer runs: preflight, prices, hardware, data centres and the balance.

The ssh provider's pod is a real sshd; the runpod provider's pods come from the local RunPod
stand-in, which hands out that sshd too.
"""

import shutil
import sys

import pytest
import torch
from sqlmodel import Session, select

from server.models import Experiment, Pod
from server.states import FINAL_RUN_STATUSES
from tests.factories import make_experiment, make_run
from tests.worker.harness import FAKE_TRAINER, drive, new_run, read_run
from worker.bundle import TrainerBundle
from worker.director import RunDirector

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)


def director_with(settings, engine, finalized, **changes) -> RunDirector:
    return RunDirector(settings.model_copy(update=changes), engine, bundle=TrainerBundle(FAKE_TRAINER),
                       finalize=finalized)


def pods(engine) -> list[Pod]:
    with Session(engine) as session:
        return list(session.exec(select(Pod).order_by(Pod.id)).all())


def creates(runpod) -> list[dict]:
    """The input of every create (GraphQL podFindAndDeployOnDemand)."""
    return runpod.deploys()


# --- preflight -------------------------------------------------------------------------


def test_preflight_records_the_pods_python_torch_and_free_disk(ssh_settings, engine, finalized):
    director = director_with(ssh_settings, engine, finalized)
    run = drive(director, new_run(engine, provider="ssh"), until=FINAL)
    assert run.status == "succeeded", run.reason
    preflight = run.results["worker"]["preflight"]
    assert preflight["python"] == sys.version.split()[0]
    assert (preflight["torch"], preflight["cuda"]) == (torch.__version__, torch.version.cuda)
    free = shutil.disk_usage(ssh_settings.ssh_workdir).free
    assert abs(preflight["free_disk_bytes"] - free) < 2e9  # other tests write meanwhile
    # No nvidia-smi on this machine: no GPUs, and verification says so.
    assert (preflight["gpus"], preflight["gpu_count"], run.gpu_count) == ([], 0, 0)
    assert any("H100" in reason for reason in run.reasons)


def test_a_python_without_torch_fails_the_run_naming_it(ssh_settings, engine, finalized):
    bare = shutil.which("python3", path="/usr/bin")
    assert bare is not None
    director = director_with(ssh_settings, engine, finalized, remote_python=bare)
    run = drive(director, new_run(engine, provider="ssh"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == (f"the pod cannot run the trainer: {bare} has no torch "
                          "(ModuleNotFoundError: No module named 'torch')")
    assert run.results["worker"]["preflight"]["torch"] is None  # kept for the run page
    assert run.remote_dir is None  # nothing was uploaded
    assert pods(engine)[0].status == "released"


def test_too_little_free_disk_fails_the_run_naming_the_value(ssh_settings, engine, finalized):
    director = director_with(ssh_settings, engine, finalized, min_free_disk_gb=1e9)
    run = drive(director, new_run(engine, provider="ssh"), until=FINAL)
    assert run.status == "failed"
    free_gb = run.results["worker"]["preflight"]["free_disk_bytes"] / 1e9
    assert run.reason == (f"the pod cannot run the trainer: {free_gb:,.1f} GB free in {ssh_settings.ssh_workdir}, "
                          "below CADDIE_MIN_FREE_DISK_GB (1e+09 GB)")


def test_a_rented_pod_that_fails_preflight_is_given_back(runpod_settings, runpod, engine, finalized):
    director = director_with(runpod_settings, engine, finalized, min_free_disk_gb=1e9)
    run = drive(director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed" and "below CADDIE_MIN_FREE_DISK_GB" in run.reason
    assert runpod.live() == [] and len(runpod.ended) == 1
    assert pods(engine)[0].status == "terminated"


# --- prices and hardware ---------------------------------------------------------------


def test_the_price_runpod_names_is_kept_on_the_pod_row(runpod_director, runpod, engine):
    runpod.price = 19.99  # v2's `cost`: what the pod is billed per hour
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "succeeded", run.reason
    assert pods(engine)[0].cost_per_hour == 19.99
    assert run.results["worker"]["pod"]["cost_per_hour"] == 19.99


def test_an_experiments_hardware_goes_into_the_create_request(runpod_director, runpod, engine):
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny", provider="runpod",
                                     gpu_type="NVIDIA H100 PCIe", gpu_count=1)
        run_id = make_run(session, experiment, seed=1).id
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert (creates(runpod)[0]["gpuTypeId"], creates(runpod)[0]["gpuCount"]) == ("NVIDIA H100 PCIe", 1)
    assert any("H100" in reason for reason in run.reasons)  # eligibility still asks for 8 x H100 SXM


def test_without_hardware_the_settings_record_hardware_is_asked_for(runpod_director, runpod, engine):
    drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert (creates(runpod)[0]["gpuTypeId"], creates(runpod)[0]["gpuCount"]) == ("NVIDIA H100 80GB HBM3", 8)
    assert "dataCenterId" not in creates(runpod)[0]  # none configured: any


# --- data centres ----------------------------------------------------------------------


def test_no_capacity_tries_the_next_data_centre_before_backing_off(runpod_settings, runpod, engine, finalized):
    runpod.full_centers = {"EU-RO-1"}
    director = director_with(runpod_settings, engine, finalized, runpod_data_centers="EU-RO-1, US-KS-2")
    run_id = new_run(engine, provider="runpod")
    director.advance(run_id)  # queued → provisioning
    director.advance(run_id)  # both centres asked in this one step
    assert [c["dataCenterId"] for c in creates(runpod)] == ["EU-RO-1", "US-KS-2"]
    run = drive(director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert runpod.ended[pods(engine)[0].external_id]["dataCenterId"] == "US-KS-2"


def test_when_every_data_centre_is_full_the_run_fails_naming_them(runpod_settings, runpod, engine, finalized):
    runpod.full_centers = {"EU-RO-1", "US-KS-2"}
    director = director_with(runpod_settings, engine, finalized, runpod_data_centers="EU-RO-1,US-KS-2")
    run_id = new_run(engine, provider="runpod")
    director.advance(run_id)
    director.advance(run_id)
    first = read_run(engine, run_id)
    assert first.status == "provisioning"
    assert first.reason.startswith("waiting: RunPod has no capacity for 8 x NVIDIA H100 80GB HBM3 on SECURE "
                                   "cloud in EU-RO-1, US-KS-2: There are no longer any instances")
    assert first.reason.endswith("(try 1 of 3)")
    run = drive(director, run_id, until=FINAL)
    assert run.status == "failed"
    assert run.reason.startswith("RunPod has no capacity for 8 x NVIDIA H100 80GB HBM3 on SECURE cloud "
                                 "in EU-RO-1, US-KS-2: ")
    assert run.reason.endswith("(after 3 attempts)")
    assert len(creates(runpod)) == 6 and runpod.live() == []


# --- the account's balance -------------------------------------------------------------


def test_a_balance_below_the_estimate_makes_the_run_wait_then_rent(runpod_director, runpod, engine):
    runpod.balance = 5.0
    run_id = new_run(engine, provider="runpod")
    runpod_director.advance(run_id)
    runpod_director.advance(run_id)
    waiting = read_run(engine, run_id)
    assert waiting.status == "provisioning" and creates(runpod) == []
    assert waiting.reason == ("waiting: the RunPod balance of $5.00 is below the pod's estimated cost "
                              "of $16.32 (try 1 of 3)")  # to its RunPod stop: deadline + allowance
    runpod.balance = 100.0  # topped up
    run = drive(runpod_director, run_id, until=FINAL)
    assert run.status == "succeeded" and run.reason is None


def test_a_balance_that_stays_short_fails_the_run_saying_so(runpod_director, runpod, engine):
    runpod.balance = 5.0
    run = drive(runpod_director, new_run(engine, provider="runpod"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == ("the RunPod balance of $5.00 is below the pod's estimated cost of $16.32 "
                          "(after 3 attempts)")
    assert creates(runpod) == [] and runpod.live() == []


# --- slow nodes ------------------------------------------------------------------------


def test_a_seed_whose_pod_ran_slow_is_flagged_when_it_ends(director, engine):
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny", config={})
        experiment_id = experiment.id
        run_ids = [make_run(session, experiment, seed=n).id for n in (1, 2, 3)]
    for run_id in run_ids[:2]:  # 0.5 s for 1,000 steps: 0.5 ms/step
        assert drive(director, run_id, until=FINAL).status == "succeeded"
    with Session(engine) as session:  # the third seed's pod is slower
        stored = session.get(Experiment, experiment_id)
        stored.config = {"fake_results": {"train_time_s": 0.7}}
        session.add(stored)
        session.commit()
    slow = drive(director, run_ids[2], until=FINAL)
    assert slow.status == "succeeded" and slow.eligible == read_run(engine, run_ids[0]).eligible
    assert slow.flags == ["slow node: 0.7 ms/step, 1.40× the median of the other seeds"]
    assert [read_run(engine, run_id).flags for run_id in run_ids[:2]] == [[], []]
