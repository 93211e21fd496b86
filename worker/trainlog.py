"""Copying a run's train.log from its pod into the database while it runs, and at its end.

Each step reads the file from the run's `log_offset` and stores whole lines as LogChunk rows
(server.runlog.add_log_chunks: a line longer than a chunk is cut between characters), then
moves `log_offset` past them under the run's lease, so a redelivered step carries on where
the last one stopped. The stored log is capped (CADDIE_LOG_CAP_BYTES): past the cap, the
end of the run stores a marker and the file's last bytes, where the final metrics are.
"""

import shlex

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

import trainer.contract as contract
from server.config import Settings
from server.errors import LeaseLost
from server.models import Run
from server.runlog import add_log_chunks, log_chunk
from server.runlog_stream import publish_log
from server.runs import get_run, update_run
from worker.remote import Remote

LOG_CHUNK_BYTES = 1024 * 1024  # read from train.log per request, and the most one chunk holds
LOG_CHUNKS_PER_STEP = 8  # then let other runs have the worker; the next step goes on at once


class TrainLog:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    def pull(self, remote: Remote, run: Run, fence: int, *, final: bool) -> bool:
        """Store new whole lines of train.log (and a last partial line when final), up to the
        log cap; when final, a log past the cap gets a marker and its last bytes (`_store_tail`).

        Returns True when more bytes are waiting than one step reads.
        """
        assert run.remote_dir is not None
        path = f"{run.remote_dir}/{contract.TRAIN_LOG}"
        with Session(self.engine) as session:
            offset = get_run(session, run.id).log_offset
        cap = self.settings.log_cap_bytes
        for _ in range(LOG_CHUNKS_PER_STEP):
            room = cap - offset
            data = remote.read_from(path, offset, min(LOG_CHUNK_BYTES, room)) if room > 0 else b""
            capped = len(data) >= room  # the head reached the cap: it ends at its last whole line
            at_end = len(data) < LOG_CHUNK_BYTES  # of the file as it is now
            stored = self._store(run.id, fence, offset, data, complete=final and at_end and not capped)
            offset += stored
            if capped:  # the rest waits for the end of the run, when its last bytes are stored
                if final:
                    self._store_tail(remote, run, fence, path, offset)
                return False
            if at_end or not stored:
                return False
        return True

    def _store_tail(self, remote: Remote, run: Run, fence: int, path: str, offset: int) -> None:
        """A log longer than the cap: one marker chunk standing for the bytes not stored, then
        the file's last `log_tail_bytes` from a line start (where the final metrics are). The
        whole file is downloaded into the run's folder by the collecting step."""
        size = _file_size(remote, path)
        if size is None or size <= offset:
            return
        start = max(offset, size - self.settings.log_tail_bytes)
        tail = remote.read_from(path, start, size - start)
        if start > offset:  # begin the tail at a line start, or else at a character's start
            cut = tail.find(b"\n") + 1 or next((i for i, byte in enumerate(tail[:4]) if byte & 0xC0 != 0x80), 0)
            start, tail = start + cut, tail[cut:]
        if start > offset:
            marker = (f"[caddie: {start - offset:,} bytes of train.log not stored here: the stored log "
                      f"keeps its first {offset:,} bytes (CADDIE_LOG_CAP_BYTES) and its last "
                      f"{size - start:,}; the whole file is in the run's folder on the worker]\n")
            self._store(run.id, fence, offset, marker.encode(), nbytes=start - offset)
        self._store(run.id, fence, start, tail, complete=True)

    def _store(self, run_id: int, fence: int, offset: int, data: bytes, *, complete: bool = True,
               nbytes: int | None = None) -> int:
        """Store bytes of train.log from `offset` (whole lines, see server.runlog.line_chunks) and
        move the run's log_offset past them; returns how many bytes that is. With `nbytes`,
        `data` is one marker chunk standing for that many bytes past the log cap."""
        with Session(self.engine) as session:
            try:
                if nbytes is None:
                    nbytes = add_log_chunks(session, run_id, offset, data, max_bytes=LOG_CHUNK_BYTES,
                                            complete=complete)
                else:
                    session.add(log_chunk(run_id, offset, data, nbytes=nbytes))
                if not nbytes:
                    return 0
                session.flush()
            except IntegrityError:
                session.rollback()
                raise LeaseLost(f"run {run_id}: log offset {offset} was stored by another worker") from None
            update_run(session, run_id, fence=fence, log_offset=offset + nbytes)
        publish_log(run_id, offset + nbytes)  # wakes log streams; after the commit
        return nbytes


def _file_size(remote: Remote, path: str) -> int | None:
    found = remote.run(f"stat -c %s {shlex.quote(path)}", timeout_s=30).stdout.strip()
    return int(found) if found.isdigit() else None
