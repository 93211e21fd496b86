"""RunDirector: moves one run one step along its lifecycle, one method per state.

    queued → provisioning → connecting → uploading → running → collecting → verifying
           → succeeded | failed | cancelled

Each call of `advance` takes the run's lease, re-reads the row, does the step for the
state it finds, writes with the lease's fence and gives the lease back with the time of
the next look. Steps are idempotent: a redelivered step finds the pod row, the launched
marker and the stored log offset of the earlier attempt and carries on from there.

Not in charge of: queueing (worker.tasks), waking runs (worker.reconciler), the rules of
eligibility (server.eligibility) or experiment statistics (server.experiments).
"""

import hashlib
import json
import logging
import math
import re
import shlex
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

import trainer.contract as contract
from server import costs, logconfig, nodes, notify, queueing
from server.config import Settings
from server.eligibility import Measurements, run_reasons
from server.errors import Conflict, LeaseLost
from server.logparse import parse_log
from server.logstream import publish_log
from server.models import Experiment, LogChunk, Pod, Run, RunEvent, as_utc, table_of, utcnow
from server.pods import move_pod
from server.runs import acquire_lease, get_run, release_lease, transition, update_run
from server.scripts import file_names, list_files
from server.states import FINAL_RUN_STATUSES, LIVE_POD_STATUSES, PodStatus, RunStatus
from worker import datasets, launcher, script
from worker.bundle import Bundle, default_bundle, run_config, run_deadline_s
from worker.errors import ConnectError, StepFailed
from worker.providers import Provider, RetryLater, get_provider
from worker.remote import Remote

log = logging.getLogger(__name__)

LOG_CHUNK_BYTES = 1024 * 1024  # read from train.log per request
LOG_CHUNKS_PER_STEP = 8  # then let other runs have the worker; the next step goes on at once
LAST_LINES = 40
MAX_PROVIDER_BACKOFF_S = 300.0  # between tries of a provider that has no capacity or fails
MANIFEST = "code_manifest.json"  # {path under code/: {"bytes", "sha256"}} of the uploaded bundle
_CODE_PATH = re.compile(r"^(?:[A-Za-z0-9_]+/)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Run on the pod by the trainer's Python with the work folder as argv[1]; prints one JSON
# object. Importing torch for real also proves its native libraries load.
PREFLIGHT = """\
import json, os, shutil, sys
os.makedirs(sys.argv[1], exist_ok=True)
facts = {"python": sys.version.split()[0], "free_disk_bytes": shutil.disk_usage(sys.argv[1]).free}
try:
    import torch
    facts.update(torch=torch.__version__, cuda=torch.version.cuda)
except Exception as exc:
    facts.update(torch=None, cuda=None, torch_error=f"{type(exc).__name__}: {exc}"[:200])
print(json.dumps(facts))
"""

# A step returns the seconds until the run's next look (0: go on at once), or None when
# the run has ended.
Delay = float | None


class RunDirector:
    def __init__(self, settings: Settings, engine: Engine, *, bundle: Bundle | None = None,
                 finalize: Callable[[Session, int], Any] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.bundle = default_bundle() if bundle is None else bundle
        self.finalize = _finalize_experiment if finalize is None else finalize
        self.owner = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self._steps: dict[RunStatus, Callable[[Run, int], Delay]] = {
            RunStatus.queued: self.queued,
            RunStatus.provisioning: self.provisioning,
            RunStatus.connecting: self.connecting,
            RunStatus.uploading: self.uploading,
            RunStatus.running: self.running,
            RunStatus.collecting: self.collecting,
            RunStatus.verifying: self.verifying,
        }

    # --- one step, under the lease ------------------------------------------------------

    def advance(self, run_id: int) -> bool:
        """Take one step of the run; True when its next step may start at once."""
        with Session(self.engine) as session:
            fence = acquire_lease(session, run_id, owner=self.owner, lease_s=self.settings.lease_s)
        if fence is None:
            return False  # ended, or another worker holds it
        try:
            delay = self.step(run_id, fence)
            if delay is None:
                self._finish_quietly(run_id)
                return False
            with Session(self.engine) as session:
                release_lease(session, run_id, fence=fence,
                              next_check_at=utcnow() + timedelta(seconds=delay))
        except Conflict as exc:  # LeaseLost, or InvalidTransition: the row moved under us
            log.info("run %s: %s; leaving it to its new owner", run_id, exc.message)
            return False
        return delay == 0

    def step(self, run_id: int, fence: int) -> Delay:
        """Do what the run's current state asks; failures end the run with a reason."""
        run = self._load(Run, run_id)
        logconfig.bind(experiment_id=run.experiment_id, pod_id=run.pod_id)  # for this task's log lines
        status = RunStatus(run.status)
        if status in FINAL_RUN_STATUSES:
            return None
        try:
            if run.cancel_requested:
                return self.cancel(run, fence)
            return self._steps[status](run, fence)
        except (Conflict, SoftTimeLimitExceeded):
            raise  # another worker has the run, or this step ran too long: its lease expires
        except ConnectError as exc:
            return self._retry_connect(run, fence, exc)
        except StepFailed as exc:
            return self._fail(run, fence, exc.reason)
        except Exception as exc:
            log.exception("run %s: %s step crashed", run_id, status)
            return self._fail(run, fence, f"internal error while {status}: {type(exc).__name__}")

    # --- the states ---------------------------------------------------------------------

    def queued(self, run: Run, fence: int) -> Delay:
        self._move(run, fence, RunStatus.provisioning)
        with Session(self.engine) as session:
            self.finalize(session, run.experiment_id)  # marks the experiment running
        return 0

    def provisioning(self, run: Run, fence: int) -> Delay:
        experiment = self._load(Experiment, run.experiment_id)
        provider = get_provider(experiment.provider, self.settings)
        life_s = self._deadline_s(run) + self.settings.pod_margin_s  # the most a pod of this run lives
        deadline_at = utcnow() + timedelta(seconds=life_s)
        if experiment.share_pods:
            shared = self._shared_pod(run, fence, experiment, provider, life_s)
            if shared is not None:
                return shared
        # One session at a time: on SQLite every transaction takes the write lock (BEGIN IMMEDIATE).
        with Session(self.engine) as session:
            pod = self._pod_row(session, run, provider, deadline_at,
                                shared_by=experiment.id if experiment.share_pods else None)
            update_run(session, run.id, fence=fence, pod_id=pod.id)
            if pod.host is None and pod.external_id is None and provider.rents:
                ahead = queueing.pods_ahead(session, pod, self.settings)  # up, or ahead in the queue
                if ahead >= self.settings.max_pods:
                    waiting: str | None = (f"waiting for a pod: {ahead} {provider.name} pods are up or ahead in line, "
                               f"the cap is {self.settings.max_pods} (CADDIE_MAX_PODS)")
                    update_run(session, run.id, fence=fence, reason=waiting)
                    return self.settings.poll_interval_s
                if self._hold_for_budget(session, run, fence, provider, life_s):
                    return self.settings.poll_interval_s
                # Its life (deadline, billing) starts when it is asked for, not when it got in line:
                # both from one clock reading, so the deadline is exactly life_s after creation.
                asked_at = utcnow()
                pod.created_at, pod.deadline_at = asked_at, asked_at + timedelta(seconds=life_s)
            if pod.host is None and not self._place(session, run, pod, provider):
                log.info("run %s: no %s host free yet", run.id, provider.name)
                waiting = provider.wait_reason(session, pod)
                if waiting is not None and waiting != run.reason:
                    update_run(session, run.id, fence=fence, reason=waiting)
                return self.settings.poll_interval_s
            update_run(session, run.id, fence=fence, attempts=0, reason=None,
                       results=_with_worker(run.results, pod=self._pod_facts(provider, pod)))
        self._move(run, fence, RunStatus.connecting)
        return 0

    def connecting(self, run: Run, fence: int) -> Delay:
        with self._remote(run, fence) as (remote, provider):
            stored = self._load(Run, run.id).results
            preflight = ((stored or {}).get("worker") or {}).get("preflight") or self._preflight(remote, provider)
            results = _with_worker(stored, preflight=preflight)
            unfit = _unfit(preflight, provider, self.settings.min_free_disk_gb)
            if unfit is not None:
                return self._fail(run, fence, unfit, results=results)
            data = self._prepare(remote, run, provider)
            if data is None:  # the pod is still fetching its data
                self._update(run, fence, results=results, reason="preparing the pod: fetching its data")
                return self.settings.poll_interval_s
            results = _with_worker(results, data=data)
        if run.reason is not None:  # "preparing the pod: …" is over
            self._update(run, fence, reason=None)
        names = preflight["gpus"]
        self._move(run, fence, RunStatus.uploading, gpu_name=names[0] if names else None,
                   gpu_count=len(names), attempts=0, results=results)
        return 0

    def uploading(self, run: Run, fence: int) -> Delay:
        experiment = self._load(Experiment, run.experiment_id)
        files, counted = self._code(experiment)
        code_bytes, code_sha256 = contract.code_digest(counted)
        with self._remote(run, fence) as (remote, provider):
            run_dir = f"{provider.workdir}/run-{run.id}"
            folders = sorted({f"{run_dir}/code/{rel}".rsplit("/", 1)[0] for rel in files})
            self._must(remote, "mkdir -p " + " ".join(shlex.quote(f) for f in folders))
            if not remote.exists(f"{run_dir}/launched"):
                self._upload(remote, run, experiment, run_dir, files, counted, provider)
            ran = ({"env_sha256": script.env_digest(experiment, run.variant)} if experiment.kind == "script"
                   else {})  # what the arm ran, for the ablation's same-settings check
            with Session(self.engine) as session:
                update_run(session, run.id, fence=fence, remote_dir=run_dir, code_bytes=code_bytes,
                           code_sha256=code_sha256, started_at=run.started_at or utcnow(),
                           results=_with_worker(self._load(Run, run.id).results, **ran))
            user = provider.script_user() if experiment.kind == "script" else None
            if not launcher.launch(remote, run_dir, user=user):
                log.info("run %s: trainer already launched; not starting another", run.id)
        self._set_pod_status(run, PodStatus.busy)
        self._move(run, fence, RunStatus.running, attempts=0)
        return 0

    def running(self, run: Run, fence: int) -> Delay:
        assert run.remote_dir is not None
        with self._remote(run, fence) as (remote, _):
            more = self._pull_log(remote, run, fence, final=False)
            trainer = launcher.trainer_state(remote, run.remote_dir)
            if trainer.state == "exited" and trainer.exit_code != 0:
                lines = launcher.last_lines(remote, run.remote_dir,
                                            (contract.TRAIN_LOG, "trainer.out"), lines=LAST_LINES)
                reason = _exit_reason(trainer.exit_code)
                if remote.exists(f"{run.remote_dir}/{launcher.SETUP_FAILED}"):
                    reason = f"pip install -r {script.REQUIREMENTS} failed with exit code {trainer.exit_code}"
                return self._fail(run, fence, reason, exit_code=trainer.exit_code,
                                  exited_at=utcnow(), last_log_lines=lines)
            if trainer.state == "gone":
                raise StepFailed("the trainer process vanished without an exit code")
            if trainer.state != "exited" and self._overdue(run):
                launcher.stop(remote, run.remote_dir)
                raise StepFailed("the run passed its deadline on the worker's clock and was stopped")
        if trainer.state == "exited":
            self._move(run, fence, RunStatus.collecting, exit_code=0, exited_at=utcnow())
            return 0
        if run.attempts:
            self._update(run, fence, attempts=0)
        return 0 if more else self.settings.poll_interval_s

    def collecting(self, run: Run, fence: int) -> Delay:
        assert run.remote_dir is not None
        local = self._local_dir(run)
        kind = self._load(Experiment, run.experiment_id).kind
        with self._remote(run, fence) as (remote, _):
            if self._pull_log(remote, run, fence, final=True):
                return 0  # more of the log is waiting: the next step stores it, to its end
            for name in (contract.TRAIN_LOG, contract.RESULTS, contract.METRICS, MANIFEST):
                _get_if_there(remote, f"{run.remote_dir}/{name}", local / name)
            if kind == "script":
                self._collect_script_artifact(remote, run, fence, local)
            else:
                artifact = _artifact_name(_read_json(local / contract.RESULTS))
                _get_if_there(remote, f"{run.remote_dir}/{artifact}", local / artifact)
            for rel in _manifest(local).keys():
                (local / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
                _get_if_there(remote, f"{run.remote_dir}/code/{rel}", local / "code" / rel)
        self._move(run, fence, RunStatus.verifying)
        return 0

    def verifying(self, run: Run, fence: int) -> Delay:
        local = self._local_dir(run)
        if self._load(Experiment, run.experiment_id).kind == "script":
            return self._verify_script(run, fence, local)
        results = _read_json(local / contract.RESULTS)
        if not isinstance(results, dict):
            raise StepFailed(f"{contract.RESULTS} is missing or not a JSON object")
        artifact = local / _artifact_name(results)
        if not artifact.is_file():
            raise StepFailed(f"the run produced no artifact ({artifact.name} is missing)")
        artifact_bytes, artifact_sha256 = artifact.stat().st_size, _sha256(artifact.read_bytes())
        code_bytes, code_sha256 = self._measure_code(local)
        numbers = _result_numbers(results)
        measured = Measurements(
            bytes_total=code_bytes + artifact_bytes, train_time_s=numbers["train_time_s"],
            eval_time_s=numbers["eval_time_s"], observed_wall_s=_wall_s(run),
            val_tokens=numbers["val_tokens"], gpu_name=run.gpu_name, gpu_count=run.gpu_count,
            val_bpb=numbers["val_bpb"], train_step_s=_step_s(numbers))
        reasons = run_reasons(measured, clock_tolerance_s=self.settings.clock_tolerance_s)
        if code_bytes != run.code_bytes:
            reasons.append(f"code on the pod is {code_bytes:,} bytes, {run.code_bytes:,} were uploaded")
        if results.get("code_sha256") not in (None, code_sha256):
            reasons.append("the code the trainer counted differs from the code that was uploaded")
        if results.get("artifact_sha256") not in (None, artifact_sha256):
            reasons.append("the artifact's sha256 differs from the one the trainer reported")
        worker = {**((run.results or {}).get("worker") or {}), "observed_wall_s": measured.observed_wall_s}
        self._move(run, fence, RunStatus.succeeded, eligible=not reasons, reasons=reasons,
                   results={**results, "worker": worker}, code_bytes=code_bytes,
                   code_sha256=code_sha256, model_bytes=artifact_bytes,
                   bytes_total=measured.bytes_total, artifact_sha256=artifact_sha256, **numbers)
        return None

    def _collect_script_artifact(self, remote: Remote, run: Run, fence: int, local: Path) -> None:
        """Download the script's artifact (see script.pick_artifact); its name goes into results."""
        assert run.remote_dir is not None
        listing = remote.run(f"find {shlex.quote(run.remote_dir + '/code')} -maxdepth 1 -type f "
                             f"-name '{script.ARTIFACT_PREFIX}*' -printf '%T@ %s %f\\n'", timeout_s=60)
        name = script.pick_artifact(listing.stdout, set(_manifest(local)))
        if name is not None:
            _get_if_there(remote, f"{run.remote_dir}/code/{name}", local / name)
        self._update(run, fence, results=_with_worker(self._load(Run, run.id).results, artifact_file=name))

    def _verify_script(self, run: Run, fence: int, local: Path) -> Delay:
        """Score a participant's script from its log; bytes measured by the worker."""
        log_bytes = (local / contract.TRAIN_LOG).read_bytes() if (local / contract.TRAIN_LOG).is_file() else b""
        tail = "\n".join(log_bytes.decode("utf-8", errors="replace").splitlines()[-LAST_LINES:])
        parsed = parse_log(log_bytes)
        if parsed["score"] is None:
            return self._fail(run, fence, "the script exited 0 but printed no final metric "
                              "(e.g. final_int8_zlib_roundtrip val_loss:X val_bpb:Y)", last_log_lines=tail)
        worker = dict((run.results or {}).get("worker") or {})
        name = worker.get("artifact_file")
        if not name or not (local / name).is_file():
            return self._fail(run, fence, f"the script wrote no {script.ARTIFACT_PREFIX}*.pt* artifact "
                              "in its folder", last_log_lines=tail)
        artifact = (local / name).read_bytes()
        code_bytes, code_sha256 = self._measure_code(local)
        numbers, log_reasons = script.score(parsed, code_bytes=code_bytes, artifact_bytes=len(artifact))
        measured = Measurements(
            bytes_total=code_bytes + len(artifact), train_time_s=numbers["train_time_s"],
            eval_time_s=numbers["eval_time_s"], observed_wall_s=_wall_s(run), val_tokens=numbers["val_tokens"],
            gpu_name=run.gpu_name, gpu_count=run.gpu_count, val_bpb=numbers["val_bpb"],
            train_step_s=parsed["step_ms"] / 1000 if parsed.get("step_ms") else _step_s(numbers))
        reasons = run_reasons(measured, clock_tolerance_s=self.settings.clock_tolerance_s) + log_reasons
        if code_bytes != run.code_bytes:
            reasons.append(f"code on the pod is {code_bytes:,} bytes, {run.code_bytes:,} were uploaded")
        worker["observed_wall_s"] = measured.observed_wall_s
        results = {"log": parsed, "artifact_file": name, "code_files": sorted(_manifest(local)),
                   "code_bytes": code_bytes, "model_bytes": len(artifact), "bytes_total": measured.bytes_total,
                   **numbers, "worker": worker}
        (local / contract.RESULTS).write_text(json.dumps(results, indent=1))
        self._move(run, fence, RunStatus.succeeded, eligible=not reasons, reasons=reasons, results=results,
                   code_bytes=code_bytes, code_sha256=code_sha256, model_bytes=len(artifact),
                   bytes_total=measured.bytes_total, artifact_sha256=_sha256(artifact), **numbers)
        return None

    def cancel(self, run: Run, fence: int) -> Delay:
        reason = "cancelled on request"
        if run.remote_dir and run.pod_id is not None:
            try:
                with self._remote(run, fence) as (remote, _):
                    left = launcher.stop(remote, run.remote_dir)
                if left:
                    reason += f"; {len(left)} of its processes could not be killed (pids {left[:10]})"
            except StepFailed as exc:  # unreachable or already ended; finish() tries again if it is there
                log.warning("run %s: cancel could not reach the pod: %s", run.id, exc.reason)
        self._move(run, fence, RunStatus.cancelled, reason=reason)
        return None

    # --- after the end ------------------------------------------------------------------

    def finish(self, run_id: int) -> None:
        """Give the run's pod back (stopping anything left on it) and finalize its experiment."""
        run = self._load(Run, run_id)
        pod = self._load(Pod, run.pod_id) if run.pod_id is not None else None
        if pod is not None and pod.status in LIVE_POD_STATUSES and pod.run_id in (None, run.id):
            provider = get_provider(pod.provider, self.settings)
            if run.remote_dir:  # whatever the run started, even after it exited 0, goes before the pod is handed on
                self._stop_leftovers(run, pod, provider)
            if self._hand_over(run, pod):
                self._set_pod_status(run, PodStatus.ready)  # free for the experiment's next seed
            else:
                self._set_pod_status(run, provider.release(pod))
        with Session(self.engine) as session:
            if run.status == RunStatus.succeeded:
                nodes.flag_slow_nodes(session, run.experiment_id, ratio=self.settings.slow_node_ratio)
            self.finalize(session, run.experiment_id)

    def _finish_quietly(self, run_id: int) -> None:
        # The run has ended either way; the reconciler releases pods a crash here left behind.
        try:
            self.finish(run_id)
        except Exception:
            log.exception("run %s: releasing its pod or finalizing its experiment failed", run_id)

    def _stop_leftovers(self, run: Run, pod: Pod, provider: Provider) -> None:
        assert run.remote_dir is not None
        try:
            remote = provider.connect(pod, pinned_host_key=run.host_key)
            try:
                left = launcher.stop(remote, run.remote_dir)
            finally:
                remote.close()
            if left:
                log.error("run %s: processes %s on pod %s outlived every kill", run.id, left, pod.id)
        except Exception as exc:
            log.warning("run %s: could not stop leftovers on pod %s: %s", run.id, pod.id, exc)

    # --- pods ---------------------------------------------------------------------------

    def _preflight(self, remote: Remote, provider: Provider) -> dict[str, Any]:
        """What the pod offers: GPUs (nvidia-smi), free disk of the work folder, Python, torch, CUDA."""
        gpus = remote.run("nvidia-smi --query-gpu=name --format=csv,noheader", timeout_s=60)
        facts = remote.run(f"{shlex.quote(provider.python)} -c {shlex.quote(PREFLIGHT)} "
                           f"{shlex.quote(provider.workdir)}", timeout_s=180)
        if not facts.ok:
            raise StepFailed(f"python {provider.python!r} does not run on the pod: "
                             f"{facts.stderr.strip()[-200:] or f'exit code {facts.exit_code}'}")
        try:
            found = json.loads(facts.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(f"the preflight check on the pod printed no facts: {facts.stdout.strip()[-200:]!r}") from None
        names = [line.strip() for line in gpus.stdout.splitlines() if line.strip()] if gpus.ok else []
        return {"gpus": names, "gpu_count": len(names), **found}

    def _shared_pod(self, run: Run, fence: int, experiment: Experiment, provider: Provider,
                    life_s: float) -> Delay | None:
        """A seed of a share_pods experiment takes the experiment's one pod when the seed before
        it is done with it, and waits while it is busy; None: this run rents it (usual steps)."""
        with Session(self.engine) as session:
            pods = list(session.exec(select(Pod).where(Pod.experiment_id == experiment.id,
                                                       col(Pod.status).in_(LIVE_POD_STATUSES)).order_by(col(Pod.id))).all())
            pod = next((p for p in pods if p.run_id == run.id), None)
            if pod is not None and pod.host is None:
                return None  # it is renting the pod
            for free in pods if pod is None else []:
                if free.status == PodStatus.ready and _ended(session, free.run_id):
                    pod = self._claim(session, run, free, life_s)
                    if pod is not None:
                        break
            if pod is None:
                if not pods and _first_waiting(session, experiment.id) == run.id:
                    return None
                reason = (f"waiting for the experiment's pod {pods[0].name}: its seeds take turns on one pod"
                          if pods else "waiting for the experiment's first seed to rent its pod")
                update_run(session, run.id, fence=fence, reason=reason)
                return self.settings.poll_interval_s
            update_run(session, run.id, fence=fence, pod_id=pod.id, attempts=0, reason=None,
                       results=_with_worker(run.results, pod=self._pod_facts(provider, pod)))
        self._move(run, fence, RunStatus.connecting)
        return 0

    def _claim(self, session: Session, run: Run, pod: Pod, life_s: float) -> Pod | None:
        """Make the run the holder of a free shared pod and move its deadline on; None when
        another seed took it first (the update is conditional on the holder it saw)."""
        table = table_of(Pod)
        deadline_at = max(as_utc(pod.deadline_at), utcnow() + timedelta(seconds=life_s)) if pod.deadline_at else None
        claimed = session.execute(update(table).where(table.c.id == pod.id, table.c.run_id == pod.run_id,
                                                      table.c.status == PodStatus.ready)
                                  .values(run_id=run.id, deadline_at=deadline_at, updated_at=utcnow()))
        session.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
            return None
        session.refresh(pod)
        log.info("run %s takes the experiment's pod %s from run %s", run.id, pod.name, pod.run_id)
        return pod

    def _hand_over(self, run: Run, pod: Pod) -> bool:
        """Whether an ended run's shared pod stays up for the experiment's next seed: one is
        waiting, and the pod got as far as this run's files (a pod that failed its preflight
        or could not be reached is given back)."""
        if pod.experiment_id is None or run.remote_dir is None or pod.status == PodStatus.requested:
            return False
        if pod.deadline_at is not None and as_utc(pod.deadline_at) <= utcnow():
            return False
        # A seed must not outlive the provider's own stop (RunPod's terminateAfter, fixed at creation),
        # less its data-download allowance (kept for a slow first download, not spent on more seeds):
        # then the pod is given back and the next seed rents a new one.
        stop_at = get_provider(pod.provider, self.settings).stop_at(pod)
        life_s = self._deadline_s(run) + self.settings.pod_margin_s + self.settings.pod_fetch_allowance_s
        if stop_at is not None and utcnow() + timedelta(seconds=life_s) > stop_at:
            log.info("run %s: pod %s ends at %s, too soon for another seed", run.id, pod.name, stop_at)
            return False
        with Session(self.engine) as session:
            waiting = select(Run.id).where(Run.experiment_id == pod.experiment_id, Run.id != run.id,
                                           col(Run.status).notin_(list(FINAL_RUN_STATUSES)),
                                           col(Run.cancel_requested).is_(False))
            return session.exec(waiting).first() is not None

    def _prepare(self, remote: Remote, run: Run, provider: Provider) -> dict[str, Any] | None:
        """Link the run's folder to the pod's data and, on the pod's first run, check that data
        (fetching it where it is missing) and set Pod.prepared_at; None while a fetch runs."""
        experiment = self._load(Experiment, run.experiment_id)
        pod = self._load(Pod, run.pod_id)
        self._write_deadline(remote, provider, pod)
        run_dir = f"{provider.workdir}/run-{run.id}"
        folder = f"{run_dir}/code" if experiment.kind == "script" else run_dir  # where it runs
        try:
            need = datasets.need(self._data_path(experiment, run), provider.data_dir)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None
        if need.variant is not None:
            q = shlex.quote
            self._must(remote, f"mkdir -p {q(folder)} {q(provider.data_dir)} && "
                               f"ln -sfn {q(provider.data_dir)} {q(folder + '/data')}")
        if pod.prepared_at is not None:
            return {"path": need.path, "prepared": "by an earlier run on this pod"}
        wanted = self.settings.pod_train_shards if need.variant else 0
        fetch = f"{provider.data_dir}/.fetch-{pod.name}"  # this pod's one fetch: its log and exit code
        fetched = False
        if need.variant is not None:
            state = datasets.fetch_state(remote, fetch)
            if state.started and state.exit_code is None:
                return None  # still downloading
            if state.exit_code not in (None, 0):
                raise StepFailed(f"fetching the {need.variant} data on the pod failed (exit code "
                                 f"{state.exit_code}): {state.tail[-300:]}")
            fetched = state.started
        facts = datasets.check(remote, provider.python, need.path, wanted)
        if facts["problems"] and need.variant is not None and not fetched:
            self._start_fetch(remote, provider, fetch, need.variant)
            return None
        if facts["problems"]:
            raise StepFailed(f"the data at {need.path} does not check out: {'; '.join(facts['problems'])}")
        life_s = self._deadline_s(run) + self.settings.pod_margin_s
        with Session(self.engine) as session:
            row = session.get(Pod, pod.id)
            assert row is not None
            row.prepared_at = utcnow()
            if fetched and row.deadline_at is not None:  # the fetch took some of the pod's life
                row.deadline_at = max(as_utc(row.deadline_at), utcnow() + timedelta(seconds=life_s))
                stop_at = provider.stop_at(row)
                if stop_at is not None and row.deadline_at > as_utc(stop_at):
                    session.rollback()
                    raise StepFailed(f"the data download took so long that the provider would end the pod "
                                     f"at {as_utc(stop_at):%H:%M:%S} UTC, before this run could finish "
                                     "(CADDIE_POD_FETCH_ALLOWANCE_S)")
            session.add(row)
            session.commit()
            session.refresh(row)
            session.expunge(row)
        if fetched:
            self._write_deadline(remote, provider, row)
        return {**facts, "fetched": fetched}

    def _start_fetch(self, remote: Remote, provider: Provider, folder: str, variant: str) -> None:
        """Start the trainer's `data fetch` detached in `folder`, with its own copy of the trainer."""
        for rel, data in self.bundle.files().items():
            self._must(remote, f"mkdir -p {shlex.quote(f'{folder}/code/{rel}'.rsplit('/', 1)[0])}")
            remote.put_bytes(data, f"{folder}/code/{rel}")
        argv = [*self.bundle.entry(provider.python, run_dir=folder), "data", "fetch", "--variant", variant,
                "--train-shards", str(self.settings.pod_train_shards), "--out", provider.data_dir,
                "--revision", self.settings.data_revision, "--cache-dir", f"{provider.data_dir}/hf-cache"]
        if self.settings.data_base_url:
            argv += ["--endpoint", self.settings.data_base_url]
        datasets.start_fetch(remote, folder, argv, pythonpath=f"{folder}/code", python=provider.python)

    def _data_path(self, experiment: Experiment, run: Run) -> str:
        if experiment.kind == "script":
            return str(script.arm_env(experiment, run.variant).get("DATA_PATH") or datasets.DEFAULT_DATA_PATH)
        config, schema = run_config(experiment, run), self.bundle.schema()
        preset = schema.get("presets", {}).get(experiment.preset, {})
        field = schema.get("fields", {}).get("data_path", {})
        return str(config.get("data_path") or preset.get("data_path") or field.get("default")
                   or datasets.DEFAULT_DATA_PATH)

    def _write_deadline(self, remote: Remote, provider: Provider, pod: Pod) -> None:
        """Tell the pod's watchdogs its deadline (moved on when a shared pod takes another seed)."""
        if provider.deadline_file is not None and pod.deadline_at is not None:
            remote.put_bytes(f"{int(as_utc(pod.deadline_at).timestamp())}\n".encode(), provider.deadline_file)

    # --- helpers ------------------------------------------------------------------------

    def _code(self, experiment: Experiment) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """(files uploaded under code/, the files counted as the run's code)."""
        if experiment.kind != "script":
            files = self.bundle.files()
            return files, files
        with Session(self.engine) as session:
            rows = list_files(session, experiment.id)
        try:
            found = script.script_files(rows)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None
        return found.uploaded, found.counted

    def _upload(self, remote: Remote, run: Run, experiment: Experiment, run_dir: str, files: dict[str, bytes],
                counted: dict[str, bytes], provider: Provider) -> None:
        manifest = {rel: {"bytes": len(data), "sha256": _sha256(data)} for rel, data in counted.items()}
        for rel, data in files.items():
            remote.put_bytes(data, f"{run_dir}/code/{rel}")
        remote.put_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode(), f"{run_dir}/{MANIFEST}")
        pod = self._load(Pod, run.pod_id)
        until_deadline = (as_utc(pod.deadline_at) - utcnow()).total_seconds() if pod.deadline_at else None
        watchdog = provider.watchdog_script(pod, until_deadline) if until_deadline is not None else None
        if watchdog is not None:
            remote.put_bytes(watchdog.encode(), f"{run_dir}/{launcher.WATCHDOG_SCRIPT}")
        common: dict[str, Any] = {"run_dir": run_dir, "deadline_s": self._deadline_s(run), "cpu_threads": provider.cpu_threads,
                  "watchdog": watchdog is not None}
        if experiment.kind == "script":
            launch = self._script_launch(run, experiment, run_dir, provider, files, common)
        else:
            config_path = f"{run_dir}/{contract.CONFIG_FILE}"
            remote.put_bytes(json.dumps(run_config(experiment, run), indent=1).encode(), config_path)
            launch = launcher.launch_script(
                argv=self.bundle.argv(provider.python, config_path=config_path, run_dir=run_dir),
                pythonpath=f"{run_dir}/code", **common)
        remote.put_bytes(launch.encode(), f"{run_dir}/{launcher.LAUNCH_SCRIPT}")

    def _script_launch(self, run: Run, experiment: Experiment, run_dir: str, provider: Provider,
                       files: dict[str, bytes], common: dict[str, Any]) -> str:
        """launch.sh of a participant's script: torchrun in code/, stdout+stderr as train.log."""
        setup = ([provider.python, "-m", "pip", "install", "-r", script.REQUIREMENTS]
                 if script.REQUIREMENTS in files else None)
        env = script.script_env(experiment, self._load(Run, run.id))
        try:
            return launcher.launch_script(
                argv=script.torchrun_argv(provider.python, run.gpu_count), cwd=f"{run_dir}/code", env=env,
                output=contract.TRAIN_LOG, setup=setup, setup_deadline_s=script.SETUP_DEADLINE_S, **common)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None

    def _pull_log(self, remote: Remote, run: Run, fence: int, *, final: bool) -> bool:
        """Store new whole lines of train.log (and a last partial line when final), up to the
        log cap; when final, a log past the cap gets a marker and its last bytes (`_store_tail`).

        Returns True when more bytes are waiting than one step reads.
        """
        assert run.remote_dir is not None
        path, offset = f"{run.remote_dir}/{contract.TRAIN_LOG}", self._load(Run, run.id).log_offset
        cap = self.settings.log_cap_bytes
        for _ in range(LOG_CHUNKS_PER_STEP):
            room = cap - offset
            data = remote.read_from(path, offset, min(LOG_CHUNK_BYTES, room)) if room > 0 else b""
            whole = data.rfind(b"\n") + 1
            capped = len(data) >= room  # the head reached the cap: it ends at its last whole line
            if capped:
                end = whole
            elif len(data) < LOG_CHUNK_BYTES:  # the end of the file: its tail only when final
                end = len(data) if final else whole
            else:  # a full chunk: up to its last line, or all of a line longer than a chunk
                end = whole or len(data)
            if end:
                self._store_log(run.id, fence, offset, data[:end])
                offset += end
            if capped:  # the rest waits for the end of the run, when its last bytes are stored
                if final:
                    self._store_tail(remote, run, fence, path, offset)
                return False
            if end == 0 or len(data) < LOG_CHUNK_BYTES:
                return False
        return True

    def _store_tail(self, remote: Remote, run: Run, fence: int, path: str, offset: int) -> None:
        """A log longer than the cap: one marker chunk standing for the bytes not stored, then
        the file's last `log_tail_bytes` from a line start (where the final metrics are). The
        whole file is downloaded into the run's folder by the collecting step."""
        size = _file_size(remote, path)
        if size is None or size <= offset:
            return
        start = max(offset, size - self.settings.log_tail_bytes)
        tail = remote.read_from(path, start, size - start)
        if start > offset:  # begin the tail at a line start
            cut = tail.find(b"\n") + 1
            start, tail = start + cut, tail[cut:]
        if start > offset:
            marker = (f"[caddie: {start - offset:,} bytes of train.log not stored here: the stored log "
                      f"keeps its first {offset:,} bytes (CADDIE_LOG_CAP_BYTES) and its last "
                      f"{size - start:,}; the whole file is in the run's folder on the worker]\n")
            self._store_log(run.id, fence, offset, marker.encode(), nbytes=start - offset)
        if tail:
            self._store_log(run.id, fence, start, tail)

    def _store_log(self, run_id: int, fence: int, offset: int, data: bytes, *, nbytes: int | None = None) -> None:
        """One chunk covering bytes [offset, offset + nbytes) of train.log; nbytes differs from
        len(data) only for the marker that stands for bytes past the log cap."""
        # Chunks are split after "\n", so no UTF-8 sequence is cut; NUL cannot go into TEXT.
        text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        nbytes = len(data) if nbytes is None else nbytes
        with Session(self.engine) as session:
            try:
                session.add(LogChunk(run_id=run_id, offset=offset, nbytes=nbytes, text=text))
                session.flush()
            except IntegrityError:
                session.rollback()
                raise LeaseLost(f"run {run_id}: log offset {offset} was stored by another worker") from None
            update_run(session, run_id, fence=fence, log_offset=offset + nbytes)
        publish_log(run_id, offset + nbytes)  # wakes log streams; after the commit

    def _measure_code(self, local: Path) -> tuple[int, str]:
        files: dict[str, bytes] = {}
        for rel in _manifest(local):
            path = local / "code" / rel
            if not path.is_file():
                raise StepFailed(f"uploaded code file {rel} could not be collected from the pod")
            files[rel] = path.read_bytes()
        if not files:
            raise StepFailed(f"{MANIFEST} is missing: the uploaded code cannot be counted")
        return contract.code_digest(files)

    def _hold_for_budget(self, session: Session, run: Run, fence: int, provider: Provider, life_s: float) -> bool:
        """True when the run must wait for room under a budget cap; fails it when it never can."""
        price = provider.price_per_hour()
        if not price:
            return False
        cost = costs.estimate(price, life_s)
        experiment = session.get(Experiment, run.experiment_id)
        own = experiment.budget_usd if experiment is not None else None
        for cap, experiment_id, what in ((own, run.experiment_id, "the experiment's budget_usd"),
                                         (self.settings.experiment_budget_usd, run.experiment_id,
                                          "the experiment's budget (CADDIE_EXPERIMENT_BUDGET_USD)"),
                                         (self.settings.budget_usd, None, "the budget (CADDIE_BUDGET_USD)")):
            over = costs.over_budget(session, cap=cap, cost=cost, experiment_id=experiment_id, what=what)
            if over is None:
                continue
            reason, final = over
            notify.budget_hit(session, run, reason, final=final, cap=what)
            if final:
                raise StepFailed(reason)
            update_run(session, run.id, fence=fence, reason=f"waiting: {reason}")
            return True
        return False

    def _pod_facts(self, provider: Provider, pod: Pod) -> dict[str, Any]:
        facts: dict[str, Any] = {"provider": provider.name, "name": pod.name}
        price = provider.price_per_hour(pod) if provider.rents else None
        if price is not None:
            facts["cost_per_hour"] = price
        return facts

    def _retry_connect(self, run: Run, fence: int, exc: ConnectError) -> Delay:
        attempts = run.attempts + 1
        limit, first, most = self.settings.ssh_connect_attempts, 2.0, 30.0
        if isinstance(exc, RetryLater):  # the provider says how often and how long to wait
            limit, first, most = exc.attempts, exc.backoff_s, MAX_PROVIDER_BACKOFF_S
        if not exc.retryable or attempts >= limit:
            tries = f" (after {attempts} attempts)" if exc.retryable else ""
            return self._fail(run, fence, f"{exc.reason}{tries}")
        log.info("run %s: %s; try %d of %d", run.id, exc.reason, attempts, limit)
        # Before a pod is up the run's reason says what it waits for; provisioning clears it.
        waiting = {"reason": f"waiting: {exc.reason} (try {attempts} of {limit})"} \
            if run.status == RunStatus.provisioning else {}
        self._update(run, fence, attempts=attempts, **waiting)
        return min(most, first * 2 ** (attempts - 1))

    def _fail(self, run: Run, fence: int, reason: str, **fields: Any) -> Delay:
        log.info("run %s failed: %s", run.id, reason)
        self._move(run, fence, RunStatus.failed, reason=reason, **fields)
        return None

    @contextmanager
    def _remote(self, run: Run, fence: int) -> Iterator[tuple[Remote, Provider]]:
        """A connection to the run's pod; pins the host key on the run's first connection."""
        pod = self._load(Pod, run.pod_id) if run.pod_id is not None else None
        if pod is None:
            raise StepFailed("the run has no pod")
        if pod.status in (PodStatus.released, PodStatus.terminated):
            raise StepFailed(f"its pod {pod.name} was ended (past its deadline at {pod.deadline_at:%H:%M:%S} UTC, "
                             "or gone at the provider)" if pod.deadline_at else f"its pod {pod.name} was ended")
        provider = get_provider(pod.provider, self.settings)
        remote = provider.connect(pod, pinned_host_key=run.host_key)
        try:
            if run.host_key is None and remote.host_key is not None:
                self._update(run, fence, host_key=remote.host_key)
                run.host_key = remote.host_key
            yield remote, provider
        finally:
            remote.close()

    def _pod_row(self, session: Session, run: Run, provider: Provider, deadline_at: datetime, *,
                 shared_by: int | None = None) -> Pod:
        name = f"{self.settings.pod_prefix}{run.id}"
        pod = session.exec(select(Pod).where(Pod.name == name).order_by(col(Pod.id))).first()
        if pod is None:
            pod = Pod(run_id=run.id, provider=provider.name, name=name,
                      deadline_at=deadline_at, experiment_id=shared_by)
            session.add(pod)
            session.commit()
            session.refresh(pod)
        return pod

    def _deadline_s(self, run: Run) -> float:
        experiment = self._load(Experiment, run.experiment_id)
        try:
            if experiment.kind == "script":
                with Session(self.engine) as session:
                    names = file_names(session, experiment.id)
                return script.deadline_s(experiment, grace_s=self.settings.run_grace_s,
                                         requirements=script.REQUIREMENTS in names, arm=run.variant)
            return run_deadline_s(run_config(experiment, run), self.bundle.schema(),
                                  grace_s=self.settings.run_grace_s)
        except ValueError as exc:
            raise StepFailed(exc.args[0] if experiment.kind == "script" else f"config: {exc}") from None

    def _overdue(self, run: Run) -> bool:
        # The pod's own `timeout` should have fired long before; this is the worker's backstop.
        if run.started_at is None:
            return False
        return utcnow() > as_utc(run.started_at) + timedelta(seconds=self._deadline_s(run) + 120)

    def _place(self, session: Session, run: Run, pod: Pod, provider: Provider) -> bool:
        """Write what the provider found for the pod; False while it has no reachable host yet."""
        seen = provider.place(session, pod)
        if seen is not None and seen.status == PodStatus.starting:
            move_pod(session, pod, PodStatus.starting, why=f"rented for run {run.id}", **seen.fields())
            if seen.note is not None:
                self._note_once(session, run.id, seen.note, key=seen.note_key or seen.note)
            seen = provider.place(session, pod)  # just rented: it may be up already
        if seen is None:
            return False
        move_pod(session, pod, PodStatus.ready, why=f"run {run.id}", **seen.fields())
        if provider.displaced(session, pod):
            move_pod(session, pod, PodStatus.requested, why="an older pod holds its host",
                     host=None, port=None, username=None)
            return False
        return True

    def _note_once(self, session: Session, run_id: int, note: str, *, key: str) -> None:
        """An event in the run's history that changes no status, said once per run (not per try)."""
        said = select(RunEvent.id).where(RunEvent.run_id == run_id, col(RunEvent.reason).startswith(key))
        if session.exec(said).first() is None:
            status = RunStatus.provisioning
            session.add(RunEvent(run_id=run_id, from_status=status, to_status=status, reason=note))
            session.commit()

    def _set_pod_status(self, run: Run, status: PodStatus) -> None:
        with Session(self.engine) as session:
            pod = session.get(Pod, run.pod_id)
            if pod is None:
                return
            move_pod(session, pod, status, why=f"run {run.id}")

    def _local_dir(self, run: Run) -> Path:
        path = self.settings.runs_dir() / str(run.id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _must(self, remote: Remote, command: str) -> None:
        result = remote.run(command, timeout_s=60)
        if not result.ok:
            raise StepFailed(f"command on the pod failed ({command.split()[0]}): {result.stderr.strip()[-200:]}")

    def _move(self, run: Run, fence: int, to: RunStatus, **fields: Any) -> None:
        with Session(self.engine) as session:
            transition(session, run.id, to, fence=fence, **fields)

    def _update(self, run: Run, fence: int, **fields: Any) -> None:
        with Session(self.engine) as session:
            update_run(session, run.id, fence=fence, **fields)

    def _load(self, table: type, row_id: int | None) -> Any:
        with Session(self.engine) as session:
            row = None if row_id is None else get_run(session, row_id) if table is Run else session.get(table, row_id)
            if row is None:
                raise StepFailed(f"{table.__name__.lower()} {row_id} does not exist")
            session.expunge(row)
            return row


def _ended(session: Session, run_id: int | None) -> bool:
    run = session.get(Run, run_id) if run_id is not None else None
    return run is None or run.status in FINAL_RUN_STATUSES


def _first_waiting(session: Session, experiment_id: int) -> int | None:
    """The experiment's earliest seed that has no pod yet: the one that rents the shared pod."""
    waiting = [RunStatus.queued, RunStatus.provisioning]
    query = select(Run.id).where(Run.experiment_id == experiment_id, col(Run.status).in_(waiting),
                                 col(Run.cancel_requested).is_(False)).order_by(col(Run.id))
    return session.exec(query).first()


def _unfit(preflight: dict[str, Any], provider: Provider, min_free_disk_gb: float) -> str | None:
    """Why the pod cannot run the trainer, or None."""
    if not preflight.get("torch"):
        return (f"the pod cannot run the trainer: {provider.python} has no torch "
                f"({preflight.get('torch_error') or 'not installed'})")
    version = re.match(r"(\d+)\.(\d+)", str(preflight["torch"]))
    if version and (int(version[1]), int(version[2])) < contract.MIN_TORCH:
        return (f"the pod cannot run the trainer: {provider.python} has torch {preflight['torch']}, the trainer "
                f"needs {contract.MIN_TORCH[0]}.{contract.MIN_TORCH[1]} or newer (CADDIE_RUNPOD_IMAGE picks the image)")
    free = preflight.get("free_disk_bytes")
    if isinstance(free, int) and free < min_free_disk_gb * 1e9:
        return (f"the pod cannot run the trainer: {free / 1e9:,.1f} GB free in {provider.workdir}, "
                f"below CADDIE_MIN_FREE_DISK_GB ({min_free_disk_gb:g} GB)")
    return None


def _with_worker(results: dict[str, Any] | None, **facts: Any) -> dict[str, Any]:
    """results with facts merged into its "worker" part (what the worker itself observed)."""
    results = dict(results or {})
    results["worker"] = {**(results.get("worker") or {}), **facts}
    return results


def _finalize_experiment(session: Session, experiment_id: int) -> Any:
    try:
        from server.experiments import finalize_experiment  # written beside the API
    except ImportError:
        log.debug("server.experiments.finalize_experiment is not available")
        return None
    return finalize_experiment(session, experiment_id)


def _exit_reason(code: int | None) -> str:
    if code in launcher.TIMEOUT_EXIT_CODES:
        return f"trainer exited with code {code} (stopped at its wall-clock deadline)"
    return f"trainer exited with code {code}"


def _result_numbers(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the run row keeps, checked: a wrong type means results.json is corrupt."""
    kinds = {"val_loss": float, "val_bpb": float, "pre_quant_val_bpb": float, "steps": int,
             "train_time_s": float, "eval_time_s": float, "val_tokens": int}
    numbers: dict[str, Any] = {}
    for key, kind in kinds.items():
        value = results.get(key)
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value) and (kind is float or float(value).is_integer()))
        if not ok:
            raise StepFailed(f"{contract.RESULTS} is corrupt: {key} = {value!r} is not a finite "
                             f"{'integer' if kind is int else 'number'}")
        numbers[key] = None if value is None else kind(value)
    return numbers


def _wall_s(run: Run) -> float | None:
    if run.started_at is None or run.exited_at is None:
        return None
    return (as_utc(run.exited_at) - as_utc(run.started_at)).total_seconds()


def _artifact_name(results: Any) -> str:
    name = results.get("artifact_file") if isinstance(results, dict) else None
    if isinstance(name, str) and name and Path(name).name == name and name not in (".", ".."):
        return name
    return contract.ARTIFACT


def _manifest(local: Path) -> dict[str, Any]:
    manifest = _read_json(local / MANIFEST)
    if not isinstance(manifest, dict):
        return {}
    return {rel: v for rel, v in manifest.items() if _CODE_PATH.match(rel) and ".." not in rel}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise StepFailed(f"{path.name} is corrupt: not valid JSON") from None


def _file_size(remote: Remote, path: str) -> int | None:
    found = remote.run(f"stat -c %s {shlex.quote(path)}", timeout_s=30).stdout.strip()
    return int(found) if found.isdigit() else None


def _get_if_there(remote: Remote, path: str, local: Path) -> None:
    if remote.exists(path):
        remote.get(path, str(local))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _step_s(numbers: dict[str, Any]) -> float | None:
    """A training step's mean time (training time over steps), for the one-step time rule."""
    train_s, steps = numbers.get("train_time_s"), numbers.get("steps")
    return train_s / steps if train_s is not None and steps else None
