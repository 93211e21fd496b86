"""Webhook notifications (Slack-compatible: a JSON body with "text"), sent by a worker.

The server only enqueues them, after the change they report is committed; a worker posts
them with retries, so a slow or failing webhook never holds up a run.
"""

import logging
from typing import Any

from server.config import get_settings
from server.queue import enqueue_notification

log = logging.getLogger(__name__)


def notify(event: str, text: str, **fields: Any) -> None:
    """Queue a notification; never raises (a lost notification must not fail a run)."""
    if get_settings().webhook_url is None:
        return
    try:
        enqueue_notification({"text": text, "event": event, **fields})
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
