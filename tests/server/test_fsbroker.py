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
