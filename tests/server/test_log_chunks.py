"""train.log into LogChunk rows: whole lines, and long lines cut between UTF-8 characters."""

import pytest
from sqlmodel import Session, col, select

from server.models import LogChunk
from server.runlog import add_log_chunks, line_chunks, read_log
from tests.factories import make_experiment, make_run

MIB = 1024 * 1024


def test_a_line_over_a_mebibyte_is_cut_between_characters_at_the_chunk_boundary() -> None:
    # "ab" then 3-byte characters: byte 1 MiB of the line falls in the middle of a "€".
    line = ("ab" + "€" * (MIB // 3 + 10) + "\n").encode()
    assert line[MIB] & 0xC0 == 0x80  # a continuation byte: a plain cut there splits a character
    data = b"first line\n" + line + b"last, unfinished"

    pieces = line_chunks(data, max_bytes=MIB, complete=False)

    assert pieces[0] == b"first line\n" and b"".join(pieces) == data[:-len("last, unfinished")]
    assert [len(p) for p in pieces[1:]] == [MIB - 2, len(line) - MIB + 2]  # two bytes back: a whole "€"
    for piece in pieces:
        assert piece.decode("utf-8").encode("utf-8") == piece  # each decodes on its own, strictly
    assert b"".join(line_chunks(data, max_bytes=MIB, complete=True)) == data  # the unfinished line too


def test_partial_lines_wait_unless_the_log_is_complete() -> None:
    assert line_chunks(b"one\ntw", max_bytes=64, complete=False) == [b"one\n"]
    assert line_chunks(b"one\ntw", max_bytes=64, complete=True) == [b"one\ntw"]
    assert line_chunks(b"tw", max_bytes=64, complete=False) == []
    assert line_chunks(b"\xff" + b"\x80" * 9, max_bytes=4, complete=True) == [b"\xff\x80\x80\x80", b"\x80" * 4,
                                                                                b"\x80" * 2]  # not UTF-8: cut as is
    with pytest.raises(ValueError, match="4 bytes"):
        line_chunks(b"x", max_bytes=3, complete=True)


def test_stored_chunks_read_back_byte_for_byte(session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1)
    assert run.id is not None
    data = b"seed:1\n" + ("\u00b5" + "\U0001F600" * (MIB // 4) + "\n").encode() + b"done"

    stored = add_log_chunks(session, run.id, 0, data, max_bytes=MIB, complete=True)
    session.commit()

    chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run.id).order_by(col(LogChunk.offset))).all()
    assert stored == len(data) == sum(c.nbytes for c in chunks) and len(chunks) == 3
    assert all(len(c.text.encode()) == c.nbytes for c in chunks)  # no U+FFFD from a cut character
    assert read_log(session, run.id, offset=0, limit=4 * MIB).text == data.decode()
