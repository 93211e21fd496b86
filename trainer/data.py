"""Token shards on disk and the baseline's deterministic streams over them.

Shard layout (the challenge's): a header of 256 little-endian int32 — [0] magic
20240520, [1] version 1, [2] number of tokens, the rest zero — then that many
little-endian uint16 token ids. Nothing else is in the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_BYTES = 2
MAX_TOKEN_ID = 2**16 - 1
TRAIN_PATTERN = "fineweb_train_*.bin"
VAL_PATTERN = "fineweb_val_*.bin"


class ShardError(ValueError):
    """A shard file that does not follow the format; the message names the file."""


def shard_name(split: str, index: int) -> str:
    """E.g. fineweb_train_000000.bin."""
    return f"fineweb_{split}_{index:06d}.bin"


def write_shard(path: str | Path, tokens: Iterable[int] | np.ndarray) -> int:
    """Write `tokens` as one shard; return the number of tokens written."""
    values = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
    if values.ndim != 1:
        raise ShardError(f"{path}: tokens must be one-dimensional, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() > MAX_TOKEN_ID):
        raise ShardError(f"{path}: token ids must lie in [0, {MAX_TOKEN_ID}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, values.size)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(values.astype("<u2").tobytes())
    return int(values.size)


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of one shard as uint16, after checking header and file size."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: magic {int(header[0])} is not {SHARD_MAGIC}")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: version {int(header[1])} is not {SHARD_VERSION}")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + TOKEN_BYTES * num_tokens
    if num_tokens < 0 or size != expected:
        raise ShardError(
            f"{path}: header says {num_tokens} tokens ({expected} bytes) but the file has {size} bytes"
        )
    return np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES).astype(
        np.uint16, copy=False
    )


def load_shard(path: str | Path) -> Tensor:
    """One shard as a uint16 tensor (converted to int64 per batch, not up front)."""
    return torch.from_numpy(read_shard(path))


def find_shards(data_path: str | Path, pattern: str) -> list[Path]:
    """The shards matching `pattern` under DATA_PATH, in sorted (stream) order."""
    folder = Path(data_path)
    if not folder.is_dir():
        raise ShardError(f"DATA_PATH={str(data_path)!r} is not a directory")
    files = sorted(folder.glob(pattern))
    if not files:
        raise ShardError(f"no shards matching {pattern} in DATA_PATH={str(data_path)!r}")
    return files


class TokenStream:
    """All shards back to back in sorted order, wrapping around forever."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.file_index = 0
        self.tokens = load_shard(files[0])
        self.pos = 0

    def take(self, n: int) -> Tensor:
        """The next `n` tokens (uint16), crossing shard boundaries as needed."""
        chunks: list[Tensor] = []
        remaining = n
        while remaining > 0:
            available = self.tokens.numel() - self.pos
            if available <= 0:
                self.file_index = (self.file_index + 1) % len(self.files)
                self.tokens = load_shard(self.files[self.file_index])
                self.pos = 0
                continue
            k = min(remaining, available)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class DistributedTokenLoader:
    """Every call takes one contiguous chunk of the stream; each rank gets a disjoint span.

    A span has one extra token so that inputs and targets are the same span shifted by one.
    """

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.stream = TokenStream(files)

    def next_batch(
        self, global_tokens: int, seq_len: int, grad_accum_steps: int
    ) -> tuple[Tensor, Tensor]:
        """(x, y), each int64 of shape [local_tokens // seq_len, seq_len]."""
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = chunk[self.rank * span : (self.rank + 1) * span].to(dtype=torch.int64)
        x = local[:-1].reshape(-1, seq_len)  # [sequences, seq_len]
        y = local[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_validation_tokens(files: list[Path], seq_len: int, max_tokens: int = 0) -> Tensor:
    """All validation shards concatenated, cut to whole sequences plus one target token.

    `max_tokens` > 0 keeps only the first that many target tokens (rounded down to whole
    sequences); 0 keeps the full split.
    """
    tokens = torch.cat([load_shard(f) for f in files]).contiguous()
    targets = tokens.numel() - 1
    if max_tokens > 0:
        targets = min(targets, max_tokens)
    usable = (targets // seq_len) * seq_len
    if usable <= 0:
        raise ShardError(
            f"validation split ({tokens.numel()} tokens, VAL_MAX_TOKENS={max_tokens}) is "
            f"shorter than one TRAIN_SEQ_LEN={seq_len} sequence"
        )
    return tokens[: usable + 1]
