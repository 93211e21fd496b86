"""`data fetch` through huggingface_hub against a local stand-in of the Hub's HTTP API."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainer.data import read_shard, write_shard
from trainer.hub import FetchError, fetch

from .conftest import TOKENIZERS, trainer_cmd
from .hub_standin import COMMIT, REPO, HubStandIn

ROOT = "datasets"
NAME = "fineweb10B_sp1024"
VAL = f"datasets/{NAME}/fineweb_val_000000.bin"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubStandIn]:
    """The dataset repository as the challenge lays it out, under ROOT, with 1 val and 3 train shards."""
    folder = tmp_path / "remote"
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
    standin = HubStandIn(folder)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


def remote(relative: str) -> str:
    return f"{ROOT}/{relative}"


def get(hub: HubStandIn, out: Path, shards: int, **kwargs) -> object:
    return fetch("sp1024", shards, out, hub.url, cache_dir=out.parent / "hf-cache", **kwargs)


def test_fetch_mirrors_the_manifest_layout_and_verifies_it(hub: HubStandIn, tmp_path: Path):
    out = tmp_path / "data"
    got = get(hub, out, 2)
    assert got.data_path == out / "datasets" / NAME
    assert got.tokenizer_path == out / "tokenizers" / "fineweb_1024_bpe.model"
    expected = ["manifest.json", VAL, f"datasets/{NAME}/fineweb_train_000000.bin",
                f"datasets/{NAME}/fineweb_train_000001.bin",
                "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert got.downloaded == expected and got.kept == []
    # Through the Hub's resolve URLs, once each (the shards several at a time, in any order).
    assert sorted(hub.gets()) == sorted(remote(r) for r in expected)
    for relative in expected:
        assert (out / relative).read_bytes() == hub.file(remote(relative)).read_bytes()
    assert not (got.data_path / "fineweb_train_000002.bin").exists()
    assert not list(out.rglob("*.part"))
    assert read_shard(got.data_path / "fineweb_val_000000.bin").size == 5000
    # huggingface_hub's cache holds the bytes; the data folder links to them (no second copy).
    blobs = {p.stat().st_ino for p in (tmp_path / "hf-cache").rglob("blobs/*")}
    assert (out / VAL).stat().st_ino in blobs


def test_shards_download_several_at_a_time_and_arrive_as_one_at_a_time(hub: HubStandIn,
                                                                       tmp_path: Path):
    hub.delay_s = 0.5  # a slow link: each file's body starts half a second after its GET
    one = get(hub, tmp_path / "one" / "data", 3, jobs=1)
    assert hub.most_at_once == 1
    hub.most_at_once = 0
    many = get(hub, tmp_path / "many" / "data", 3, jobs=4)
    assert hub.most_at_once >= 2  # the 4 shards overlap
    assert many.downloaded == one.downloaded  # listed in shard order whatever finished first
    for relative in one.downloaded:
        assert ((tmp_path / "many" / "data" / relative).read_bytes()
                == (tmp_path / "one" / "data" / relative).read_bytes() == hub.file(remote(relative)).read_bytes())
    with pytest.raises(FetchError, match="--jobs=0"):
        get(hub, tmp_path / "none" / "data", 1, jobs=0)


def test_a_failed_shard_among_many_fails_the_fetch_by_its_name(hub: HubStandIn, tmp_path: Path):
    hub.file(remote(f"datasets/{NAME}/fineweb_train_000001.bin")).unlink()
    with pytest.raises(FetchError, match="fineweb_train_000001.bin: not in dataset"):
        get(hub, tmp_path / "data", 3, jobs=4)
    # The other shards still arrived whole: a second fetch would keep them.
    assert (tmp_path / "data" / f"datasets/{NAME}/fineweb_train_000002.bin").is_file()
    assert not list((tmp_path / "data").rglob("*.part"))


def test_a_second_fetch_asks_only_for_what_it_lacks(hub: HubStandIn, tmp_path: Path):
    get(hub, tmp_path / "data", 1)
    hub.requests.clear()
    again = get(hub, tmp_path / "data", 2)
    # The manifest is looked up again (a HEAD: unchanged, so not downloaded); kept files are not.
    assert hub.gets() == [remote(f"datasets/{NAME}/fineweb_train_000001.bin")]
    assert [r.method for r in hub.requests if r.path.endswith("manifest.json")] == ["HEAD"]
    assert len(again.kept) == 4


def test_an_interrupted_transfer_is_taken_up_again_and_arrives_whole(hub: HubStandIn, tmp_path: Path):
    whole = hub.file(remote(VAL)).read_bytes()
    hub.cut.add(remote(VAL))  # the first GET sends half, then the connection drops
    got = get(hub, tmp_path / "data", 0)
    # huggingface_hub tries again (from the bytes it had written: none of a file this small
    # reached its 10 MB chunks, so it asks for the whole file).
    ranges = [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(remote(VAL))]
    assert len(ranges) == 2 and ranges[1] in (None, f"bytes={len(whole) // 2}-")
    assert (tmp_path / "data" / VAL).read_bytes() == whole and VAL in got.downloaded


def test_a_bad_local_file_is_fetched_again(hub: HubStandIn, tmp_path: Path):
    out = tmp_path / "data"
    get(hub, out, 1)
    local = out / "datasets" / NAME / "fineweb_train_000000.bin"
    local.write_bytes(local.read_bytes()[:-10])  # short: header and size disagree (the cache's link too)
    hub.requests.clear()
    get(hub, out, 1)
    assert remote(f"datasets/{NAME}/fineweb_train_000000.bin") in hub.gets()
    assert read_shard(local).size == 7000


def test_short_empty_or_corrupt_remote_files_are_rejected(hub: HubStandIn, tmp_path: Path):
    shard = hub.file(remote(f"datasets/{NAME}/fineweb_train_000000.bin"))
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(FetchError, match=r"fineweb_train_000000.bin.*header says 7000 tokens"):
        get(hub, tmp_path / "a" / "data", 1)
    assert not (tmp_path / "a" / "data" / "datasets" / NAME / "fineweb_train_000000.bin").exists()
    assert not list((tmp_path / "a").rglob("*.part"))
    shard.write_bytes(b"")
    with pytest.raises(FetchError, match="shorter than the 1024-byte header"):
        get(hub, tmp_path / "b" / "data", 1)
    hub.file(remote("tokenizers/fineweb_1024_bpe.vocab")).write_bytes(b"")
    with pytest.raises(FetchError, match="downloaded file is empty"):
        get(hub, tmp_path / "c" / "data", 0)


def test_requests_the_dataset_cannot_satisfy_name_the_option(hub: HubStandIn, tmp_path: Path):
    with pytest.raises(FetchError, match="--train-shards=4: fineweb10B_sp1024 has 3"):
        get(hub, tmp_path / "data", 4)
    with pytest.raises(FetchError, match="--variant=sp8192: fineweb10B_sp8192 is not in"):
        fetch("sp8192", 1, tmp_path / "data", hub.url, cache_dir=tmp_path / "hf-cache")
    where = f"dataset {REPO}@v9 on {hub.url}"
    with pytest.raises(FetchError, match=f"--revision=v9: not a revision of {where}"):
        get(hub, tmp_path / "data", 1, revision="v9")
    with pytest.raises(FetchError, match="datasets/manifest.json: HTTP 401 from dataset someone/else@main"):
        get(hub, tmp_path / "data", 1, repo="someone/else")
    with pytest.raises(FetchError, match="elsewhere/manifest.json: not in dataset"):
        fetch("sp1024", 1, tmp_path / "data", hub.url, root="elsewhere", cache_dir=tmp_path / "hf-cache")


def test_a_pinned_revision_is_what_is_asked_for(hub: HubStandIn, tmp_path: Path):
    get(hub, tmp_path / "data", 1, revision=COMMIT)
    files = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert files and all(f"/datasets/{REPO}/resolve/{COMMIT}/" in p for p in files)


def test_the_command_line_honours_hf_endpoint_and_token_and_fails_in_one_line(hub: HubStandIn, tmp_path: Path):
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_standin_token_123", "HF_HUB_CACHE": str(tmp_path / "cache")}
    done = trainer_cmd("data", "fetch", "--variant", "sp1024", "--train-shards", "1", "--out", str(tmp_path),
                       env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "datasets" / NAME),
                                   str(tmp_path / "tokenizers" / "fineweb_1024_bpe.model")]
    assert {r.authorization for r in hub.requests if "/resolve/" in r.path} == {"Bearer hf_standin_token_123"}
    assert "hf_standin_token_123" not in done.stdout + done.stderr
    assert any((tmp_path / "cache").rglob("blobs/*"))  # HF_HUB_CACHE is where it cached
    done = trainer_cmd("data", "fetch", "--train-shards", "9", "--out", str(tmp_path),
                       "--endpoint", hub.url, "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --train-shards=9: fineweb10B_sp1024 has 3 training shards"


def test_without_huggingface_hub_the_trainer_imports_and_the_fetch_says_what_is_missing(
        hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [m for m in sys.modules if m == "huggingface_hub" or m.startswith("huggingface_hub.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as on an image without it
    monkeypatch.delitem(sys.modules, "trainer.hub")
    hub_module = importlib.import_module("trainer.hub")
    with pytest.raises(hub_module.FetchError, match="data fetch needs huggingface_hub: pip install huggingface_hub"):
        hub_module.fetch("sp1024", 0, tmp_path / "data", hub.url)
    assert hub.requests == []
