"""results["worker"] read through one typed reader, whatever shape a row holds."""

from server.workerfacts import PodFacts, WorkerFacts, with_worker


def test_what_the_worker_wrote_reads_back_typed() -> None:
    results = with_worker({"val_bpb": 1.2}, pod={"provider": "runpod", "name": "caddie-run-4", "cost_per_hour": 21},
                          preflight={"python": "3.12.1", "gpus": ["H100"]}, env_sha256="ab" * 32)
    results = with_worker(results, artifact_file="final_model.int8.ptz", observed_wall_s=612)

    facts = WorkerFacts.from_results(results)

    assert results["val_bpb"] == 1.2  # the rest of results is kept
    assert facts.pod == PodFacts(provider="runpod", name="caddie-run-4", cost_per_hour=21.0)
    assert facts.preflight == {"python": "3.12.1", "gpus": ["H100"]}
    assert (facts.env_sha256, facts.artifact_file, facts.observed_wall_s) == ("ab" * 32, "final_model.int8.ptz", 612.0)


def test_missing_or_odd_shapes_read_as_nothing() -> None:
    for results in (None, {}, {"worker": None}, {"worker": "x"}, {"worker": {"pod": ["x"]}}, ["worker"]):
        assert WorkerFacts.from_results(results) == WorkerFacts()
    odd = WorkerFacts.from_results({"worker": {"pod": {"name": 3, "cost_per_hour": True}, "preflight": "3.12",
                                               "observed_wall_s": "612", "artifact_file": None}})
    assert odd == WorkerFacts()
    assert with_worker({"worker": "broken"}, data={"path": "x"})["worker"] == {"data": {"path": "x"}}
