"""Webhook notifications (Slack-compatible: a JSON body with "text"), sent by a worker.

The server only enqueues them, after the change they report is committed; a worker posts
them with retries, so a slow or failing webhook never holds up a run.
"""

import logging
from typing import Any

from sqlmodel import Session, col, select

from server.config import get_settings
from server.dispatch import enqueue_notification
from server.models import Run
from server.states import RunStatus

log = logging.getLogger(__name__)


def slack_text(text: str) -> str:
    """`text` as Slack shows it literally: &, < and > escaped as Slack's message formatting
    asks, so a name such as `<!channel>` or `<https://x|y>` pings no one and links nowhere."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notify(event: str, text: str, **fields: Any) -> None:
    """Queue a notification; never raises (a lost notification must not fail a run)."""
    if get_settings().webhook_url is None:
        return
    try:
        enqueue_notification({"text": slack_text(text), "event": event, **fields})
    except Exception:  # noqa: BLE001 - the broker being down must not fail the caller
        log.warning("could not queue the %s notification", event, exc_info=True)


def run_ended(run_id: int, experiment_id: int, seed: int, status: str, reason: str | None) -> None:
    why = f": {reason}" if reason else ""
    notify("run.ended", f"Caddie run {run_id} (experiment {experiment_id}, seed {seed}) {status}{why}",
           run_id=run_id, experiment_id=experiment_id, seed=seed, status=status)


def experiment_ended(experiment_id: int, name: str, status: str, mean_val_bpb: float | None,
                     eligible: bool) -> None:
    score = f"mean val_bpb {mean_val_bpb:.4f}" if mean_val_bpb is not None else "no score"
    verdict = "record-eligible" if eligible else "not record-eligible"
    notify("experiment.ended", f"Caddie experiment {experiment_id} '{name}' {status}: {score}, {verdict}",
           experiment_id=experiment_id, status=status, mean_val_bpb=mean_val_bpb, eligible=eligible)


def pod_terminated(provider: str, external_id: str, pod: str, why: str) -> None:
    """A safety stop ended a pod (the reconciler); sent once, when the provider confirms.
    `pod` says which (its name and listed status), `why` which stop."""
    notify("pod.terminated", f"Caddie ended {provider} pod {external_id}, {pod}: {why}",
           provider=provider, external_id=external_id, pod=pod, why=why)


def budget_hit(session: Session, run: Run, reason: str, *, final: bool, cap: str) -> None:
    """A run of an experiment waits for (final=False) or fails on (final=True) a budget cap.

    Once per hit and experiment, not once per poll: nothing is sent while another run of the
    experiment already waits on the same cap (or, for a failure, already failed on it), nor
    while this run itself already waits on it. `cap` is the text naming the cap in reasons.
    """
    if _already_told(session, run, final=final, cap=cap):
        return
    what = "fails" if final else "waits"
    notify("budget.hit", f"Caddie run {run.id} (experiment {run.experiment_id}) {what}: {reason}",
           run_id=run.id, experiment_id=run.experiment_id, final=final, reason=reason)


def _already_told(session: Session, run: Run, *, final: bool, cap: str) -> bool:
    pattern = f"%{cap}%"
    if final:
        query = select(Run.id).where(Run.experiment_id == run.experiment_id, Run.id != run.id,
                                     Run.status == RunStatus.failed, col(Run.reason).like(pattern))
    else:
        query = select(Run.id).where(Run.experiment_id == run.experiment_id,
                                     Run.status == RunStatus.provisioning,
                                     col(Run.reason).like(f"waiting: {pattern}"))
    return session.exec(query.limit(1)).first() is not None
