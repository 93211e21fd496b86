"""The leaderboard page's view: which sort, filters and page a URL asks for, the links
that change one of them, and the entries to show.

Every sort is `read_leaderboard`'s own `order`, sorted and paged in SQL; the page spells
it `?sort=bytes` (ascending) or `?sort=-bytes` (descending).
"""

from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session

from server.leaderboard import (
    Against,
    LeaderboardOrder,
    LeaderboardPublic,
    Track,
    read_leaderboard,
)

DEFAULT_SORT = LeaderboardOrder.rank.value
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100

SORT_PATTERN = "^-?(" + "|".join(order.value for order in LeaderboardOrder) + ")$"


@dataclass(frozen=True)
class BoardView:
    track: str = Track.record.value
    sort: str = DEFAULT_SORT
    eligible: bool = False
    unverified: bool = False  # also experiments whose score Caddie did not measure
    failed: bool = False  # also experiments with no succeeded seed
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
    return read_leaderboard(
        session, limit=view.per_page, offset=view.offset, track=Track(view.track),
        eligible_only=view.eligible,
        unverified=view.unverified, failed=view.failed, preset=view.preset, author=view.author, order=LeaderboardOrder(view.sort.lstrip("-")),
        desc=view.sort.startswith("-"))


UNIT_WORDS = {"nats_per_token": "nats/token", "nats_per_byte": "nats/byte",
              "bits_per_byte": "bits/byte"}


def against_text(against: Against) -> str:
    """What a Δ and p are against, in a few words: "vs NAME (#id, 1.0611 bpb, 2026-04-01)",
    "vs 1.2244 bpb (chosen at submission)", or why there was none."""
    score = f"{against.val_bpb:.4f} bpb" if against.val_bpb is not None else None
    if against.name or against.experiment_id is not None:
        facts = [f"#{against.experiment_id}" if against.experiment_id is not None else None,
                 score, against.date]
        details = ", ".join(fact for fact in facts if fact)
        name = against.name or f"experiment {against.experiment_id}"
        return f"vs {name}" + (f" ({details})" if details else "")
    if score is not None:
        return f"vs {score}" + (f" ({against.source})" if against.source else "")
    return f"no reference: {against.source}" if against.source else "no reference"
