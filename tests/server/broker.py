"""What the server put on the filesystem broker: the message files themselves."""

import base64
import json
from pathlib import Path


def queued_tasks(data_dir: Path) -> list[tuple[str, list[object]]]:
    """(task name, args) of every message waiting in the broker's queue folder."""
    tasks = []
    for path in sorted((data_dir / "broker" / "queue").glob("*.msg")):
        message = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], args))
    return tasks
