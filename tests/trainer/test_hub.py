"""`data fetch` against a local HTTP server laid out like the Hugging Face dataset."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from trainer.data import read_shard, write_shard
from trainer.hub import FetchError, fetch

from .conftest import TOKENIZERS, trainer_cmd

ROOT = "datasets"
NAME = "fineweb10B_sp1024"


@dataclass
class Hub:
    folder: Path
    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)

    def file(self, relative: str) -> Path:
        return self.folder / ROOT / relative

    def fetched(self) -> list[str]:
        return [p.split(f"/{ROOT}/", 1)[1] for p, _ in self.requests]


def handler_for(hub: Hub):
    class RangeHandler(SimpleHTTPRequestHandler):
        """Static files with single `bytes=N-` ranges, as the Hugging Face CDN serves them."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(hub.folder), **kwargs)

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            hub.requests.append((self.path, self.headers.get("Range")))
            path = Path(self.translate_path(self.path))
            ranged = self.headers.get("Range")
            if not ranged or not path.is_file():
                return super().do_GET()
            data = path.read_bytes()
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(data[start:])

    return RangeHandler


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    folder = tmp_path / "remote"
    hub = Hub(folder, "")
    shards = folder / ROOT / "datasets" / NAME
    shards.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_shard(shards / "fineweb_val_000000.bin", rng.integers(0, 1024, 5000))
    for i in range(3):
        write_shard(shards / f"fineweb_train_{i:06d}.bin", rng.integers(0, 1024, 7000 + i))
    tokenizers = folder / ROOT / "tokenizers"
    tokenizers.mkdir()
    for suffix in ("model", "vocab"):
        source = TOKENIZERS / f"fineweb_1024_bpe.{suffix}"
        (tokenizers / source.name).write_bytes(source.read_bytes())
    manifest = {
        "datasets": [{"name": NAME, "tokenizer_name": "sp_bpe_1024",
                      "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    (folder / ROOT / "manifest.json").write_text(json.dumps(manifest))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_mirrors_the_manifest_layout_and_verifies_it(hub: Hub, tmp_path: Path):
    out = tmp_path / "data"
    got = fetch("sp1024", 2, out, hub.url)
    assert got.data_path == out / "datasets" / NAME
    assert got.tokenizer_path == out / "tokenizers" / "fineweb_1024_bpe.model"
    expected = ["manifest.json", f"datasets/{NAME}/fineweb_val_000000.bin",
                f"datasets/{NAME}/fineweb_train_000000.bin",
                f"datasets/{NAME}/fineweb_train_000001.bin",
                "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert got.downloaded == expected and got.kept == []
    for relative in expected:
        assert (out / relative).read_bytes() == hub.file(relative).read_bytes()
    assert not (got.data_path / "fineweb_train_000002.bin").exists()
    assert not list(out.rglob("*.part"))
    assert read_shard(got.data_path / "fineweb_val_000000.bin").size == 5000


def test_a_second_fetch_downloads_only_the_manifest(hub: Hub, tmp_path: Path):
    fetch("sp1024", 1, tmp_path, hub.url)
    hub.requests.clear()
    again = fetch("sp1024", 2, tmp_path, hub.url)
    assert hub.fetched() == ["manifest.json", f"datasets/{NAME}/fineweb_train_000001.bin"]
    assert len(again.kept) == 4


def test_a_partial_download_resumes_from_its_last_byte(hub: Hub, tmp_path: Path):
    relative = f"datasets/{NAME}/fineweb_val_000000.bin"
    whole = hub.file(relative).read_bytes()
    part = tmp_path / (relative + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(whole[:3000])
    fetch("sp1024", 0, tmp_path, hub.url)
    assert (f"/{ROOT}/{relative}", "bytes=3000-") in hub.requests
    assert (tmp_path / relative).read_bytes() == whole and not part.exists()


def test_a_bad_local_file_is_fetched_again(hub: Hub, tmp_path: Path):
    fetch("sp1024", 1, tmp_path, hub.url)
    local = tmp_path / "datasets" / NAME / "fineweb_train_000000.bin"
    local.write_bytes(local.read_bytes()[:-10])  # short: header and size disagree
    hub.requests.clear()
    fetch("sp1024", 1, tmp_path, hub.url)
    assert f"datasets/{NAME}/fineweb_train_000000.bin" in hub.fetched()
    assert read_shard(local).size == 7000


def test_short_empty_or_corrupt_remote_files_are_rejected(hub: Hub, tmp_path: Path):
    shard = hub.file(f"datasets/{NAME}/fineweb_train_000000.bin")
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(FetchError, match=r"fineweb_train_000000.bin.*header says 7000 tokens"):
        fetch("sp1024", 1, tmp_path / "a", hub.url)
    assert not (tmp_path / "a" / "datasets" / NAME / "fineweb_train_000000.bin").exists()
    assert not list((tmp_path / "a").rglob("*.part"))
    shard.write_bytes(b"")
    with pytest.raises(FetchError, match="shorter than the 1024-byte header"):
        fetch("sp1024", 1, tmp_path / "b", hub.url)
    hub.file("tokenizers/fineweb_1024_bpe.vocab").write_bytes(b"")
    with pytest.raises(FetchError, match="downloaded file is empty"):
        fetch("sp1024", 0, tmp_path / "c", hub.url)


def test_requests_the_manifest_cannot_satisfy_name_the_option(hub: Hub, tmp_path: Path):
    with pytest.raises(FetchError, match="--train-shards=4: fineweb10B_sp1024 has 3"):
        fetch("sp1024", 4, tmp_path, hub.url)
    with pytest.raises(FetchError, match="--variant=sp8192: fineweb10B_sp8192 is not in"):
        fetch("sp8192", 1, tmp_path, hub.url)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch("sp1024", 1, tmp_path, hub.url + "/elsewhere")


def test_the_command_line_prints_the_paths_and_fails_in_one_line(hub: Hub, tmp_path: Path):
    done = trainer_cmd("data", "fetch", "--variant", "sp1024", "--train-shards", "1",
                       "--out", str(tmp_path), "--base-url", hub.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "datasets" / NAME),
                                   str(tmp_path / "tokenizers" / "fineweb_1024_bpe.model")]
    done = trainer_cmd("data", "fetch", "--train-shards", "9", "--out", str(tmp_path),
                       env={"DATA_BASE_URL": hub.url})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --train-shards=9: fineweb10B_sp1024 has 3 training shards"
