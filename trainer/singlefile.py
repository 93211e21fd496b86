"""The single-file script's format, shared by its builder (`trainer/bundle.py`) and the server's
export (`server/export.py`), which reads the readable source back out of the compressed script a
run uploaded and writes it again with other settings.

Standard library only, and left out of the single file itself: it describes that file.
"""

import base64
import lzma
from typing import Any

from trainer.contract import PRESET_KEY

SCRIPT = "train_gpt.py"  # the single file, as the records name their script
SOURCE = "train_gpt_source.py"  # the readable source beside a compressed script
HYPERPARAMETERS_START = "# ---- Hyperparameters: this run's settings (begin) ----"
HYPERPARAMETERS_END = "# ---- Hyperparameters (end) ----"
# Machine-local settings a readable script must not carry: the records' own defaults stand.
LOCAL_FIELDS = ("run_id",)
PAYLOAD_NAME = "SOURCE"  # the bytes literal of the compressed script
PAYLOAD_LINE = 100  # base85 characters per line of that literal
COMPRESSED = '''"""Caddie's trainer, compressed (lzma + base85); the readable source is train_gpt_source.py.
Run it as that file: `torchrun --standalone --nproc_per_node=8 train_gpt.py`."""
import base64, lzma
SOURCE = (
{payload}
)
exec(compile(lzma.decompress(base64.b85decode(SOURCE)), __file__, "exec"))
'''


def compress(source: str) -> str:
    """The compressed script that executes `source` (lzma preset 9e, base85, 100 per line)."""
    raw = lzma.compress(source.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
    encoded = base64.b85encode(raw).decode()
    lines = "\n".join(f"    b{encoded[i : i + PAYLOAD_LINE]!r}" for i in range(0, len(encoded), PAYLOAD_LINE))
    return COMPRESSED.replace("{payload}", lines)


def decompress(payload: bytes) -> str:
    """The source a compressed script's payload literal holds; ValueError, LZMAError or
    UnicodeDecodeError if it holds none."""
    return lzma.decompress(base64.b85decode(payload)).decode("utf-8")


def hyperparameters_block(settings: dict[str, Any]) -> str:
    """The Hyperparameters class between its two marker lines: one attribute per setting."""
    lines = [HYPERPARAMETERS_START, "class Hyperparameters:",
             "    # Each is overridden by the environment variable named like it in upper case.",
             f"    preset = {settings.get(PRESET_KEY, 'baseline')!r}"]
    lines += [f"    {name} = {value!r}" for name, value in settings.items()
              if name != PRESET_KEY and name not in LOCAL_FIELDS]
    lines.append(HYPERPARAMETERS_END)
    return "\n".join(lines) + "\n"


def with_settings(source: str, settings: dict[str, Any]) -> str:
    """`source` with its Hyperparameters block replaced by `settings`."""
    start = source.index(HYPERPARAMETERS_START)
    end = source.index(HYPERPARAMETERS_END, start) + len(HYPERPARAMETERS_END) + 1
    return source[:start] + hyperparameters_block(settings) + source[end:]
