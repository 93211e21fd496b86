"""Pod rows: the one writer of a pod's status.

Pods cost money, so every move of `Pod.status` goes through `move_pod()`: a conditional UPDATE
that holds only while the row is in a state the move is legal from (`server.states.POD_MOVES`),
with a log line for each move. Providers say what they see; the director and the reconciler
write it here.
"""

import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from server.errors import InvalidTransition
from server.models import Pod, table_of, utcnow
from server.states import PodStatus, pod_sources

log = logging.getLogger(__name__)


def move_pod(session: Session, pod: Pod, to_status: PodStatus, *, why: str | None = None,
             **fields: Any) -> None:
    """Move `pod` to `to_status`, writing `fields` (host, port, external_id...) with it, and commit.

    A pod already in `to_status` keeps it (a retried step writes its fields again). Raises
    InvalidTransition, writing nothing, when the stored status has no legal move to `to_status`.
    """
    assert pod.id is not None
    pod_id, name, before = pod.id, pod.name, pod.status
    session.add(pod)
    session.flush()  # the row's other pending changes go first, in the same transaction
    now = utcnow()
    values: dict[str, Any] = {"status": to_status.value, "updated_at": now, **fields}
    if to_status == PodStatus.terminated:
        values.setdefault("terminated_at", now)
    table = table_of(Pod)
    sources = (*pod_sources(to_status), to_status)
    result = session.execute(update(table).where(table.c.id == pod_id, table.c.status.in_(sources))
                             .values(**values))
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
        session.rollback()
        stored = session.exec(select(Pod.status).where(Pod.id == pod_id)).first()
        raise InvalidTransition(f"pod {pod_id} ({name}): {stored or 'missing'} -> {to_status} "
                                "is not allowed")
    for column, value in values.items():
        set_committed_value(pod, column, value)
    session.commit()
    if before != to_status.value:
        log.info("pod %s (%s): %s -> %s%s", pod_id, name, before, to_status.value,
                 f" ({why})" if why else "")
