"""Validation: mean token loss (nats) and tokenizer-agnostic bits per byte.

val_bpb = (val_loss / ln 2) * (target tokens / target bytes). A target token's bytes are
the UTF-8 length of its piece without the leading "▁", plus 1 for that space unless the
previous token is a boundary (control, unknown or unused id, e.g. BOS); a byte-fallback
piece is 1 byte. Windows are non-overlapping TRAIN_SEQ_LEN sequences.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
from torch import Tensor, nn

LEADING_SPACE = "\u2581"


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for scoring; the message names the path."""


@dataclass(frozen=True)
class ByteTables:
    """Per token id: base_bytes int16, has_leading_space bool, is_boundary bool."""

    base_bytes: Tensor
    has_leading_space: Tensor
    is_boundary: Tensor

    def to(self, device: torch.device) -> ByteTables:
        return ByteTables(
            *(t.to(device) for t in (self.base_bytes, self.has_leading_space, self.is_boundary))
        )

    def target_bytes(self, prev_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Bytes of each target token (int16, same shape as target_ids)."""
        count = self.base_bytes[target_ids].to(dtype=torch.int16)
        count += (self.has_leading_space[target_ids] & ~self.is_boundary[prev_ids]).to(torch.int16)
        return count


@dataclass(frozen=True)
class ValResult:
    val_loss: float  # nats per target token
    val_bpb: float
    tokens: int  # target tokens scored
    bytes: int  # UTF-8 bytes of those targets


def load_tokenizer(path: str | Path, vocab_size: int) -> spm.SentencePieceProcessor:
    """The SentencePiece model at TOKENIZER_PATH, checked against VOCAB_SIZE."""
    path = Path(path)
    if path.suffix != ".model":
        raise TokenizerError(f"TOKENIZER_PATH={str(path)!r} is not a SentencePiece .model file")
    if not path.is_file():
        raise TokenizerError(f"TOKENIZER_PATH={str(path)!r} does not exist")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if int(sp.vocab_size()) != vocab_size:
        raise TokenizerError(
            f"VOCAB_SIZE={vocab_size} does not match the tokenizer's {int(sp.vocab_size())} "
            f"pieces in {path}"
        )
    return sp


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTables:
    """Byte tables covering max(tokenizer size, vocab_size) ids; ids past the tokenizer are boundaries."""
    sp_size = int(sp.vocab_size())
    size = max(sp_size, vocab_size)
    base = np.zeros(size, dtype=np.int16)
    leading = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    for i in range(sp_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(LEADING_SPACE):
            leading[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTables(torch.from_numpy(base), torch.from_numpy(leading), torch.from_numpy(boundary))


def evaluate(
    model: nn.Module,
    val_tokens: Tensor,
    tables: ByteTables,
    *,
    seq_len: int,
    local_batch_tokens: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> ValResult:
    """Score every sequence of `val_tokens` once; ranks split the sequences, sums all-reduced.

    `local_batch_tokens` tokens per forward on each rank (VAL_BATCH_SIZE / 8 as in the
    baseline, independent of the world size, so any launch batches identically).
    """
    batch_seqs = local_batch_tokens // seq_len
    total_seqs = (val_tokens.numel() - 1) // seq_len
    first, last = (total_seqs * rank) // world_size, (total_seqs * (rank + 1)) // world_size
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    token_count = torch.zeros((), device=device, dtype=torch.float64)
    byte_count = torch.zeros((), device=device, dtype=torch.float64)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else nullcontext()
    )
    model.eval()
    with torch.inference_mode():
        for start in range(first, last, batch_seqs):
            end = min(start + batch_seqs, last)
            span = val_tokens[start * seq_len : end * seq_len + 1]
            span = span.to(device=device, dtype=torch.int64, non_blocking=True)
            x = span[:-1].reshape(-1, seq_len)  # [sequences, seq_len]
            y = span[1:].reshape(-1, seq_len)
            with autocast:
                loss = model(x, y).detach()
            loss_sum += loss.to(torch.float64) * float(y.numel())
            token_count += float(y.numel())
            byte_count += tables.target_bytes(x.reshape(-1), y.reshape(-1)).to(torch.float64).sum()
    if dist.is_available() and dist.is_initialized():
        for total in (loss_sum, token_count, byte_count):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
    model.train()
    val_loss = float((loss_sum / token_count).item())
    tokens, nbytes = token_count.item(), byte_count.item()
    return ValResult(
        val_loss=val_loss,
        val_bpb=(val_loss / math.log(2.0)) * (tokens / nbytes),
        tokens=int(tokens),
        bytes=int(nbytes),
    )
