"""The embedded broker: a consumer polling the queue folder while producers write sees every
message whole, and a message being written is not taken."""

import json
import os
import threading
from pathlib import Path

import pytest
from kombu import Connection

from server import fsbroker
from server.config import Settings

MESSAGES = 400


def test_the_settings_name_the_embedded_transport(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None)
    with Connection(settings.broker_url(), transport_options=settings.broker_transport_options()) as connection:
        assert connection.transport_cls == fsbroker.SCHEME
        assert isinstance(connection.default_channel, fsbroker.Channel)


def test_a_consumer_racing_producers_reads_every_message_whole(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None)
    options = settings.broker_transport_options()
    received: list[int] = []

    def produce(start: int) -> None:
        with Connection(settings.broker_url(), transport_options=options) as connection:
            queue = connection.SimpleQueue("race")
            for number in range(start, MESSAGES, 2):
                queue.put({"n": number, "pad": "x" * 4096})  # large enough to take a while to write
            queue.close()

    producers = [threading.Thread(target=produce, args=(start,)) for start in (0, 1)]
    with Connection(settings.broker_url(), transport_options=options) as connection:
        queue = connection.SimpleQueue("race")  # declared first, as the worker declares its queue
        for thread in producers:
            thread.start()
        while len(received) < MESSAGES:
            message = queue.get(timeout=30)  # a half-written file would raise a JSON error here
            received.append(message.payload["n"])
            message.ack()
        queue.close()
    for thread in producers:
        thread.join()
    assert sorted(received) == list(range(MESSAGES))
    assert not list(Path(options["data_folder_in"]).glob(f"*{fsbroker.PARTIAL}"))


def test_a_message_gets_its_final_name_only_once_it_is_written_whole(tmp_path: Path, monkeypatch) -> None:
    """The consumer takes any file named `<...>.<queue>.msg`: such a name must never stand for
    a file still being written (kombu's own transport creates it empty, then writes)."""
    settings = Settings(data_dir=tmp_path, redis_url=None)
    options = settings.broker_transport_options()
    renames: list[tuple[bytes, bool]] = []
    real_replace = os.replace

    def watched(source: str, target: str) -> None:
        if str(target).endswith(".msg"):  # a message, not an exchange's table
            renames.append((Path(source).read_bytes(), Path(target).exists()))
        real_replace(source, target)

    monkeypatch.setattr(fsbroker.os, "replace", watched)
    with Connection(settings.broker_url(), transport_options=options) as connection:
        queue = connection.SimpleQueue("whole")
        queue.put({"n": 1})
        ((written, existed),) = renames
        assert not existed and json.loads(written)["body"]  # whole before it had its name
        (Path(options["data_folder_in"]) / f"1_half.whole.msg{fsbroker.PARTIAL}").write_bytes(b"")
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)  # the half-written one is not taken
        queue.close()


def test_queues_bound_at_once_all_land_in_the_table_and_a_reader_sees_it_whole(tmp_path: Path) -> None:
    """Two channels' binds race a router reading the exchange's table: kombu's own bind
    truncated the file before locking it (a reader read an empty table) and two first binds
    could each write a table without the other's queue. A race, so kombu's own bind fails this
    only now and then; the next test fails it every time."""
    settings = Settings(data_dir=tmp_path, redis_url=None)
    options = settings.broker_transport_options()
    per_binder = 150
    errors: list[BaseException] = []
    done = threading.Event()

    def bind(prefix: str) -> None:
        with Connection(settings.broker_url(), transport_options=options) as connection:
            channel = connection.default_channel
            channel.exchange_declare("shared", type="direct")
            for i in range(per_binder):
                channel.queue_bind(f"{prefix}{i}", exchange="shared", routing_key=f"{prefix}{i}")

    def read() -> None:
        with Connection(settings.broker_url(), transport_options=options) as connection:
            channel = connection.default_channel
            while not done.is_set():
                try:
                    channel.get_table("shared")
                except BaseException as exc:  # noqa: BLE001 - any failure to read is the finding
                    errors.append(exc)
                    return

    reader = threading.Thread(target=read)
    binders = [threading.Thread(target=bind, args=(prefix,)) for prefix in ("a", "b")]
    reader.start()
    for thread in binders:
        thread.start()
    for thread in binders:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    with Connection(settings.broker_url(), transport_options=options) as connection:
        table = connection.default_channel.get_table("shared")
    assert sorted(q.queue for q in table) == sorted(f"{p}{i}" for p in "ab" for i in range(per_binder))


def test_an_exchange_table_is_replaced_whole_and_a_removed_queue_leaves_it(tmp_path: Path,
                                                                          monkeypatch) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None)
    options = settings.broker_transport_options()
    seen: list[tuple[list, list | None]] = []
    real_replace = os.replace

    def watched(source: str, target: str) -> None:
        if str(target).endswith(".exchange"):
            before = json.loads(Path(target).read_text()) if Path(target).exists() else None
            seen.append((json.loads(Path(source).read_text()), before))  # the new table is whole
        real_replace(source, target)

    monkeypatch.setattr(fsbroker.os, "replace", watched)
    with Connection(settings.broker_url(), transport_options=options) as connection:
        channel = connection.default_channel
        channel.exchange_declare("ex", type="direct")
        channel.queue_bind("one", exchange="ex", routing_key="one")
        channel.queue_bind("two", exchange="ex", routing_key="two")
        channel.queue_bind("two", exchange="ex", routing_key="two")  # already there: no write
        channel._delete("one", "ex", "one", None)  # noqa: SLF001 - kombu's hook for a removed queue
        assert [q.queue for q in channel.get_table("ex")] == ["two"]
    assert seen == [([["one", "", "one"]], None),
                    ([["two", "", "two"], ["one", "", "one"]], [["one", "", "one"]]),
                    ([["two", "", "two"]], [["two", "", "two"], ["one", "", "one"]])]
