"""Reading a run's stored train.log by byte offset.

The worker stores the log as `LogChunk` rows of whole lines: chunk i covers bytes
[offset, offset + nbytes) of train.log, and chunks follow each other without gaps.
A reader asks from any byte offset and continues from the `next_offset` it got back.
"""

from pydantic import BaseModel
from sqlmodel import Session, col, select

from server.models import LogChunk
from server.runs import get_run

DEFAULT_READ_BYTES = 256 * 1024
MAX_READ_BYTES = 4 * 1024 * 1024


class LogSlice(BaseModel):
    offset: int  # byte offset of text's first byte in train.log
    next_offset: int  # where the next read continues; == offset when nothing new is stored
    text: str


def read_log(session: Session, run_id: int, *, offset: int = 0,
             limit: int = DEFAULT_READ_BYTES) -> LogSlice:
    """Up to `limit` bytes of the run's log from byte `offset` (404 if the run is unknown)."""
    if offset < 0 or limit < 1:
        raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset} limit={limit}")
    get_run(session, run_id)
    chunks = session.exec(
        select(LogChunk)
        .where(LogChunk.run_id == run_id,
               col(LogChunk.offset) + col(LogChunk.nbytes) > offset,
               col(LogChunk.offset) < offset + limit)
        .order_by(col(LogChunk.offset))
    ).all()
    pieces: list[bytes] = []
    position = offset
    for chunk in chunks:
        budget = offset + limit - position
        if chunk.offset > position or budget <= 0:
            break  # a gap (what follows is not stored yet) or the limit reached
        piece, position = _take(chunk, position, budget, first=not pieces)
        if not piece:
            break
        pieces.append(piece)
    return LogSlice(offset=offset, next_offset=position,
                    text=b"".join(pieces).decode("utf-8", errors="replace"))


def _take(chunk: LogChunk, position: int, budget: int, *, first: bool) -> tuple[bytes, int]:
    """Bytes of `chunk` from log position `position`, at most `budget` of them (more only
    when it is the first piece of a read and cannot be cut), and the position after them."""
    data = chunk.text.encode("utf-8")
    start = position - chunk.offset
    if len(data) != chunk.nbytes:
        # The worker replaced undecodable bytes with U+FFFD (3 bytes for 1), so positions
        # inside this chunk are approximate: its rest is returned in one piece.
        if budget < chunk.nbytes - start and not first:
            return b"", position
        return data[min(start, len(data)):], chunk.offset + chunk.nbytes
    end = min(len(data), start + budget)
    if end < len(data):
        end = _char_start(data, end, floor=start)
        if end == start and first:
            # The limit is smaller than one character: return that character anyway.
            end = _char_start(data, start + 1, floor=start, forward=True)
    return data[start:end], chunk.offset + end


def _char_start(data: bytes, index: int, *, floor: int, forward: bool = False) -> int:
    """The nearest index at or before (or after) `index` that does not split a UTF-8
    character, never below `floor`."""
    step = 1 if forward else -1
    while floor < index < len(data) and (data[index] & 0xC0) == 0x80:  # 0b10xxxxxx
        index += step
    return index
