"""`data fetch`: the official shards and tokenizer from the challenge's Hugging Face dataset.

Read with `huggingface_hub`, as the challenge's own data script and its participants read it:
the dataset repository `willdepueoai/parameter-golf` (`--repo`, or MATCHED_FINEWEB_REPO_ID as the
challenge's script names it) at a revision (`--revision`, default `main`), from the Hub at
HF_ENDPOINT (or `--endpoint`), with HF_TOKEN when one is set, through huggingface_hub's cache
(HF_HUB_CACHE, or `--cache-dir`), its resume of an interrupted transfer and its fast Xet backend
(`hf_xet`) where installed and offered by the Hub.

Remote layout (under ROOT, by default `datasets`):
  ROOT/manifest.json        {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": ..,
                              "stats": {"files_train": N, "files_val": M}}, ...],
                             "tokenizers": [{"name": .., "model_path": "tokenizers/x.model",
                              "vocab_path": ...}, ...]}
  ROOT/datasets/<dataset>/fineweb_{val,train}_000000.bin ...
  ROOT/<model_path>, ROOT/<vocab_path>
Local layout (what DATA_PATH / TOKENIZER_PATH point at): OUT/manifest.json,
OUT/datasets/<dataset>/..., OUT/tokenizers/<file>: hard links to the cache's files where the
file system allows (no second copy on disk), copies otherwise.

Manifest-driven (shard counts and tokenizer files come from it), verified here whatever the
transport (shard headers against their file size, no empty files; huggingface_hub checks each
size against the Hub's), with nothing half-written under a final name. A finished local file
that checks out is kept without asking the Hub.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data import ShardError, read_shard, shard_name

DEFAULT_REPO = "willdepueoai/parameter-golf"
REPO_ENV = "MATCHED_FINEWEB_REPO_ID"  # the challenge's data script reads the repository from it
DEFAULT_REVISION = "main"
DEFAULT_ROOT = "datasets"
MANIFEST = "manifest.json"
# Shards fetched at once: a pod's link to the Hub's CDN is filled by several streams, not one
# (80 sp1024 training shards are 16 GB), and each stream costs a client thread little CPU.
DEFAULT_JOBS = 8


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
    variant: str, train_shards: int, out: str | Path, endpoint: str | None = None,
    root: str = DEFAULT_ROOT, *, repo: str | None = None, revision: str | None = None,
    cache_dir: str | Path | None = None, jobs: int = DEFAULT_JOBS,
) -> Fetched:
    """Download the manifest, the full validation split, the first `train_shards` training
    shards and the tokenizer of `variant` into `out`, `jobs` shards at a time."""
    if train_shards < 0:
        raise FetchError(f"--train-shards={train_shards} must not be negative")
    if jobs < 1:
        raise FetchError(f"--jobs={jobs} must be at least 1")
    out = Path(out)
    session = _Session(_Source(repo or os.environ.get(REPO_ENV) or DEFAULT_REPO,
                               revision or DEFAULT_REVISION, endpoint or None, cache_dir, root), out)
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
    shards = [f"{folder}/{shard_name(split, i)}"
              for split, count in (("val", files_val), ("train", train_shards)) for i in range(count)]
    with ThreadPoolExecutor(max_workers=min(jobs, len(shards))) as pool:
        # Iterating the map raises the first failure in shard order; the others still finish.
        for _ in pool.map(lambda relative: session.get(relative, _check_shard), shards):
            pass
    tokenizer_path = None
    tokenizer_files = []
    for key in ("model_path", "vocab_path", "path"):
        if tokenizer and tokenizer.get(key):
            tokenizer_files.append(str(tokenizer[key]))
            local = session.get(tokenizer_files[-1], _check_nonempty)
            tokenizer_path = tokenizer_path or (local if key == "model_path" else None)
    # Listed in this order whatever finished first, each path once.
    asked = list(dict.fromkeys([MANIFEST, *shards, *tokenizer_files]))
    return Fetched(out / folder, tokenizer_path, [r for r in asked if session.fetched[r]],
                   [r for r in asked if not session.fetched[r]])


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


@dataclass(frozen=True)
class _Source:
    repo: str
    revision: str
    endpoint: str | None  # None: huggingface_hub's own (HF_ENDPOINT, else huggingface.co)
    cache_dir: str | Path | None  # None: huggingface_hub's own (HF_HUB_CACHE, ...)
    root: str

    def remote(self, relative: str) -> str:
        root = self.root.strip("/")
        return f"{root}/{relative}" if root else relative

    def where(self) -> str:
        from huggingface_hub import constants

        return f"dataset {self.repo}@{self.revision} on {(self.endpoint or constants.ENDPOINT).rstrip('/')}"


class _Session:
    """Brings ROOT/<relative> of the dataset to OUT/<relative> (the manifest to OUT/manifest.json)."""

    def __init__(self, source: _Source, out: Path):
        self.source, self.out = source, out
        # Remote path -> fetched now (False: a finished local copy kept). `get` runs in several
        # threads at once, each on its own path, so each key is written by one thread.
        self.fetched: dict[str, bool] = {}

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
                self.fetched.setdefault(relative, False)  # asked again after fetching it: fetched
                return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        cached = self._download(relative, force=False)
        try:
            self._place(cached, part, check, relative)
        except FetchError:  # the cache's copy may be what is bad: once more, from the Hub
            self._place(self._download(relative, force=True), part, check, relative)
        os.replace(part, dest)
        self.fetched[relative] = True
        return dest

    def _place(self, cached: Path, part: Path, check, relative: str) -> None:
        part.unlink(missing_ok=True)
        try:
            os.link(cached, part)
        except OSError:  # another file system, or no hard links: a copy
            shutil.copyfile(cached, part)
        try:
            check(part)
        except FetchError as exc:
            part.unlink(missing_ok=True)
            raise FetchError(f"{self.source.remote(relative)}: {exc}".replace(str(part), part.name)) from None

    def _download(self, relative: str, *, force: bool) -> Path:
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import (
                EntryNotFoundError,
                HfHubHTTPError,
                RevisionNotFoundError,
            )
            from huggingface_hub.utils import disable_progress_bars
        except ImportError:
            raise FetchError("data fetch needs huggingface_hub: pip install huggingface_hub") from None

        disable_progress_bars()  # the fetch's log is read for its last line
        remote, source = self.source.remote(relative), self.source
        try:
            cached = hf_hub_download(source.repo, remote, repo_type="dataset", revision=source.revision,
                                     endpoint=source.endpoint, cache_dir=source.cache_dir,
                                     force_download=force)
        except RevisionNotFoundError:
            raise FetchError(f"--revision={source.revision}: not a revision of {source.where()}") from None
        except EntryNotFoundError:
            raise FetchError(f"{remote}: not in {source.where()}") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise FetchError(f"{remote}: HTTP {status} from {source.where()}") from None
        except OSError as exc:
            raise FetchError(f"{remote}: {source.where()} unreachable ({_first_line(exc)})") from None
        return Path(cached).resolve()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
