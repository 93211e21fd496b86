"""Seeds that share a pod (Experiment.share_pods) and the data fetched once per pod.

The ssh provider's pod is a real sshd; the runpod provider's come from the local stand-in.
The fake trainer's `data fetch` writes tiny valid shards and appends a line to `fetches`.
"""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server.models import Experiment, Pod, Run
from server.states import FINAL_RUN_STATUSES, RunStatus
from tests.factories import make_experiment, make_run
from tests.worker.conftest import FETCH_ALLOWANCE_S
from tests.worker.harness import FAKE_TRAINER, drive, read_run
from worker import reconciler
from worker.bundle import TrainerBundle
from worker.director import RunDirector

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)


def seeds(engine, provider: str, count: int = 3, **fields) -> list[int]:
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny", provider=provider, share_pods=True, **fields)
        return [make_run(session, experiment, seed=n).id for n in range(1, count + 1)]


def the_pod(engine) -> Pod:
    with Session(engine) as session:
        (pod,) = session.exec(select(Pod)).all()
        return pod


@pytest.fixture
def shared_director(ssh_settings, engine, finalized) -> RunDirector:
    settings = ssh_settings.model_copy(update={"pod_train_shards": 2, "data_base_url": "file:///mirror"})
    return RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)


def test_three_seeds_take_turns_on_one_pod_that_fetched_its_data_once(shared_director, engine, ssh_settings):
    first, second, third = seeds(engine, "ssh")
    drive(shared_director, first, until={RunStatus.running})
    created_deadline = the_pod(engine).deadline_at
    for _ in range(2):
        shared_director.advance(second)
    waiting = read_run(engine, second)
    assert (waiting.status, waiting.pod_id) == ("provisioning", None)
    assert waiting.reason == f"waiting for the experiment's pod caddie-run-{first}: its seeds take turns on one pod"

    assert drive(shared_director, first, until=FINAL).status == "succeeded"
    assert the_pod(engine).status == "ready"  # kept up for the next seed, not released
    runs = [read_run(engine, first)] + [drive(shared_director, r, until=FINAL) for r in (second, third)]

    assert [r.status for r in runs] == ["succeeded"] * 3, [r.reason for r in runs]
    pod = the_pod(engine)
    assert {r.pod_id for r in runs} == {pod.id} and pod.run_id == third and pod.experiment_id is not None
    assert pod.status == "released" and pod.updated_at >= max(r.ended_at for r in runs)  # after the last
    assert pod.deadline_at > created_deadline  # moved on for every seed it took
    data_dir = Path(ssh_settings.ssh_workdir, "data")
    assert (data_dir / "fetches").read_text() == "sp1024 2 file:///mirror\n"  # fetched once
    assert pod.prepared_at is not None
    facts = [r.results["worker"]["data"] for r in runs]
    assert facts[0] == {"path": f"{data_dir}/datasets/fineweb10B_sp1024", "val_shards": 1, "train_shards": 2,
                        "bytes": 1152 + 2 * 1280, "problems": [], "fetched": True}
    assert facts[1] == facts[2] == {"path": f"{data_dir}/datasets/fineweb10B_sp1024",
                                    "prepared": "by an earlier run on this pod"}
    for run in runs:  # each run reads the pod's data through its own link
        assert Path(run.remote_dir, "data").resolve() == data_dir.resolve()
        assert run.results["worker"]["preflight"]["torch"]


def test_data_already_on_the_pod_is_checked_and_not_fetched(shared_director, engine, ssh_settings):
    folder = Path(ssh_settings.ssh_workdir, "data", "datasets", "fineweb10B_sp1024")
    folder.mkdir(parents=True)
    header = [20240520, 1, 10] + [0] * 253
    shard = b"".join(v.to_bytes(4, "little") for v in header) + bytes(20)
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"):
        (folder / name).write_bytes(shard)
    run = drive(shared_director, seeds(engine, "ssh", 1)[0], until=FINAL)
    assert run.status == "succeeded", run.reason
    assert run.results["worker"]["data"]["fetched"] is False
    assert not Path(ssh_settings.ssh_workdir, "data", "fetches").exists()


def test_a_corrupt_shard_is_fetched_again_and_a_failed_fetch_fails_the_run(shared_director, engine, ssh_settings):
    folder = Path(ssh_settings.ssh_workdir, "data", "datasets", "fineweb10B_sp1024")
    folder.mkdir(parents=True)
    (folder / "fineweb_val_000000.bin").write_bytes(b"\0" * 10)  # a download cut short
    run = drive(shared_director, seeds(engine, "ssh", 1)[0], until=FINAL)
    assert run.status == "succeeded" and run.results["worker"]["data"]["fetched"] is True

    broken = shared_director.settings.model_copy(update={"ssh_workdir": ssh_settings.ssh_workdir + "-2"})
    director = RunDirector(broken, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=shared_director.finalize)
    Path(broken.ssh_workdir, "data").mkdir(parents=True)
    Path(broken.ssh_workdir, "data", "datasets").write_text("a file where the folder should be")
    run = drive(director, seeds(engine, "ssh", 1)[0], until=FINAL)
    assert run.status == "failed"
    assert run.reason.startswith("fetching the sp1024 data on the pod failed (exit code 1): ")
    assert run.reason.endswith("NotADirectoryError: [Errno 20] Not a directory: "
                               f"'{broken.ssh_workdir}/data/datasets/fineweb10B_sp1024'")


def test_an_absolute_data_path_that_does_not_check_out_fails_the_run(shared_director, engine, tmp_path):
    run_id = seeds(engine, "ssh", 1, config={"data_path": str(tmp_path / "nowhere")})[0]
    run = drive(shared_director, run_id, until=FINAL)
    assert run.status == "failed"
    assert run.reason == f"the data at {tmp_path / 'nowhere'} does not check out: no fineweb_val_*.bin"


def test_a_shared_runpod_pod_is_rented_once_and_terminated_after_the_last_seed(runpod_director, runpod, engine):
    run_ids = seeds(engine, "runpod", 2)
    runs = [drive(runpod_director, r, until=FINAL) for r in run_ids]
    assert [r.status for r in runs] == ["succeeded"] * 2, [r.reason for r in runs]
    assert len(runpod.deploys()) == 1 and runpod.live() == [] and len(runpod.ended) == 1
    pod = the_pod(engine)
    assert pod.status == "terminated"
    deadline_file = Path(runpod_director.settings.runpod_workdir, "pod-deadline")
    assert int(deadline_file.read_text()) == int(pod.deadline_at.timestamp())


def test_runpods_own_deadline_covers_every_seed_the_experiment_has_when_the_pod_is_rented(runpod_director,
                                                                                          runpod, engine):
    run_ids = seeds(engine, "runpod", 3)
    runs = [drive(runpod_director, r, until=FINAL) for r in run_ids]
    assert [r.status for r in runs] == ["succeeded"] * 3, [r.reason for r in runs]
    (body,) = runpod.deploys()
    pod = the_pod(engine)
    seed_s = runpod_director._deadline_s(runs[0])
    # n × one seed's life + the margin, from when the pod was asked for; rounded up to the second
    life_s = (datetime.fromisoformat(body["terminateAfter"]) - pod.created_at.replace(tzinfo=UTC)).total_seconds()
    assert 0 <= life_s - (3 * seed_s + runpod_director.settings.pod_margin_s + FETCH_ALLOWANCE_S) < 1


def test_a_seed_that_would_outlive_runpods_deadline_gets_a_pod_of_its_own(runpod_director, runpod, engine):
    (first,) = seeds(engine, "runpod", 1)  # rented for one seed: RunPod ends it at that seed's deadline
    drive(runpod_director, first, until={RunStatus.running})
    with Session(engine) as session:  # a seed added later: the pod's fixed deadline does not cover it
        experiment = session.get(Experiment, session.get(Run, first).experiment_id)
        second = make_run(session, experiment, seed=2).id
    runs = [drive(runpod_director, r, until=FINAL) for r in (first, second)]

    assert [r.status for r in runs] == ["succeeded"] * 2, [r.reason for r in runs]
    with Session(engine) as session:
        pods = list(session.exec(select(Pod).order_by(Pod.id)).all())
    assert [p.name for p in pods] == [f"caddie-run-{first}", f"caddie-run-{second}"]
    assert [p.status for p in pods] == ["terminated", "terminated"] and runs[1].pod_id == pods[1].id
    assert pods[0].terminated_at <= runs[1].started_at  # given back, not handed on
    assert len(runpod.deploys()) == 2 and runpod.live() == []


def test_the_reconciler_leaves_a_pod_between_two_seeds_alone(runpod_director, runpod, engine):
    first, second = seeds(engine, "runpod", 2)
    drive(runpod_director, first, until=FINAL)
    assert the_pod(engine).status == "ready" and len(runpod.live()) == 1
    reconciler.release_stray_pods(runpod_director)
    assert reconciler.end_unexpected_pods(runpod_director) == []
    assert the_pod(engine).status == "ready" and len(runpod.live()) == 1
    with Session(engine) as session:  # the last seed is cancelled before it took the pod
        from server.experiments import cancel_run
        cancel_run(session, second)
    drive(runpod_director, second, until=FINAL)
    reconciler.release_stray_pods(runpod_director)
    assert the_pod(engine).status == "terminated" and runpod.live() == []
