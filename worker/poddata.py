"""Preparing a pod's data for a run: the `data` link in the folder the run runs in, and on
the pod's first run the check of that data and its one fetch (see worker.datasets); and the
pod's deadline told to its watchdogs.
"""

import shlex
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.config import Settings
from server.models import Pod, Run, as_utc, utcnow
from worker import datasets
from worker.bundle import Bundle
from worker.errors import StepFailed
from worker.providers import Provider
from worker.remote import Remote, run_or_fail
from worker.runkinds import RunKind


class PodData:
    def __init__(self, settings: Settings, engine: Engine, bundle: Bundle) -> None:
        self.settings = settings
        self.engine = engine
        self.bundle = bundle

    def prepare(self, remote: Remote, provider: Provider, pod: Pod, run: Run, kind: RunKind) -> dict[str, Any] | None:
        """Link the run's folder to the pod's data and, on the pod's first run, check that data
        (fetching it where it is missing) and set Pod.prepared_at; None while a fetch runs.
        Returns the facts of the check, for results["worker"]["data"]."""
        write_deadline(remote, provider, pod)
        run_dir = f"{provider.workdir}/run-{run.id}"
        folder = kind.work_folder(run_dir)
        try:
            need = datasets.need(kind.data_path(run), provider.data_dir)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None
        if need.variant is not None:
            q = shlex.quote
            run_or_fail(remote, f"mkdir -p {q(folder)} {q(provider.data_dir)} && "
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
        life_s = kind.deadline_s(run) + self.settings.pod_margin_s
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
            write_deadline(remote, provider, row)
        return {**facts, "fetched": fetched}

    def _start_fetch(self, remote: Remote, provider: Provider, folder: str, variant: str) -> None:
        """Start the trainer's `data fetch` detached in `folder`, with its own copy of the trainer."""
        for rel, data in self.bundle.files().items():
            run_or_fail(remote, f"mkdir -p {shlex.quote(f'{folder}/code/{rel}'.rsplit('/', 1)[0])}")
            remote.put_bytes(data, f"{folder}/code/{rel}")
        argv = [*self.bundle.entry(provider.python, run_dir=folder), "data", "fetch", "--variant", variant,
                "--train-shards", str(self.settings.pod_train_shards), "--out", provider.data_dir,
                "--revision", self.settings.data_revision, "--cache-dir", f"{provider.data_dir}/hf-cache"]
        if self.settings.data_base_url:
            argv += ["--endpoint", self.settings.data_base_url]
        datasets.start_fetch(remote, folder, argv, pythonpath=f"{folder}/code", python=provider.python)


def write_deadline(remote: Remote, provider: Provider, pod: Pod) -> None:
    """Tell the pod's watchdogs its deadline (moved on when a shared pod takes another seed)."""
    if provider.deadline_file is not None and pod.deadline_at is not None:
        remote.put_bytes(f"{int(as_utc(pod.deadline_at).timestamp())}\n".encode(), provider.deadline_file)
