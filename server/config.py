"""The one settings object of the server and worker processes (env prefix CADDIE_)."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server import fsbroker


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CADDIE_", extra="ignore")

    # Where the embedded default keeps its SQLite file, broker folders and run files.
    data_dir: Path = Path(".caddie")
    # None: SQLite in data_dir. e.g. postgresql+psycopg://user@127.0.0.1:5432/caddie
    database_url: str | None = None
    # None: Celery's filesystem transport in data_dir (one machine, no server needed).
    redis_url: str | None = None
    # Set by `caddie up`/`caddie demo` per start and echoed by /healthz, so that they know the
    # answer on their port came from the server they started, not from whatever else listens there.
    instance_nonce: str = ""

    # Seconds between periodic reconciles (Celery beat) and between log polls of a run.
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)
    # A worker's hold on a run row; another worker may take the run once it expires.
    lease_s: float = Field(default=120.0, gt=0)

    # ssh provider: hosts the operator owns, "user@host:port" separated by commas.
    ssh_hosts: str = ""
    ssh_key_file: Path | None = None
    ssh_connect_attempts: int = Field(default=3, ge=1)
    # Directory on the remote host under which each run gets its own folder.
    ssh_workdir: str = "/tmp/caddie-runs"
    # Python on the host that runs the trainer (needs the trainer extra installed).
    remote_python: str = "python3"
    # The local provider runs pods on this machine, the server's own host: for one person's
    # machine. "off": refused at submit; "admin": admins only; "members": any token holder.
    local_provider: Literal["off", "admin", "members"] = "off"
    # Unprivileged account a participant's script runs as on the local provider (the worker
    # must run as root to switch to it; scripts/install.sh --run-user creates it).
    local_run_user: str = "caddie-run"
    # Where the worker cannot switch to local_run_user, scripts on local are refused unless
    # this is true: then they run as the worker's own user, which isolates nothing.
    local_scripts_unisolated: bool = False
    # Python that runs the trainer for the local provider; default: this interpreter.
    local_python: str = ""
    # Torch threads per trainer on the local provider, whose runs share this machine's cores.
    local_threads: int = Field(default=1, ge=1)
    # Runs on the local provider at once; the rest wait in provisioning with their place in
    # line as their reason. None: as many as the machine's cores hold (cores / local_threads).
    local_max_runs: int | None = Field(default=None, ge=1)

    # Every pod's name starts with this and ends with its run id; the reconciler ends any pod
    # with this prefix that the database does not expect (one prefix per Caddie installation).
    pod_prefix: str = Field(default="caddie-run-", min_length=3, max_length=60, pattern=r"^[a-z0-9-]+$")
    # Seconds a pod may outlive its run's own deadline (collecting, verifying); past that, all
    # three stops (provider deadline, pod watchdog, reconciler) end it.
    pod_margin_s: float = Field(default=900.0, ge=60)
    # Added to a rented pod's provider-side deadline (RunPod's terminateAfter, fixed at create)
    # for its first run's data download, which moves the pod's own deadline on.
    pod_fetch_allowance_s: float = Field(default=1200.0, ge=0)
    # Pods of one provider alive at once; further runs wait in `provisioning` (RunPod accounts
    # start with an $80/hour spending limit: three 8xH100 pods).
    max_pods: int = Field(default=3, ge=1)
    # Experiments whose runs may hold pods at once; the rest wait in the queue (GET /api/queue)
    # in order of priority, then submission. None: no cap.
    max_running_experiments: int | None = Field(default=None, ge=1)

    # Dollar caps on rented pods, over all experiments and per experiment; None: no cap. A run
    # is held back when its estimate would pass a cap (see docs/orchestration.md).
    budget_usd: float | None = Field(default=None, ge=0)
    experiment_budget_usd: float | None = Field(default=None, ge=0)

    # runpod provider: REST API v2 for pods, GraphQL only for the balance (and the watchdog's fallback).
    runpod_api_url: str = "https://api.runpod.io/v2"
    runpod_graphql_url: str = "https://api.runpod.io/graphql"
    # The account key: from the environment (CADDIE_RUNPOD_API_KEY) or a file; never sent into a pod.
    runpod_api_key: SecretStr | None = None
    runpod_api_key_file: Path | None = None
    # RunPod's PyTorch image: torch 2.8.0 for CUDA 12.8.1, Python 3.11 (docs/runpod.md, "The image").
    runpod_image: str = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    runpod_gpu_type: str = "NVIDIA H100 80GB HBM3"  # the H100 SXM id (PCIe and NVL are other SKUs)
    runpod_gpu_count: int = Field(default=8, ge=1)
    runpod_cloud: str = Field(default="SECURE", pattern="^(SECURE|COMMUNITY)$")
    # $/hour assumed before RunPod names the pod's price (8 x H100 SXM, secure cloud, 2026).
    runpod_price_per_hour: float = Field(default=21.52, ge=0)
    runpod_disk_gb: int = Field(default=50, ge=10)
    runpod_data_centers: str = ""  # comma-separated ids; empty: any
    runpod_workdir: str = "/workspace/caddie-runs"
    runpod_python: str = "python3"
    runpod_ssh_user: str = "root"  # used only when a pod's answer has no ssh.direct.username
    # Seconds per API request; tries of a create (no capacity, 5xx, timeout) and the first
    # wait between them (doubling, at most 5 minutes).
    runpod_request_timeout_s: float = Field(default=30.0, gt=0)
    runpod_create_attempts: int = Field(default=6, ge=1)
    runpod_backoff_s: float = Field(default=15.0, ge=0)
    # Seconds a new pod may take to reach RUNNING with SSH published, and tries of its sshd.
    runpod_start_timeout_s: float = Field(default=1200.0, gt=0)
    runpod_ssh_attempts: int = Field(default=10, ge=1)

    # Preflight on every pod: less free disk than this (GB of 10^9 bytes) in the pod's work
    # folder fails the run (80 training shards of sp1024 take about 16 GB).
    min_free_disk_gb: float = Field(default=20.0, ge=0)
    # Data on pods: a run whose data_path is the community's relative `./data/datasets/fineweb10B_<v>`
    # gets variant <v> fetched once per pod (`python -m trainer data fetch`) with this many training
    # shards, from data_base_url (empty: the trainer's default, Hugging Face), into the provider's
    # data folder (empty: <workdir>/data); an absolute data_path is only checked.
    pod_train_shards: int = Field(default=80, ge=0)
    data_base_url: str = ""  # the Hub's address for the fetch (HF_ENDPOINT), e.g. a mirror
    data_revision: str = "main"  # branch, tag or commit of the dataset repository
    local_data_dir: str = ""
    ssh_data_dir: str = ""
    runpod_data_dir: str = ""
    # A succeeded seed whose ms/step passes this times the median of the experiment's other
    # seeds is flagged "slow node" (informational; eligibility is unchanged).
    slow_node_ratio: float = Field(default=1.15, gt=1)

    # A run's train.log is stored (and shown, streamed, exported) up to this many bytes; past
    # it the stored log keeps a marker line and the file's last log_tail_bytes (its final
    # metrics). The whole file is still downloaded into the run's folder on the worker.
    log_cap_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    log_tail_bytes: int = Field(default=256 * 1024, ge=4096)

    # Extra seconds a run may take beyond its training and eval caps before it is killed.
    run_grace_s: float = Field(default=300.0, ge=0)
    # How far the trainer's own train time may exceed what the worker observed.
    clock_tolerance_s: float = Field(default=30.0, ge=0)

    # val_bpb of the standing record: the reference when no record-eligible experiment exists.
    record_bpb: float = Field(default=1.0611, gt=0)

    # Reading (leaderboard, experiments, runs, logs) without a token; changes always need one.
    public_read: bool = True
    # Request bodies: at most this many bytes from anyone (a records folder's zip to reproduce
    # may be 50,000,000 bytes); at most anonymous_body_bytes from a request without a known
    # token (the sign-in form). Larger: 413 before parsing.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    anonymous_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # A member's (not an admin's) limits: experiments submitted per hour, and runs not yet
    # ended (queued or live) at once; over either, a 429 naming it.
    member_experiments_per_hour: int = Field(default=30, ge=1)
    member_max_active_runs: int = Field(default=192, ge=1)
    # Seconds a page form's CSRF token stays valid (it is also bound to the signed-in session).
    csrf_ttl_s: float = Field(default=12 * 3600.0, ge=60)

    # Slack-compatible incoming webhook: runs and experiments that end, pods stopped by a
    # safety stop, budgets hit. None: no notifications.
    webhook_url: SecretStr | None = None

    # Log lines of the API server, worker and beat: "text" for people, "json" for a log
    # collector (one object per line, with the run, pod and experiment ids; server/logsetup.py).
    log_format: Literal["text", "json"] = "text"

    @field_validator("database_url", "redis_url", "budget_usd", "experiment_budget_usd",
                     "max_running_experiments", "local_max_runs", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'caddie.db').resolve()}"

    def runs_dir(self) -> Path:
        """Where the worker keeps each run's downloaded files (log, results, artifact)."""
        return (self.data_dir / "runs").resolve()

    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    def broker_url(self) -> str:
        return self.redis_url or fsbroker.register()

    def broker_transport_options(self) -> dict[str, Any]:
        if self.redis_url:
            # Above any task's duration (tasks are short steps; see docs/architecture.md).
            return {"visibility_timeout": 3600}
        folder = self.broker_dir()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
            # Seconds between looks at the folder; each lifecycle step waits this long once.
            "polling_interval": 0.1,
        }


@lru_cache
def get_settings() -> Settings:
    return Settings()
