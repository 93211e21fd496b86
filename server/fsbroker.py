"""The embedded broker: Celery's filesystem transport, with each message and table written whole.

kombu's filesystem transport creates a message's file under its final name and then writes it;
a consumer listing the folder in between moves and reads an empty file, and the worker dies on
the JSON it cannot decode. Here a message is written under a name the consumer skips and then
renamed, which is atomic within the folder, so a consumer sees it whole or not at all.

An exchange's table (the queues bound to it) had the same window: kombu truncates the file when
it first binds a queue and only then takes its lock, so a process routing a message in that
instant read an empty table, and two processes binding at once could each write a table without
the other's queue. Here every change of a table is made under a lock file of its own, and the
new table replaces the old by a rename: a reader sees the old table or the new one, whole.
"""

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "caddiefs"  # the broker URL's scheme: `caddiefs://`
PARTIAL = ".partial"  # a message being written; the consumer takes only names ending `.<queue>.msg`
LOCK = ".lock"  # beside an exchange's table: held while one process changes the table


class Channel(filesystem.Channel):
    # kombu's base channel and its filesystem channel name the second argument differently.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's order and form
        final = os.path.join(self.data_folder_out, name)
        try:
            with open(final + PARTIAL, "wb") as partial:
                partial.write(str_to_bytes(dumps(payload)))
            os.replace(final + PARTIAL, final)
        except OSError as exc:
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}") from exc


    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = _entry(routing_key, pattern, queue)
        self._change_table(exchange, lambda table: table if entry in table else [entry, *table])

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any,
                **kwargs: Any) -> None:
        # The virtual channel's own bookkeeping, then the table, as kombu's filesystem channel
        # does but with a whole-file write.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = _entry(routing_key, pattern, queue)
        self._change_table(exchange, lambda table: [q for q in table if q != entry])

    def _change_table(self, exchange: str, change: Callable[[list[Any]], list[Any]]) -> None:
        """Replace `exchange`'s table by `change(table)`, one writer at a time across processes."""
        path = self._exchange_file(exchange)
        try:
            self.control_folder.mkdir(exist_ok=True)
            with open(f"{path}{LOCK}", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
                table = _read_table(path)
                new = change(table)
                if new == table and path.exists():
                    return
                with open(f"{path}{PARTIAL}", "w", encoding="utf-8") as partial:
                    json.dump([list(q) for q in new], partial)
                os.replace(f"{path}{PARTIAL}", path)
        except OSError as exc:
            raise ChannelError(f"cannot write the exchange table {str(path)!r}") from exc


def _entry(routing_key: str, pattern: str, queue: str) -> Any:
    return filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")


def _read_table(path: Any) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [filesystem.exchange_queue_t(*q) for q in json.loads(text)] if text else []


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> str:
    """Make `caddiefs://` name this transport in this process; returns the broker URL."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
    return f"{SCHEME}://"
