"""The embedded broker: Celery's filesystem transport, with each message written whole.

kombu's filesystem transport creates a message's file under its final name and then writes it;
a consumer listing the folder in between moves and reads an empty file, and the worker dies on
the JSON it cannot decode. Here a message is written under a name the consumer skips and then
renamed, which is atomic within the folder, so a consumer sees it whole or not at all.
"""

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "caddiefs"  # the broker URL's scheme: `caddiefs://`
PARTIAL = ".partial"  # a message being written; the consumer takes only names ending `.<queue>.msg`


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


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> str:
    """Make `caddiefs://` name this transport in this process; returns the broker URL."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
    return f"{SCHEME}://"
