"""Validation: mean token loss (nats) and tokenizer-agnostic bits per byte.

val_bpb = (val_loss / ln 2) * (target tokens / target bytes). A target token's bytes are
the UTF-8 length of its piece without the leading "▁", plus 1 for that space unless the
previous token is a boundary (control, unknown or unused id, e.g. BOS); a byte-fallback
piece is 1 byte.

Three ways to score the split: `evaluate` (standard: non-overlapping
TRAIN_SEQ_LEN sequences, the baseline's) and `evaluate_sliding` (overlapping windows of
EVAL_SEQ_LEN starting EVAL_STRIDE apart; each window scores only the targets no earlier
window scored, so every target is scored exactly once, with as much left context as the
window allows), and `evaluate_ttt` (sliding windows with legal score-first test-time
training). All stop at an optional deadline (after at least one batch) and then say they are
incomplete.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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
    complete: bool = True  # False: the deadline stopped scoring before the end


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
    deadline: float | None = None,
) -> ValResult:
    """Score every sequence of `val_tokens` once; ranks split the sequences, sums all-reduced.

    `local_batch_tokens` tokens per forward on each rank (VAL_BATCH_SIZE / 8 as in the
    baseline, independent of the world size, so any launch batches identically).
    `deadline` (time.perf_counter() value): no batch but the first starts after it.
    """
    batch_seqs = local_batch_tokens // seq_len
    total_seqs = (val_tokens.numel() - 1) // seq_len
    first, last = (total_seqs * rank) // world_size, (total_seqs * (rank + 1)) // world_size

    def score(start: int, totals: list[Tensor]) -> None:
        end = min(start + batch_seqs, last)
        span = val_tokens[start * seq_len : end * seq_len + 1]
        span = span.to(device=device, dtype=torch.int64, non_blocking=True)
        x = span[:-1].reshape(-1, seq_len)  # [sequences, seq_len]
        y = span[1:].reshape(-1, seq_len)
        with autocast_for(device):
            loss = model(x, y).detach()
        totals[0] += loss.to(torch.float64) * float(y.numel())
        totals[1] += float(y.numel())
        totals[2] += tables.target_bytes(x.reshape(-1), y.reshape(-1)).to(torch.float64).sum()

    return _score_batches(model, range(first, last, batch_seqs), score, device, deadline)


def _score_batches(
    model: nn.Module,
    starts: range,
    score: Callable[[int, list[Tensor]], None],
    device: torch.device,
    deadline: float | None,
) -> ValResult:
    """`score(start, totals)` for each batch start in `starts`, under inference mode, until the
    deadline; it adds to totals = [loss sum, target tokens, target bytes] (float64 scalars)."""
    totals = [torch.zeros((), device=device, dtype=torch.float64) for _ in range(3)]
    complete = True
    model.eval()
    with torch.inference_mode():
        for start in starts:
            if start > starts.start and _past(deadline):
                complete = False
                break
            score(start, totals)
    model.train()
    loss_sum, token_count, byte_count = totals
    return _reduce(loss_sum, token_count, byte_count, complete, device)


def _past(deadline: float | None) -> bool:
    # Checked before every batch but the first, so a score always covers some tokens.
    return deadline is not None and time.perf_counter() > deadline


def _reduce(
    loss_sum: Tensor, token_count: Tensor, byte_count: Tensor, complete: bool, device: torch.device
) -> ValResult:
    """Sum the per-rank totals over ranks (an unfinished rank makes the result incomplete)."""
    unfinished = torch.tensor(0.0 if complete else 1.0, device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        for total in (loss_sum, token_count, byte_count, unfinished):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
    tokens, nbytes = token_count.item(), byte_count.item()
    val_loss = float((loss_sum / token_count).item()) if tokens else float("nan")
    return ValResult(
        val_loss=val_loss,
        val_bpb=(val_loss / math.log(2.0)) * (tokens / nbytes) if nbytes else float("nan"),
        tokens=int(tokens),
        bytes=int(nbytes),
        complete=unfinished.item() == 0,
    )


def sliding_windows(targets: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) of every window over `targets` target tokens.

    Window k feeds tokens [start, start + window) and predicts targets start..start +
    window - 1 (target j is token j + 1). It scores the targets from the end of the
    previous window on: the first window all of them, a full stride later only its last
    `stride`; a final window, flush with the end, covers any remainder. A split shorter
    than one window is a single window of that length.
    """
    if targets <= window:
        return [(0, 0)]
    starts = list(range(0, targets - window + 1, stride))
    if starts[-1] + window < targets:
        starts.append(targets - window)
    windows, scored_to = [], 0
    for start in starts:
        windows.append((start, scored_to - start))
        scored_to = start + window
    return windows


def evaluate_sliding(
    model: nn.Module,
    val_tokens: Tensor,
    tables: ByteTables,
    *,
    window: int,
    stride: int,
    batch_seqs: int,
    rank: int,
    world_size: int,
    device: torch.device,
    deadline: float | None = None,
) -> ValResult:
    """Score every target once with overlapping windows; ranks split the windows.

    `model(x, y, reduction="none")` must give one loss per target. `batch_seqs` windows
    per forward on each rank; `deadline` as in `evaluate`.
    """
    targets = val_tokens.numel() - 1
    window = min(window, targets)
    windows = sliding_windows(targets, window, stride)
    first, last = (len(windows) * rank) // world_size, (len(windows) * (rank + 1)) // world_size
    offsets = torch.arange(window, device=device)

    def score(i: int, totals: list[Tensor]) -> None:
        batch = windows[i : min(i + batch_seqs, last)]
        _score_windows(model, val_tokens, tables, batch, window, batch_seqs, offsets, totals,
                       device, None)

    return _score_batches(model, range(first, last, batch_seqs), score, device, deadline)


def _window_losses(model, val_tokens, batch, window, batch_seqs, device):
    """x, y [windows, window] of the batch's windows and each target's loss [windows, window].

    A short batch (the last of a rank, of a TTT chunk) is padded to `batch_seqs` windows with
    copies of its last window, whose losses are dropped: every forward then has one shape,
    which a model compiled with dynamic=False compiles once instead of once per remainder.
    """
    starts = [s for s, _ in batch]
    starts += [starts[-1]] * (batch_seqs - len(starts))
    span = torch.stack([val_tokens[s : s + window + 1] for s in starts])
    span = span.to(device=device, dtype=torch.int64, non_blocking=True)
    x, y = span[:, :-1], span[:, 1:]  # [batch_seqs, window]
    with autocast_for(device):
        losses = model(x, y, reduction="none").detach().view(len(starts), window)
    n = len(batch)
    return x[:n], y[:n], losses[:n]


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@dataclass(frozen=True)
class TTTSettings:
    """Legal score-first test-time training: SGD on each chunk after it is scored."""

    chunk_tokens: int  # targets per chunk
    epochs: int  # passes of SGD over a scored chunk
    lr: float
    momentum: float
    seq_len: int  # training sequence length within a chunk


def evaluate_ttt(
    model: nn.Module,
    val_tokens: Tensor,
    tables: ByteTables,
    ttt: TTTSettings,
    *,
    window: int,
    stride: int,
    batch_seqs: int,
    rank: int,
    world_size: int,
    device: torch.device,
    deadline: float | None = None,
    token_losses: Tensor | None = None,
) -> ValResult:
    """Sliding-window scores with test-time training, in one left-to-right pass.

    The targets are cut into chunks of `ttt.chunk_tokens`. For each chunk: first every
    window whose first scored target lies in it is scored (no gradients); then, except for
    the last chunk, the model trains on that chunk's tokens — all of them already scored.
    A token's score is therefore fixed before any update that used it, and depends only
    on the tokens before it. The model's weights are changed in place. Ranks split each
    chunk's windows and training sequences; gradients are averaged over ranks.
    `token_losses` (float64 [targets]), if given, receives each scored target's loss.
    """
    targets = val_tokens.numel() - 1
    window = min(window, targets)
    windows = sliding_windows(targets, window, stride)
    chunks = (targets + ttt.chunk_tokens - 1) // ttt.chunk_tokens
    by_chunk: list[list[tuple[int, int]]] = [[] for _ in range(chunks)]
    for start, first in windows:
        by_chunk[(start + first) // ttt.chunk_tokens].append((start, first))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=ttt.lr, momentum=ttt.momentum)
    offsets = torch.arange(window, device=device)
    totals = [torch.zeros((), device=device, dtype=torch.float64) for _ in range(3)]
    complete = True
    for c, chunk_windows in enumerate(by_chunk):
        if c > 0 and _past(deadline):
            complete = False
            break
        mine = chunk_windows[len(chunk_windows) * rank // world_size :
                             len(chunk_windows) * (rank + 1) // world_size]
        model.eval()
        with torch.no_grad():  # not inference_mode: cached tensors are reused in training
            for i in range(0, len(mine), batch_seqs):
                _score_windows(model, val_tokens, tables, mine[i : i + batch_seqs], window,
                               batch_seqs, offsets, totals, device, token_losses)
        if c < chunks - 1:
            _train_chunk(model, optimizer, params, val_tokens, ttt, c, rank, world_size, device)
    model.train()
    loss_sum, token_count, byte_count = totals
    return _reduce(loss_sum, token_count, byte_count, complete, device)


def _score_windows(model, val_tokens, tables, batch, window, batch_seqs, offsets, totals,
                   device, token_losses) -> None:
    x, y, losses = _window_losses(model, val_tokens, batch, window, batch_seqs, device)
    scored = offsets[None, :] >= torch.tensor([o for _, o in batch], device=device)[:, None]
    totals[0] += losses.to(torch.float64)[scored].sum()
    totals[1] += float(scored.sum().item())
    totals[2] += tables.target_bytes(x, y)[scored].to(torch.float64).sum()
    if token_losses is not None:
        for row, (start, first) in enumerate(batch):
            token_losses[start + first : start + window] = losses[row, first:].double().cpu()


def _train_chunk(model, optimizer, params, val_tokens, ttt, chunk, rank, world_size, device):
    """SGD over the chunk's targets as whole sequences of ttt.seq_len (the tail dropped)."""
    first = chunk * ttt.chunk_tokens
    seqs = ttt.chunk_tokens // ttt.seq_len
    span = val_tokens[first : first + seqs * ttt.seq_len + 1].to(device=device, dtype=torch.int64)
    seqs = (span.numel() - 1) // ttt.seq_len
    if seqs == 0:
        return
    x = span[: seqs * ttt.seq_len].view(seqs, ttt.seq_len)
    y = span[1 : seqs * ttt.seq_len + 1].view(seqs, ttt.seq_len)
    x, y = x[rank::world_size], y[rank::world_size]
    distributed = dist.is_available() and dist.is_initialized()
    model.train()
    for _ in range(ttt.epochs):
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device):
            loss = model(x, y) if x.numel() else None
        if loss is not None:
            loss.backward()
        if distributed:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
                p.grad.div_(world_size)
        optimizer.step()
