"""`data fetch`: the official shards and tokenizer from the challenge's Hugging Face dataset.

Remote layout (under BASE_URL, by default the dataset `willdepueoai/parameter-golf`):
  ROOT/manifest.json        {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": ..,
                              "stats": {"files_train": N, "files_val": M}}, ...],
                             "tokenizers": [{"name": .., "model_path": "tokenizers/x.model",
                              "vocab_path": ...}, ...]}
  ROOT/datasets/<dataset>/fineweb_{val,train}_000000.bin ...
  ROOT/<model_path>, ROOT/<vocab_path>
Local layout (what DATA_PATH / TOKENIZER_PATH point at): OUT/manifest.json,
OUT/datasets/<dataset>/..., OUT/tokenizers/<file>.

Manifest-driven (shard counts and tokenizer files come from it), resumable (a finished
file that checks out is kept; a partial download continues from its last byte with an
HTTP Range request), verified (sizes against Content-Length, shard headers against their
file size, no empty files), with nothing half-written under a final name.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import ShardError, read_shard, shard_name

DEFAULT_BASE_URL = "https://huggingface.co/datasets/willdepueoai/parameter-golf/resolve/main"
BASE_URL_ENV = "DATA_BASE_URL"  # overrides the default, e.g. a mirror or a local folder
DEFAULT_ROOT = "datasets"
MANIFEST = "manifest.json"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


class FetchError(ValueError):
    """A download that cannot be completed; the message names the file or option."""


@dataclass(frozen=True)
class Fetched:
    data_path: Path
    tokenizer_path: Path | None
    downloaded: list[str]  # remote paths fetched now (resumed ones included)
    kept: list[str]  # remote paths already complete locally


def dataset_dir(variant: str) -> str:
    """`sp1024` → `fineweb10B_sp1024` (the official naming)."""
    return f"fineweb10B_{variant}"


def fetch(
    variant: str, train_shards: int, out: str | Path, base_url: str | None = None,
    root: str = DEFAULT_ROOT,
) -> Fetched:
    """Download the manifest, the full validation split, the first `train_shards` training
    shards and the tokenizer of `variant` into `out`."""
    if train_shards < 0:
        raise FetchError(f"--train-shards={train_shards} must not be negative")
    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    out = Path(out)
    session = _Session(base, root, out)
    manifest = session.manifest()
    entry, tokenizer = _entries(manifest, variant)
    stats = entry.get("stats") or {}
    files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if train_shards > files_train:
        raise FetchError(
            f"--train-shards={train_shards}: {entry['name']} has {files_train} training shards"
        )
    if files_val <= 0:
        raise FetchError(f"{MANIFEST} lists no validation shards for {entry['name']}")
    folder = f"datasets/{entry['name']}"
    for split, count in (("val", files_val), ("train", train_shards)):
        for i in range(count):
            session.get(f"{folder}/{shard_name(split, i)}", _check_shard)
    tokenizer_path = None
    for key in ("model_path", "vocab_path", "path"):
        if tokenizer and tokenizer.get(key):
            local = session.get(str(tokenizer[key]), _check_nonempty)
            tokenizer_path = tokenizer_path or (local if key == "model_path" else None)
    return Fetched(out / folder, tokenizer_path, session.downloaded, session.kept)


def _entries(manifest: dict[str, Any], variant: str) -> tuple[dict, dict | None]:
    name = dataset_dir(variant)
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        known = sorted(d.get("name", "?") for d in manifest.get("datasets", []))
        raise FetchError(f"--variant={variant}: {name} is not in {MANIFEST} (has {known})")
    tokenizer = next(
        (t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")),
        None,
    )
    return entry, tokenizer


def _check_shard(path: Path) -> None:
    try:
        tokens = read_shard(path)
    except ShardError as exc:
        raise FetchError(str(exc)) from None
    if tokens.size == 0:
        raise FetchError(f"{path}: shard holds no tokens")


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise FetchError(f"{path}: downloaded file is empty")


class _Session:
    """Downloads ROOT/<relative> to OUT/<relative> (the manifest to OUT/manifest.json)."""

    def __init__(self, base: str, root: str, out: Path):
        self.base, self.root, self.out = base, root.strip("/"), out
        self.downloaded: list[str] = []
        self.kept: list[str] = []

    def url(self, relative: str) -> str:
        return f"{self.base}/{self.root}/{relative}" if self.root else f"{self.base}/{relative}"

    def manifest(self) -> dict[str, Any]:
        path = self.get(MANIFEST, _check_nonempty, refresh=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FetchError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise FetchError(f"{path} must hold a JSON object")
        return data

    def get(self, relative: str, check, refresh: bool = False) -> Path:
        dest = self.out / relative
        if dest.is_file() and not refresh:
            try:
                check(dest)
            except FetchError:
                dest.unlink()  # a bad leftover: fetch it again
            else:
                self.kept.append(relative)
                return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        self._download(self.url(relative), part, refresh)
        try:
            check(part)
        except FetchError as exc:
            part.unlink(missing_ok=True)
            raise FetchError(f"{self.url(relative)}: {exc}".replace(str(part), part.name)) from None
        os.replace(part, dest)
        self.downloaded.append(relative)
        return dest

    def _download(self, url: str, part: Path, restart: bool) -> None:
        have = 0 if restart or not part.exists() else part.stat().st_size
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the partial file is already whole
                return
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None
        with response:
            resumed = have and getattr(response, "status", 200) == 206
            expected = _expected_size(response, have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
        size = part.stat().st_size
        if expected is not None and size != expected:
            raise FetchError(f"{url}: got {size} bytes, the server announced {expected}")


def _expected_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None
