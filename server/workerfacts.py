"""What the worker itself observed of a run, kept in the run's results as `results["worker"]`:

    {"pod": {"provider", "name", "cost_per_hour"},   # the pod it ran on ($/hour where rented)
     "preflight": {"gpus": [names], "gpu_count", "python", "torch", "cuda", "free_disk_bytes", ...},
     "data": {"path", ...},                          # the data check on the pod
     "env_sha256": "...",                            # a script arm's settings, for the ablation
     "artifact_file": "final_model.int8.ptz",        # the script's artifact it collected
     "observed_wall_s": 612.3}                       # launch to exit on the worker's clock

The worker writes it with `with_worker`; every reader goes through `WorkerFacts.from_results`,
which reads any shape (an older row, a hand-edited one) without raising: what is missing or of
the wrong type reads as None or empty.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PodFacts:
    provider: str | None = None
    name: str | None = None
    cost_per_hour: float | None = None  # dollars per hour, where the pod was rented


@dataclass(frozen=True)
class WorkerFacts:
    pod: PodFacts = field(default_factory=PodFacts)
    preflight: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    env_sha256: str | None = None
    artifact_file: str | None = None
    observed_wall_s: float | None = None  # seconds

    @classmethod
    def from_results(cls, results: Any) -> "WorkerFacts":
        worker = _mapping(results.get("worker") if isinstance(results, dict) else None)
        pod = _mapping(worker.get("pod"))
        return cls(pod=PodFacts(provider=_text(pod.get("provider")), name=_text(pod.get("name")),
                                cost_per_hour=_number(pod.get("cost_per_hour"))),
                   preflight=_mapping(worker.get("preflight")), data=_mapping(worker.get("data")),
                   env_sha256=_text(worker.get("env_sha256")), artifact_file=_text(worker.get("artifact_file")),
                   observed_wall_s=_number(worker.get("observed_wall_s")))


def with_worker(results: dict[str, Any] | None, **facts: Any) -> dict[str, Any]:
    """A copy of `results` with `facts` merged into its "worker" part."""
    merged = dict(results or {})
    merged["worker"] = {**_mapping(merged.get("worker")), **facts}
    return merged


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
