"""The data a run trains on, on its pod: where it lives, whether its files check out, and the
one fetch per pod that brings it there.

A run whose data_path is the community's relative `./data/datasets/fineweb10B_<variant>` reads
the pod's shared data folder (`Provider.data_dir`, with `datasets/` and `tokenizers/`) through a
`data` link in the folder it runs in; the variant is fetched there once per pod, with the
trainer's own `data fetch` (huggingface_hub, its cache in `<data_dir>/hf-cache`; manifest-driven,
verified), started detached like the trainer so that no step waits for a download. An absolute data_path (an operator's folder on an
`ssh` host, say) is only checked.
"""

import json
import re
import shlex
from dataclasses import dataclass

from worker.remote import Remote

DEFAULT_DATA_PATH = "./data/datasets/fineweb10B_sp1024"
_OFFICIAL = re.compile(r"^(?:\./)?data/datasets/fineweb10B_([A-Za-z0-9_]+)/?$")

# Run by the pod's Python: argv = [folder, training shards wanted]; prints one JSON object.
# A shard is a 256 x int32 header (magic 20240520, version 1, token count) and 2 bytes per token.
CHECK = """\
import glob, json, os, struct, sys
path, wanted = sys.argv[1], int(sys.argv[2])
val = sorted(glob.glob(os.path.join(path, "fineweb_val_*.bin")))
train = sorted(glob.glob(os.path.join(path, "fineweb_train_*.bin")))
problems, total = [], 0
if not val:
    problems.append("no fineweb_val_*.bin")
if len(train) < wanted:
    problems.append(f"{len(train)} training shards, {wanted} wanted")
for name in val + train:
    size = os.path.getsize(name)
    total += size
    with open(name, "rb") as handle:
        head = handle.read(1024)
    magic, version, tokens = struct.unpack("<3i", head[:12]) if len(head) == 1024 else (0, 0, 0)
    if (magic, version) != (20240520, 1):
        problems.append(f"{os.path.basename(name)}: not a shard ({size} bytes)")
    elif size != 1024 + 2 * tokens:
        problems.append(f"{os.path.basename(name)}: {size} bytes, its header says {1024 + 2 * tokens}")
print(json.dumps({"path": path, "val_shards": len(val), "train_shards": len(train), "bytes": total,
                  "problems": problems[:5]}))
"""


@dataclass(frozen=True)
class Need:
    """What a run's data is: `variant` set when Caddie fetches it, else an absolute folder."""

    path: str  # the folder of shards on the pod
    variant: str | None


def need(data_path: str, data_dir: str) -> Need:
    """Raises ValueError for a relative path Caddie cannot fetch."""
    if data_path.startswith("/"):
        return Need(data_path.rstrip("/") or "/", None)
    official = _OFFICIAL.match(data_path)
    if official is None:
        raise ValueError(f"data_path {data_path!r} is relative but not ./data/datasets/fineweb10B_<variant>: "
                         "there is nothing to fetch it from")
    return Need(f"{data_dir}/datasets/fineweb10B_{official.group(1)}", official.group(1))


def check(remote: Remote, python: str, path: str, train_shards: int) -> dict:
    """Shard counts, bytes and problems (empty when the data checks out) of the folder."""
    result = remote.run(f"{shlex.quote(python)} -c {shlex.quote(CHECK)} {shlex.quote(path)} {int(train_shards)}",
                        timeout_s=300)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        problem = result.stderr.strip()[-200:] or f"exit code {result.exit_code}"
        return {"path": path, "problems": [f"the check did not run: {problem}"]}


# The fetch reads the Hub through huggingface_hub; an image without it gets it from PyPI first.
HUB_REQUIREMENT = "huggingface_hub>=0.30"


def start_fetch(remote: Remote, folder: str, argv: list[str], *, pythonpath: str, python: str) -> None:
    """Start `argv` detached in `folder` (once: `started` is made with mkdir, which is atomic);
    it leaves `log` and, when done, `exit_code`."""
    py = shlex.quote(python)
    install = (f"{{ {py} -c 'import huggingface_hub' 2>/dev/null || "
               f"{py} -m pip install --quiet {shlex.quote(HUB_REQUIREMENT)}; }}")
    command = f"PYTHONPATH={shlex.quote(pythonpath)} " + " ".join(shlex.quote(a) for a in argv)
    job = (f"{{ {install} && {command}; }} > log 2>&1 < /dev/null; "
           "echo $? > exit_code.tmp && mv exit_code.tmp exit_code")
    script = (f"mkdir -p {shlex.quote(folder)} && cd {shlex.quote(folder)} || exit 1\n"
              "mkdir started 2>/dev/null || exit 0\n"
              f'setsid env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 bash -c {shlex.quote(job)} '
              "</dev/null >/dev/null 2>&1 &\n")
    result = remote.run(script, timeout_s=60)
    if not result.ok:
        raise RuntimeError(f"starting the data fetch failed: {result.stderr.strip()[-200:]}")


@dataclass(frozen=True)
class FetchState:
    started: bool
    exit_code: int | None  # None while it runs (or before it started)
    tail: str  # the last line of its log: the error, never a whole traceback


def fetch_state(remote: Remote, folder: str) -> FetchState:
    q = shlex.quote(folder)
    result = remote.run(f"[ -d {q}/started ] && echo started; echo ---; cat {q}/exit_code 2>/dev/null; "
                        f"echo ---; grep -v '^[[:space:]]*$' {q}/log 2>/dev/null | tail -n 1", timeout_s=60)
    started, code, tail = (result.stdout.split("---\n", 2) + ["", ""])[:3]
    return FetchState("started" in started, int(code) if code.strip().isdigit() else None, tail.strip())
