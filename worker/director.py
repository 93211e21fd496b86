"""RunDirector: moves one run one step along its lifecycle, one method per state.

    queued → provisioning → connecting → uploading → running → collecting → verifying
           → succeeded | failed | cancelled

Each call of `advance` takes the run's lease, re-reads the row, does the step for the
state it finds, writes with the lease's fence and gives the lease back with the time of
the next look. Steps are idempotent: a redelivered step finds the pod row, the launched
marker and the stored log offset of the earlier attempt and carries on from there.

What differs between Caddie's trainer and a participant's script (the code, the launch,
the deadline, the artifact, the verification) is the run's kind (worker.runkinds), chosen
at each step from its experiment. A share_pods experiment's seeds take turns on one pod
(worker.podshare); the log is copied by worker.trainlog, the pod checked by worker.preflight.

Not in charge of: queueing (worker.tasks), waking runs (worker.reconciler), the rules of
eligibility (server.eligibility) or experiment statistics (server.experiments).
"""

import logging
import shlex
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import trainer.contract as contract
from server import costs, logsetup, nodes, notify, waitlist
from server.config import Settings
from server.errors import Conflict
from server.models import Experiment, Pod, Run, RunEvent, as_utc, utcnow
from server.pods import move_pod
from server.runs import acquire_lease, get_run, release_lease, transition, update_run
from server.states import FINAL_RUN_STATUSES, LIVE_POD_STATUSES, PodStatus, RunStatus
from server.workerfacts import WorkerFacts, with_worker
from worker import launcher, podshare, script
from worker.bundle import Bundle, default_bundle
from worker.errors import ConnectError, StepFailed
from worker.poddata import PodData
from worker.preflight import preflight, unfit
from worker.providers import Provider, RetryLater, get_provider
from worker.remote import Remote, run_or_fail
from worker.runkinds import LAST_LINES, RunKind, run_kind
from worker.trainlog import TrainLog

log = logging.getLogger(__name__)

MAX_PROVIDER_BACKOFF_S = 300.0  # between tries of a provider that has no capacity or fails

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
        logsetup.bind(experiment_id=run.experiment_id, pod_id=run.pod_id)  # for this task's log lines
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
        if experiment.share_pods:
            shared = self._shared_pod(run, fence, experiment, provider, life_s)
            if shared is not None:
                return shared
        # One session at a time: on SQLite every transaction takes the write lock (BEGIN IMMEDIATE).
        with Session(self.engine) as session:
            pod = self._pod_row(session, run, provider, utcnow() + timedelta(seconds=life_s),
                                shared_by=experiment.id if experiment.share_pods else None)
            update_run(session, run.id, fence=fence, pod_id=pod.id)
            if pod.host is None and pod.external_id is None and provider.rents:
                waiting = self._wait_to_rent(session, run, fence, pod, provider, life_s)
                if waiting is not None:
                    return waiting
            if pod.host is None and not self._place(session, run, pod, provider):
                log.info("run %s: no %s host free yet", run.id, provider.name)
                waiting_for = provider.wait_reason(session, pod)
                if waiting_for is not None and waiting_for != run.reason:
                    update_run(session, run.id, fence=fence, reason=waiting_for)
                return self.settings.poll_interval_s
            update_run(session, run.id, fence=fence, attempts=0, reason=None,
                       results=with_worker(run.results, pod=self._pod_facts(provider, pod)))
        self._move(run, fence, RunStatus.connecting)
        return 0

    def connecting(self, run: Run, fence: int) -> Delay:
        with self._remote(run, fence) as (remote, provider):
            stored = self._load(Run, run.id).results
            found = WorkerFacts.from_results(stored).preflight or preflight(remote, provider)
            results = with_worker(stored, preflight=found)
            unfit_reason = unfit(found, provider, self.settings.min_free_disk_gb)
            if unfit_reason is not None:
                return self._fail(run, fence, unfit_reason, results=results)
            pod, kind = self._load(Pod, run.pod_id), self._kind(run)
            data = PodData(self.settings, self.engine, self.bundle).prepare(remote, provider, pod, run, kind)
            if data is None:  # the pod is still fetching its data
                self._update(run, fence, results=results, reason="preparing the pod: fetching its data")
                return self.settings.poll_interval_s
            results = with_worker(results, data=data)
        if run.reason is not None:  # "preparing the pod: …" is over
            self._update(run, fence, reason=None)
        names = found["gpus"]
        self._move(run, fence, RunStatus.uploading, gpu_name=names[0] if names else None,
                   gpu_count=len(names), attempts=0, results=results)
        return 0

    def uploading(self, run: Run, fence: int) -> Delay:
        kind = self._kind(run)
        files, counted = kind.code()
        code_bytes, code_sha256 = contract.code_digest(counted)
        with self._remote(run, fence) as (remote, provider):
            run_dir = f"{provider.workdir}/run-{run.id}"
            folders = sorted({f"{run_dir}/code/{rel}".rsplit("/", 1)[0] for rel in files})
            run_or_fail(remote, "mkdir -p " + " ".join(shlex.quote(f) for f in folders))
            if not remote.exists(f"{run_dir}/launched"):
                kind.upload(remote, run, run_dir, provider, self._load(Pod, run.pod_id))
            with Session(self.engine) as session:
                update_run(session, run.id, fence=fence, remote_dir=run_dir, code_bytes=code_bytes,
                           code_sha256=code_sha256, started_at=run.started_at or utcnow(),
                           results=with_worker(self._load(Run, run.id).results, **kind.ran(run)))
            if not launcher.launch(remote, run_dir, user=kind.launch_user(provider)):
                log.info("run %s: trainer already launched; not starting another", run.id)
        self._set_pod_status(run, PodStatus.busy)
        self._move(run, fence, RunStatus.running, attempts=0)
        return 0

    def running(self, run: Run, fence: int) -> Delay:
        assert run.remote_dir is not None
        with self._remote(run, fence) as (remote, _):
            more = TrainLog(self.settings, self.engine).pull(remote, run, fence, final=False)
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
        with self._remote(run, fence) as (remote, _):
            if TrainLog(self.settings, self.engine).pull(remote, run, fence, final=True):
                return 0  # more of the log is waiting: the next step stores it, to its end
            facts = self._kind(run).collect(remote, run, self._local_dir(run))
        if facts:
            self._update(run, fence, results=with_worker(self._load(Run, run.id).results, **facts))
        self._move(run, fence, RunStatus.verifying)
        return 0

    def verifying(self, run: Run, fence: int) -> Delay:
        verdict = self._kind(run).verify(run, self._local_dir(run))
        if verdict.failure is not None:
            return self._fail(run, fence, verdict.failure, **verdict.fields)
        self._move(run, fence, RunStatus.succeeded, **verdict.fields)
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
            if run.status == RunStatus.succeeded.value:
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

    def _shared_pod(self, run: Run, fence: int, experiment: Experiment, provider: Provider,
                    life_s: float) -> Delay | None:
        """A seed of a share_pods experiment takes the experiment's one pod when the seed before
        it is done with it, and waits while it is busy; None: this run rents it (usual steps)."""
        with Session(self.engine) as session:
            turn = podshare.turn(session, run, experiment.id, life_s)
            if turn is None:
                return None
            if isinstance(turn, str):
                update_run(session, run.id, fence=fence, reason=turn)
                return self.settings.poll_interval_s
            update_run(session, run.id, fence=fence, pod_id=turn.id, attempts=0, reason=None,
                       results=with_worker(run.results, pod=self._pod_facts(provider, turn)))
        self._move(run, fence, RunStatus.connecting)
        return 0

    def _hand_over(self, run: Run, pod: Pod) -> bool:
        """Whether the ended run's shared pod stays up for the experiment's next seed (podshare)."""
        # The next seed's life plus the pod's data-download allowance: the provider's own stop
        # keeps that allowance for a slow first download, and no seed may spend it.
        def seed_life_s() -> float:
            return self._deadline_s(run) + self.settings.pod_margin_s + self.settings.pod_fetch_allowance_s
        with Session(self.engine) as session:
            return podshare.hand_over(session, run, pod, get_provider(pod.provider, self.settings), seed_life_s)

    def _wait_to_rent(self, session: Session, run: Run, fence: int, pod: Pod, provider: Provider,
                      life_s: float) -> Delay:
        """Seconds to wait while the pod cap or a budget holds the rent back; None: rent it now."""
        ahead = waitlist.pods_ahead(session, pod, self.settings)  # up, or ahead in the queue
        if ahead >= self.settings.max_pods:
            waiting = (f"waiting for a pod: {ahead} {provider.name} pods are up or ahead in line, "
                       f"the cap is {self.settings.max_pods} (CADDIE_MAX_PODS)")
            update_run(session, run.id, fence=fence, reason=waiting)
            return self.settings.poll_interval_s
        if self._hold_for_budget(session, run, fence, provider, life_s):
            return self.settings.poll_interval_s
        # Its life (deadline, billing) starts when it is asked for, not when it got in line:
        # both from one clock reading, so the deadline is exactly life_s after creation.
        asked_at = utcnow()
        pod.created_at, pod.deadline_at = asked_at, asked_at + timedelta(seconds=life_s)
        return None

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

    # --- helpers ------------------------------------------------------------------------

    def _kind(self, run: Run) -> RunKind:
        return run_kind(self._load(Experiment, run.experiment_id), settings=self.settings, engine=self.engine,
                        bundle=self.bundle)

    def _deadline_s(self, run: Run) -> float:
        return self._kind(run).deadline_s(run)

    def _overdue(self, run: Run) -> bool:
        # The pod's own `timeout` should have fired long before; this is the worker's backstop.
        if run.started_at is None:
            return False
        return utcnow() > as_utc(run.started_at) + timedelta(seconds=self._deadline_s(run) + 120)

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
            if run.status == RunStatus.provisioning.value else {}
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
        if pod.status in (PodStatus.released.value, PodStatus.terminated.value):
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

    def _local_dir(self, run: Run) -> Path:
        path = self.settings.runs_dir() / str(run.id)
        path.mkdir(parents=True, exist_ok=True)
        return path

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
