"""Legal score-first test-time training: a token's score never depends on later tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.config import ConfigError, load_config
from trainer.evaluate import TTTSettings, evaluate_sliding, evaluate_ttt

from .test_sliding import CPU, ENV, tables, tokens
from .test_sliding import model as model  # noqa: F401  (the shared module fixture)

WINDOW, STRIDE, CHUNK = 16, 4, 40


def run_ttt(model, val, lr: float, epochs: int = 2):
    m = copy.deepcopy(model)  # TTT changes weights in place
    losses = torch.full((val.numel() - 1,), float("nan"), dtype=torch.float64)
    ttt = TTTSettings(chunk_tokens=CHUNK, epochs=epochs, lr=lr, momentum=0.9, seq_len=WINDOW)
    result = evaluate_ttt(m, val, tables(), ttt, window=WINDOW, stride=STRIDE, batch_seqs=3,
                          rank=0, world_size=1, device=CPU, token_losses=losses)
    return result, losses, m


def test_without_updates_ttt_is_the_sliding_evaluation(model):
    val = tokens(181)
    result, losses, _ = run_ttt(model, val, lr=0.0)
    sliding = evaluate_sliding(model, val, tables(), window=WINDOW, stride=STRIDE, batch_seqs=3,
                               rank=0, world_size=1, device=CPU)
    assert not losses.isnan().any()  # every target scored
    assert (result.tokens, result.bytes) == (sliding.tokens, sliding.bytes) == (180, sliding.bytes)
    assert result.val_loss == pytest.approx(sliding.val_loss, rel=1e-6)
    assert losses.mean().item() == pytest.approx(result.val_loss, rel=1e-9)


def test_updates_change_only_the_chunks_after_the_first(model):
    val = tokens(181)
    _, frozen, _ = run_ttt(model, val, lr=0.0)
    _, adapted, trained = run_ttt(model, val, lr=0.05)
    assert torch.equal(frozen[:CHUNK], adapted[:CHUNK])  # scored before any update
    assert not torch.equal(frozen[CHUNK:], adapted[CHUNK:])
    assert not torch.equal(trained.blocks[0].attn.c_q.weight, model.blocks[0].attn.c_q.weight)


@pytest.mark.parametrize("changed", [57, 100, 150])
def test_changing_a_later_token_never_changes_an_earlier_score(model, changed):
    val = tokens(181)
    other = val.clone()
    other[changed] = (int(other[changed]) + 7) % 48
    _, before, _ = run_ttt(model, val, lr=0.05)
    _, after, _ = run_ttt(model, other, lr=0.05)
    # Target j predicts token j + 1: every target before the changed token is untouched.
    assert torch.equal(before[: changed - 1], after[: changed - 1])
    assert not torch.equal(before[changed - 1 :], after[changed - 1 :])


def test_ttt_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="TTT_EPOCHS=2 needs sliding evaluation, not EVAL_MODE='standard'"):
        load_config(None, {**ENV, "TTT_EPOCHS": "2"})
    with pytest.raises(ConfigError, match="TTT_CHUNK_TOKENS=8 is shorter than the window 16"):
        load_config(None, {**ENV, "TTT_EPOCHS": "2", "EVAL_MODE": "sliding", "EVAL_STRIDE": "4",
                           "TTT_CHUNK_TOKENS": "8"})


def test_an_artifacts_eval_settings_select_ttt(model):
    from trainer.train import Launch, score_model

    val = tokens(181)
    settings = {"eval_mode": "sliding", "eval_seq_len": WINDOW, "eval_stride": STRIDE,
                "eval_batch_seqs": 3, "ttt_epochs": 2, "ttt_chunk_tokens": CHUNK,
                "ttt_lr": 0.05, "ttt_momentum": 0.9}
    scored = score_model(copy.deepcopy(model), val, tables(), settings,
                         Launch(0, 1, 0, CPU, False), None)
    direct, _, _ = run_ttt(model, val, lr=0.05)
    assert scored == direct
