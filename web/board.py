"""The leaderboard page's view: which sort, filters and page a URL asks for, the links
that change one of them, and the entries to show.

The default sort (rank: lowest mean val_bpb first) is the service's own order and is paged
in SQL. Other sorts read the filtered board whole from `read_leaderboard` and sort it here,
which is fine for the hundreds of experiments a board holds.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session

from server.leaderboard import LeaderboardEntry, LeaderboardPublic, read_leaderboard

ALL = 2**31 - 1  # "no limit" for read_leaderboard
DEFAULT_SORT = "rank"
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100

# Sort key -> value of an entry; entries without a value go last in either direction.
SORT_KEYS: dict[str, Callable[[LeaderboardEntry], Any]] = {
    "rank": lambda e: e.mean_val_bpb,
    "name": lambda e: e.name.casefold(),
    "author": lambda e: e.author.casefold(),
    "date": lambda e: e.finished_at,
    "seeds": lambda e: e.n,
    "bytes": lambda e: e.max_bytes_total,
    "train": lambda e: e.max_train_time_s,
    "eval": lambda e: e.max_eval_time_s,
}
# `?sort=date` ascending, `?sort=-date` descending.
SORT_PATTERN = "^-?(" + "|".join(SORT_KEYS) + ")$"


@dataclass(frozen=True)
class BoardView:
    sort: str = DEFAULT_SORT
    eligible: bool = False
    preset: str | None = None
    author: str | None = None
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    def url(self, **changes: Any) -> str:
        """This view's URL with `changes`; a filter or sort change goes back to page 1."""
        if "page" not in changes:
            changes["page"] = 1
        view = replace(self, **changes)
        defaults = BoardView()
        params = {name: _query_value(value) for name, value in asdict(view).items()
                  if value != getattr(defaults, name) and value is not None}
        return "/" + (f"?{urlencode(params)}" if params else "")

    def sort_url(self, key: str) -> str:
        """The column header's link: sort by `key`, or reverse it if it is the sort now."""
        return self.url(sort=f"-{key}" if self.sort == key else key)

    def sort_direction(self, key: str) -> str | None:
        """"ascending"/"descending" for the column sorted by, as aria-sort spells it."""
        if self.sort.lstrip("-") != key:
            return None
        return "descending" if self.sort.startswith("-") else "ascending"

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def last_page(self, total: int) -> int:
        return max(1, -(-total // self.per_page))


def _query_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def read_board(session: Session, view: BoardView) -> LeaderboardPublic:
    """The entries of the view's page and the count of all that match its filters."""
    read = partial(read_leaderboard, session, eligible_only=view.eligible, preset=view.preset,
                   author=view.author)
    if view.sort == DEFAULT_SORT:
        return read(limit=view.per_page, offset=view.offset)
    board = read(limit=ALL, offset=0)
    entries = sort_entries(board.data, view.sort)
    return LeaderboardPublic(data=entries[view.offset:view.offset + view.per_page],
                             count=board.count)


def sort_entries(entries: list[LeaderboardEntry], sort: str) -> list[LeaderboardEntry]:
    key = SORT_KEYS[sort.lstrip("-")]
    present = [e for e in entries if key(e) is not None]
    missing = [e for e in entries if key(e) is None]
    # sorted() is stable, so ties keep the service's rank order.
    return sorted(present, key=key, reverse=sort.startswith("-")) + missing
