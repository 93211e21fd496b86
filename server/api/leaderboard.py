"""The leaderboard of finished experiments."""

from fastapi import APIRouter

from server import leaderboard
from server.api.deps import FilterText, Limit, Offset, SessionDep
from server.errors import NotFound
from server.leaderboard import LeaderboardOrder, LeaderboardPublic, Track

router = APIRouter(prefix="/leaderboard", tags=["leaderboard"])


@router.get("")
def read_leaderboard(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    track: Track = Track.record,
    eligible: bool = False,
    unverified: bool = False,
    failed: bool = False,
    provider: FilterText = None,
    preset: FilterText = None,
    author: FilterText = None,
    order: LeaderboardOrder = LeaderboardOrder.rank,
    desc: bool = False,
) -> LeaderboardPublic:
    """The `track`'s finished experiments by mean val_bpb, lowest first (or by `order`, reversed with
    `desc`); entries without the sorted value (unscored, unpriced) last either way.
    `unverified` ranks every score, also those Caddie did not measure (each entry's
    `score_source` says who measured it); `failed` adds experiments with no succeeded seed
    (unranked). An offset past the last match is a 404."""
    board = leaderboard.read_leaderboard(
        session, limit=limit, offset=offset, track=track, eligible_only=eligible, unverified=unverified,
        failed=failed, provider=provider, preset=preset, author=author, order=order, desc=desc,
    )
    if offset > 0 and offset >= board.count:
        raise NotFound(f"offset {offset} is past the last of {board.count} matching experiments")
    return board
