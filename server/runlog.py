"""A run's train.log stored as `LogChunk` rows, and read back by byte offset.

Chunk i covers bytes [offset, offset + nbytes) of train.log, and chunks follow each other
without gaps. Writing (`add_log_chunks`, used by the worker and by the records import):
chunks end after a line's "\n"; a line longer than a chunk is cut between UTF-8 characters,
so every chunk decodes as it was written. A reader asks from any byte offset and continues
from the `next_offset` it got back.
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


def line_chunks(data: bytes, *, max_bytes: int, complete: bool) -> list[bytes]:
    """`data` cut into pieces of at most `max_bytes` that end after a "\n"; a line longer
    than `max_bytes` is cut between characters. A last unterminated line is a piece only
    when `complete` (data reaches the log's end for good); otherwise it waits for more."""
    if max_bytes < 4:
        raise ValueError(f"max_bytes must hold one UTF-8 character (4 bytes), got {max_bytes}")
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        if end < len(data) or not complete:
            cut = data.rfind(b"\n", start, end) + 1
            if cut:
                end = cut
            elif end - start < max_bytes:
                break  # a last partial line shorter than a chunk: more of it may follow
            else:  # a line longer than a chunk
                end = _between_characters(data, start, end)
        pieces.append(data[start:end])
        start = end
    return pieces


def _between_characters(data: bytes, start: int, end: int) -> int:
    """`end`, or the start of a UTF-8 character that `end` would cut (its lead byte is among
    the 3 bytes before `end`, and its length, from that byte, runs past `end`); never `start`.
    Bytes that are not UTF-8 are cut where they are."""
    for back in range(end - 1, max(start, end - 4), -1):
        lead = data[back]
        if lead & 0xC0 == 0x80:  # 0b10xxxxxx: inside a character
            continue
        size = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
        return back if back + size > end else end
    return end


def log_chunk(run_id: int, offset: int, data: bytes, *, nbytes: int | None = None) -> LogChunk:
    """The row for bytes [offset, offset + nbytes) of train.log; nbytes differs from
    len(data) only for a marker that stands for bytes not stored. Undecodable bytes become
    U+FFFD, and so does NUL, which a TEXT column cannot hold."""
    text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return LogChunk(run_id=run_id, offset=offset, nbytes=len(data) if nbytes is None else nbytes, text=text)


def add_log_chunks(session: Session, run_id: int, offset: int, data: bytes, *, max_bytes: int,
                   complete: bool) -> int:
    """Add the rows of `data`, the bytes of train.log from `offset` (see `line_chunks`), to
    the session; returns how many bytes they cover."""
    stored = 0
    for piece in line_chunks(data, max_bytes=max_bytes, complete=complete):
        session.add(log_chunk(run_id, offset + stored, piece))
        stored += len(piece)
    return stored


def _char_start(data: bytes, index: int, *, floor: int, forward: bool = False) -> int:
    """The nearest index at or before (or after) `index` that does not split a UTF-8
    character, never below `floor`."""
    step = 1 if forward else -1
    while floor < index < len(data) and (data[index] & 0xC0) == 0x80:  # 0b10xxxxxx
        index += step
    return index
