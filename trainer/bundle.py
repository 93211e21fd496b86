"""`bundle --single-file`: the whole trainer as one `train_gpt.py`, as the challenge counts code.

The script carries `trainer/*.py` and `schema.json` as one lzma-compressed, base85-encoded
JSON object (the records' compressed-code convention). Run, it unpacks them once into a
folder named by the payload's digest under the temp directory (each file written to a
temporary name and renamed, so torchrun ranks may race), puts that folder first on
sys.path and calls the same entry point as `python -m trainer`; with no arguments it
trains (`torchrun train_gpt.py`, settings from the environment, as the community runs
it). It exports TRAINER_BUNDLE=<its own path>, so the run counts the script's bytes as
its code instead of the unpacked package.
"""

from __future__ import annotations

import base64
import json
import lzma
from pathlib import Path

BUNDLE_ENV = "TRAINER_BUNDLE"
BUNDLE_NAME = "train_gpt.py"
LINE = 100  # payload characters per line of the script

TEMPLATE = '''"""Caddie's trainer in one file: `torchrun train_gpt.py` or `python train_gpt.py [train|eval|data] ...`."""
import base64, hashlib, json, lzma, os, sys, tempfile
from pathlib import Path
PAYLOAD = (
{payload}
)
def unpack():
    root = Path(tempfile.gettempdir()) / ("caddie-trainer-" + hashlib.sha256(PAYLOAD).hexdigest()[:16])
    package = root / "trainer"
    if not (package / ".complete").is_file():
        package.mkdir(parents=True, exist_ok=True)
        for name, text in json.loads(lzma.decompress(base64.b85decode(PAYLOAD))).items():
            part = package / (name + ".part%d" % os.getpid())
            part.write_text(text, encoding="utf-8")
            os.replace(part, package / name)
        (package / ".complete").write_text("")
    return root
root = unpack()
sys.path.insert(0, str(root))
os.environ["{env}"] = os.path.abspath(__file__)
import trainer
if Path(trainer.__file__).resolve().parent != (root / "trainer").resolve():
    sys.exit("train_gpt.py: imported trainer from %s, not from the bundle" % trainer.__file__)
from trainer.__main__ import main
sys.exit(main(sys.argv[1:] or ["train"]))
'''


def build_single_file(files: dict[str, str], out: str | Path) -> Path:
    """Write the script for `files` ({file name in trainer/: text}) to `out` (a file, or a
    folder that gets train_gpt.py); returns its path."""
    out = Path(out)
    if out.is_dir():
        out = out / BUNDLE_NAME
    raw = json.dumps(files, sort_keys=True).encode("utf-8")
    encoded = base64.b85encode(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)).decode()
    lines = "\n".join(f"    b{encoded[i : i + LINE]!r}" for i in range(0, len(encoded), LINE))
    out.write_text(TEMPLATE.replace("{payload}", lines).replace("{env}", BUNDLE_ENV))
    return out
