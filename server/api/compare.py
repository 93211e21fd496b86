"""Two experiments side by side: their seeds and Welch's test against the record margin."""

from fastapi import APIRouter

from server.api.deps import SessionDep
from server.comparison import ComparisonPublic, ExperimentId, compare

router = APIRouter(tags=["compare"])


@router.get("/compare")
def read_comparison(session: SessionDep, a: ExperimentId, b: ExperimentId) -> ComparisonPublic:
    """Experiment `a` against `b`: their seeds' val_bpb and a one-sided Welch's t-test of
    mean(a) < mean(b) − 0.005 nats (in bits per byte)."""
    return compare(session, a, b)
