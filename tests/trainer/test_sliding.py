"""Sliding-window evaluation: every target scored once, with the context a brute force gives."""

from __future__ import annotations

import math
import time

import pytest
import torch

from trainer.config import load_config
from trainer.evaluate import ByteTables, evaluate, evaluate_sliding, sliding_windows
from trainer.model import ModelShape, build_model

CPU = torch.device("cpu")
VOCAB = 48
# A small causal model with the switches that look at neighbouring tokens turned on.
ENV = {
    "NUM_LAYERS": "2",
    "MODEL_DIM": "32",
    "NUM_HEADS": "4",
    "NUM_KV_HEADS": "2",
    "VOCAB_SIZE": str(VOCAB),
    "TRAIN_SEQ_LEN": "16",
    "TRAIN_BATCH_TOKENS": "1024",
    "VAL_BATCH_SIZE": "1024",
    "SMEAR_GATE": "1",
    "BIGRAM_BUCKETS": "31",
    "BIGRAM_DIM": "8",
    "XSA_LAST_N": "1",
    "ORTHO_INIT": "1",
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelShape.from_config(load_config(None, ENV)), CPU)
    with torch.no_grad():  # non-trivial weights everywhere (zero-init parts included)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def tables() -> ByteTables:
    # Token i is (i % 3) + 1 bytes; odd ids carry a leading space; id 1 is a boundary.
    ids = torch.arange(VOCAB)
    boundary = ids == 1
    base = torch.where(boundary, 0, ids % 3 + 1).to(torch.int16)
    return ByteTables(base, (ids % 2 == 1) & ~boundary, boundary)


def tokens(n: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g).to(torch.uint16)


def context_start(j: int, targets: int, window: int, stride: int) -> int:
    """Where the context of target j starts: the latest start on the stride grid (or the
    tail window's) whose window still reaches j, counted independently of the code."""
    if targets <= window or j < window:
        return 0
    return min(math.ceil((j + 1 - window) / stride) * stride, targets - window)


def brute_force(model, val: torch.Tensor, window: int, stride: int, t: ByteTables):
    """Score each target alone, feeding exactly its context; sums in float64."""
    targets = val.numel() - 1
    loss = nbytes = 0.0
    for j in range(targets):
        start = context_start(j, targets, window, stride)
        x = val[start : j + 1].long()[None]
        y = val[start + 1 : j + 2].long()[None]
        with torch.no_grad():
            loss += float(model(x, y, reduction="none")[-1])
        nbytes += float(t.target_bytes(x[:, -1], y[:, -1]).sum())
    return loss, targets, nbytes


@pytest.mark.parametrize(
    ("n_tokens", "window", "stride", "batch"),
    [(97, 16, 4, 5), (64, 16, 16, 3), (50, 16, 5, 64), (12, 16, 4, 2)],
)
def test_sliding_equals_a_per_token_brute_force(model, n_tokens, window, stride, batch):
    val, t = tokens(n_tokens), tables()
    got = evaluate_sliding(
        model, val, t, window=window, stride=stride, batch_seqs=batch,
        rank=0, world_size=1, device=CPU,
    )
    loss, count, nbytes = brute_force(model, val, window, stride, t)
    assert got.complete
    assert got.tokens == count == n_tokens - 1  # every target once
    assert got.bytes == nbytes
    assert got.val_loss == pytest.approx(loss / count, rel=1e-5)
    assert got.val_bpb == pytest.approx((loss / count / math.log(2)) * count / nbytes, rel=1e-5)


@pytest.mark.parametrize(("targets", "window", "stride"), [(1000, 64, 64), (1001, 64, 7), (63, 64, 8)])
def test_windows_partition_the_targets_with_the_most_context(targets, window, stride):
    covered = []
    for start, first in sliding_windows(targets, window, stride):
        length = min(window, targets)
        assert 0 <= first < length and start + length <= targets
        for offset in range(first, length):
            j = start + offset
            covered.append(j)
            # As much left context as the window allows: all of it at the start, else at
            # least window - stride + 1 tokens.
            assert offset + 1 >= min(j + 1, window - stride + 1)
    assert covered == list(range(targets))


def test_ranks_split_the_windows_and_together_score_everything(model):
    val, t = tokens(131), tables()
    args = dict(window=16, stride=4, batch_seqs=3, world_size=3, device=CPU)
    parts = [evaluate_sliding(model, val, t, rank=r, **args) for r in range(3)]
    whole = evaluate_sliding(model, val, t, window=16, stride=4, batch_seqs=3, rank=0,
                             world_size=1, device=CPU)
    assert sum(p.tokens for p in parts) == whole.tokens == 130
    assert sum(p.bytes for p in parts) == whole.bytes
    total = sum(p.val_loss * p.tokens for p in parts) / whole.tokens
    assert total == pytest.approx(whole.val_loss, rel=1e-9)


def test_stride_equal_to_the_window_is_the_standard_evaluation(model):
    val, t = tokens(16 * 6 + 1), tables()
    sliding = evaluate_sliding(model, val, t, window=16, stride=16, batch_seqs=4, rank=0,
                               world_size=1, device=CPU)
    standard = evaluate(model, val, t, seq_len=16, local_batch_tokens=64, rank=0,
                        world_size=1, device=CPU)
    assert (sliding.tokens, sliding.bytes) == (standard.tokens, standard.bytes)
    assert sliding.val_loss == pytest.approx(standard.val_loss, rel=1e-6)


def test_every_window_after_the_first_scores_its_last_stride_targets():
    windows = sliding_windows(10_000, 64, 8)
    assert windows[0] == (0, 0)
    assert sum(64 - first for _, first in windows) == 10_000
    # Regular windows score exactly `stride`; only the flush tail window may score fewer.
    assert all(first == 64 - 8 for _, first in windows[1:-1])
    assert 64 - 8 <= windows[-1][1] < 64


def test_the_deadline_stops_scoring_and_says_so(model):
    val, t = tokens(200), tables()
    args = dict(rank=0, world_size=1, device=CPU, deadline=time.perf_counter() - 1.0)
    sliding = evaluate_sliding(model, val, t, window=16, stride=4, batch_seqs=2, **args)
    standard = evaluate(model, val, t, seq_len=16, local_batch_tokens=32, **args)
    # Only the first batch is scored: 2 windows of 16, or 2 sequences of 16.
    assert not sliding.complete and sliding.tokens == 16 + 4
    assert not standard.complete and standard.tokens == 32
    fine = evaluate_sliding(model, val, t, window=16, stride=4, batch_seqs=2, rank=0,
                            world_size=1, device=CPU, deadline=time.perf_counter() + 600)
    assert fine.complete and fine.tokens == 199
