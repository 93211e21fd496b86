"""Shard format and the baseline's token streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import (
    HEADER_BYTES,
    SHARD_MAGIC,
    DistributedTokenLoader,
    ShardError,
    TokenStream,
    find_shards,
    load_validation_tokens,
    read_shard,
    shard_name,
    write_shard,
)


def test_write_then_read_round_trips_with_the_challenge_header(tmp_path):
    tokens = np.array([1, 0, 65535, 17, 1024, 3], dtype=np.int64)
    path = tmp_path / shard_name("train", 0)
    assert path.name == "fineweb_train_000000.bin"
    assert write_shard(path, tokens) == 6
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * 6
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [SHARD_MAGIC, 1, 6]
    assert not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard(path).tolist() == tokens.tolist()


def test_empty_shard_round_trips(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_shard(tmp_path / "e.bin").size == 0


def test_token_ids_outside_uint16_are_refused(tmp_path):
    with pytest.raises(ShardError, match="token ids"):
        write_shard(tmp_path / "x.bin", [70000])
    with pytest.raises(ShardError, match="token ids"):
        write_shard(tmp_path / "x.bin", [-1])


def corrupt(path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw))


def test_bad_magic_version_and_size_name_the_file(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, range(10))
    corrupt(path, 0, 12345)
    with pytest.raises(ShardError, match=r"s\.bin: magic 12345"):
        read_shard(path)
    write_shard(path, range(10))
    corrupt(path, 4, 2)
    with pytest.raises(ShardError, match=r"s\.bin: version 2"):
        read_shard(path)
    write_shard(path, range(10))
    path.write_bytes(path.read_bytes()[:-2])  # one token short
    with pytest.raises(ShardError, match=r"header says 10 tokens .* file has 1042 bytes"):
        read_shard(path)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ShardError, match="shorter than the 1024-byte header"):
        read_shard(path)
    with pytest.raises(ShardError, match="shard not found"):
        read_shard(tmp_path / "missing.bin")


def test_find_shards_sorts_and_names_data_path(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / shard_name("train", i), [i])
    files = find_shards(tmp_path, "fineweb_train_*.bin")
    assert [f.name for f in files] == [shard_name("train", i) for i in range(3)]
    with pytest.raises(ShardError, match="no shards matching fineweb_val_"):
        find_shards(tmp_path, "fineweb_val_*.bin")
    with pytest.raises(ShardError, match="DATA_PATH="):
        find_shards(tmp_path / "absent", "fineweb_train_*.bin")


def test_stream_reads_shards_in_order_and_wraps(tmp_path):
    write_shard(tmp_path / shard_name("train", 0), [0, 1, 2])
    write_shard(tmp_path / shard_name("train", 1), [3, 4])
    stream = TokenStream(find_shards(tmp_path, "fineweb_train_*.bin"))
    assert stream.take(4).tolist() == [0, 1, 2, 3]
    assert stream.take(4).tolist() == [4, 0, 1, 2]


def test_ranks_get_disjoint_spans_of_one_chunk_shifted_by_one(tmp_path):
    write_shard(tmp_path / shard_name("train", 0), np.arange(1000))
    files = find_shards(tmp_path, "fineweb_train_*.bin")
    cpu = torch.device("cpu")
    loaders = [DistributedTokenLoader(files, rank, 2, cpu) for rank in range(2)]
    # 32 tokens over 2 ranks x 2 micro-batches: 8 tokens per rank, span of 9.
    batches = [loader.next_batch(32, 4, 2) for loader in loaders]
    (x0, y0), (x1, y1) = batches
    assert x0.dtype == torch.int64 and x0.shape == (2, 4)
    assert x0.flatten().tolist() == list(range(0, 8))
    assert y0.flatten().tolist() == list(range(1, 9))
    assert x1.flatten().tolist() == list(range(9, 17))
    assert y1.flatten().tolist() == list(range(10, 18))
    x0_next, _ = loaders[0].next_batch(32, 4, 2)
    assert x0_next.flatten().tolist() == list(range(18, 26))


def test_validation_tokens_are_whole_sequences_plus_one(tmp_path):
    write_shard(tmp_path / shard_name("val", 0), np.arange(50))
    write_shard(tmp_path / shard_name("val", 1), np.arange(50, 75))
    files = find_shards(tmp_path, "fineweb_val_*.bin")
    assert load_validation_tokens(files, 10).tolist() == list(range(71))
    assert load_validation_tokens(files, 10, max_tokens=35).tolist() == list(range(31))
    assert load_validation_tokens(files, 10, max_tokens=1000).numel() == 71
    with pytest.raises(ShardError, match="TRAIN_SEQ_LEN=100"):
        load_validation_tokens(files, 100)
