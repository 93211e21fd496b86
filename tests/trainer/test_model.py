"""The baseline GPT and its optimizers, at tiny shapes on CPU (plus one full-size count)."""

from __future__ import annotations

import math

import torch

from trainer.config import load_config
from trainer.model import ModelShape, build_model
from trainer.muon import Muon, build_optimizers, newton_schulz5

CPU = torch.device("cpu")
TINY_ENV = {
    "NUM_LAYERS": "3",
    "MODEL_DIM": "32",
    "NUM_HEADS": "4",
    "NUM_KV_HEADS": "2",
    "VOCAB_SIZE": "64",
    "TRAIN_SEQ_LEN": "16",
    "TRAIN_BATCH_TOKENS": "1024",
    "VAL_BATCH_SIZE": "1024",
}


def tiny_model(seed: int = 0, **env: str):
    config = load_config(None, {**TINY_ENV, **env})
    torch.manual_seed(seed)
    return config, build_model(ModelShape.from_config(config), CPU)


def batch(seed: int = 1, vocab: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 16), generator=g), torch.randint(
        0, vocab, (2, 16), generator=g
    )


def test_baseline_shape_has_the_records_parameter_count():
    # The naive baseline log reports model_params:17059912 for 9x512, vocab 1024, tied.
    model = build_model(ModelShape.from_config(load_config(None, {})), CPU)
    assert sum(p.numel() for p in model.parameters()) == 17_059_912


def test_state_dict_names_match_the_baseline_artifact():
    _, model = tiny_model()
    keys = list(model.state_dict())
    # A module's own parameters come before its children's (torch's order), as in the baseline.
    assert keys[:2] == ["skip_weights", "tok_emb.weight"]
    assert keys[2:12] == [
        f"blocks.0.{k}"
        for k in (
            "attn_scale",
            "mlp_scale",
            "resid_mix",
            "attn.q_gain",
            "attn.c_q.weight",
            "attn.c_k.weight",
            "attn.c_v.weight",
            "attn.proj.weight",
            "mlp.fc.weight",
            "mlp.proj.weight",
        )
    ]
    assert model.skip_weights.shape == (1, 32)  # min(3 // 2, 3 - 3 // 2) skips


def test_initial_loss_is_near_uniform_and_init_is_seeded():
    _, model = tiny_model(seed=3)
    x, y = batch()
    loss = model(x, y)
    # Zero-init output projections and a 0.005-std embedding give near-zero logits.
    assert abs(loss.item() - math.log(64)) < 0.01
    _, same = tiny_model(seed=3)
    _, other = tiny_model(seed=4)
    assert torch.equal(model.blocks[0].attn.c_q.weight, same.blocks[0].attn.c_q.weight)
    assert not torch.equal(model.blocks[0].attn.c_q.weight, other.blocks[0].attn.c_q.weight)
    assert not model.blocks[0].attn.proj.weight.any() and not model.blocks[0].mlp.proj.weight.any()


def test_forward_backward_reaches_every_parameter_after_one_step():
    config, model = tiny_model()
    opts = build_optimizers(model, config, fused=False)
    x, y = batch()
    model(x, y).backward()
    opts.step()  # zero-init projections now move, so every gradient path opens
    opts.zero_grad()
    model(x, y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_a_few_steps_fit_a_fixed_batch():
    config, model = tiny_model()
    opts = build_optimizers(model, config, fused=False)
    x, y = batch()
    first = model(x, y).item()
    for _ in range(10):
        opts.zero_grad()
        model(x, y).backward()
        opts.step()
    assert model(x, y).item() < first - 1.0


def test_parameter_groups_follow_the_baseline_split():
    config, model = tiny_model(TIE_EMBEDDINGS="0")
    opts = build_optimizers(model, config, fused=False)
    token, head, muon, scalar = opts.optimizers
    assert token.param_groups[0]["params"] == [model.tok_emb.weight]
    assert token.param_groups[0]["lr"] == config.embed_lr
    assert head.param_groups[0]["params"] == [model.lm_head.weight]
    assert muon is opts.muon
    matrices = {id(p) for p in muon.param_groups[0]["params"]}
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    assert id(model.blocks[0].attn.c_q.weight) in matrices
    assert id(model.blocks[0].resid_mix) not in matrices  # a 2-D control tensor: Adam
    scalars = {id(p) for p in scalar.param_groups[0]["params"]}
    assert {id(model.blocks[0].resid_mix), id(model.skip_weights)} <= scalars
    every = [id(p) for opt in opts.optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())


def test_newton_schulz_flattens_the_spectrum():
    g = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100.0  # one dominant direction
    out = newton_schulz5(g, steps=5)
    assert out.shape == g.shape and out.dtype == torch.bfloat16
    singular = torch.linalg.svdvals(out.float())
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_muon_step_is_lr_times_scaled_orthogonalized_nesterov_momentum():
    p = torch.nn.Parameter(torch.zeros(8, 4))
    grad = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    p.grad = grad.clone()
    Muon([p], lr=0.1, momentum=0.9, backend_steps=5).step()
    nesterov = grad + 0.9 * grad  # buffer = grad after one step
    expected = newton_schulz5(nesterov, 5) * math.sqrt(8 / 4)
    assert torch.equal(p.data, (-0.1 * expected.bfloat16().to(torch.float32)))


def test_mixed_precision_layout_is_the_baselines_cuda_layout():
    config = load_config(None, TINY_ENV)
    shape = ModelShape.from_config(config)
    torch.manual_seed(0)
    plain = build_model(shape, CPU, mixed=False)
    torch.manual_seed(0)
    mixed = build_model(shape, CPU, mixed=True)
    dtypes = {n: p.dtype for n, p in mixed.named_parameters()}
    assert dtypes.pop("tok_emb.weight") == torch.bfloat16
    assert set(dtypes.values()) == {torch.float32}
    assert mixed.blocks[0].attn.rotary.inv_freq.dtype == torch.bfloat16
    # Same seed, same init; the fp32 weights went through bf16 once.
    for (name, p), q in zip(mixed.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q.to(p.dtype).to(torch.bfloat16).to(p.dtype)), name
    x, y = batch()
    assert abs(mixed(x, y).item() - plain(x, y).item()) < 0.01


def test_training_after_an_inference_mode_forward_keeps_gradients():
    # Validation runs under inference_mode first when VAL_LOSS_EVERY hits step 0 without
    # warmup; the RoPE tables it caches must not leak into the next training forward.
    _, model = tiny_model()
    x, y = batch()
    with torch.inference_mode():
        model(x, y)
    model(x, y).backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None
