"""The visible queue: experiments waiting for pods, in the order they get them."""

from fastapi import APIRouter
from pydantic import BaseModel

from server import waitlist
from server.api.deps import SessionDep
from server.waitlist import QueueEntry

router = APIRouter(prefix="/queue", tags=["queue"])


class QueuePublic(BaseModel):
    data: list[QueueEntry]
    count: int


@router.get("")
def read_queue(session: SessionDep) -> QueuePublic:
    """Experiments with runs waiting for a pod: priority (higher first), then submission time,
    with each one's position, waiting runs and estimated start."""
    entries = waitlist.queue(session)
    return QueuePublic(data=entries, count=len(entries))
