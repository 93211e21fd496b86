"""Annotated aliases that route signatures share."""

from typing import Annotated

from fastapi import Depends, Path, Query
from sqlmodel import Session

from server.db import get_session

SessionDep = Annotated[Session, Depends(get_session)]

# Ids are 32-bit INTEGER columns; larger numbers are refused here rather than by the database.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
# PostgreSQL text cannot hold NUL, so a filter carrying one is refused as invalid input.
FilterText = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")]
