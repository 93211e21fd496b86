"""Full-Hessian GPTQ: lower output error than round-to-nearest at the same bits and scales,
Hessians from forward hooks, and the artifact format unchanged."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.test_model import batch, tiny_model
from trainer.gptq import collect_hessians, gptq_quantize
from trainer.quantize import QuantSpec, dequantize_state_dict, quantize_rows, quantize_state_dict


def correlated_inputs(tokens: int, width: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few dominant, correlated directions (as real layer inputs have)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=g) * torch.logspace(0, -2, width)[:, None]
    return torch.randn(tokens, width, generator=g) @ mixing


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_gptq_has_lower_output_error_than_round_to_nearest(bits):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 96, generator=g) * 0.05
    x = correlated_inputs(2048, 96)
    h = x.T @ x / x.size(0)
    rtn, scale = quantize_rows(w, bits, clip_search=False)
    gptq = gptq_quantize(w, h, scale, bits, damp=0.01)
    levels = 2 ** (bits - 1) - 1
    assert gptq.dtype == torch.int8 and int(gptq.abs().max()) <= levels

    def output_error(q: torch.Tensor) -> float:
        return torch.linalg.norm(x @ w.T - x @ (q.float() * scale.float()[:, None]).T).item()

    assert output_error(gptq) < 0.6 * output_error(rtn)


def test_inputs_that_never_fire_and_a_singular_hessian_are_handled():
    w = torch.randn(8, 16)
    x = correlated_inputs(4, 16)  # 4 tokens: H has rank 4 of 16
    x[:, 3] = 0.0  # a dead input
    h = x.T @ x
    _, scale = quantize_rows(w, 6, clip_search=False)
    q = gptq_quantize(w, h, scale, 6, damp=0.0)
    assert torch.isfinite(q.float()).all()
    assert (q[:, 3] == 0).all()  # its weights do not matter, so they become 0


def test_hessians_are_the_inputs_gram_matrix_per_linear_layer():
    _, model = tiny_model()
    x, y = batch()
    seen = {}
    layer = model.blocks[1].mlp.proj
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    hessians = collect_hessians(model, [(x, y)], model)
    handle.remove()
    inputs = seen["x"].reshape(-1, seen["x"].size(-1))
    expected = inputs.T @ inputs / inputs.size(0)
    assert torch.allclose(hessians["blocks.1.mlp.proj.weight"], expected, rtol=1e-5, atol=1e-6)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert {f"{n}.weight" for n in linears} | {"tok_emb.weight"} == set(hessians)
    dim = model.shape.model_dim
    assert hessians["tok_emb.weight"].shape == (dim, dim)  # the tied head's input


def test_looped_layers_collect_every_pass():
    _, plain = tiny_model(seed=3)
    _, looped = tiny_model(seed=3, RECUR_LAYERS="1", RECUR_START="1", RECUR_REPEATS="2")
    x, y = batch()
    once = collect_hessians(plain, [(x, y)], plain)["blocks.1.attn.c_q.weight"]
    thrice = collect_hessians(looped, [(x, y)], looped)["blocks.1.attn.c_q.weight"]
    assert not torch.allclose(once, thrice)  # the later passes see different inputs


def test_gptq_artifact_dequantizes_to_its_stored_values():
    _, model = tiny_model()
    x, y = batch()
    hessians = collect_hessians(model, [(x, y)], model)
    spec = QuantSpec(bits=6, keep_float_max=0, gptq=True)
    obj, _ = quantize_state_dict(model.state_dict(), spec, hessians)
    plain, _ = quantize_state_dict(model.state_dict(), QuantSpec(bits=6, keep_float_max=0))
    name = "blocks.0.mlp.fc.weight"
    assert torch.equal(obj["scales"][name], plain["scales"][name])  # same scales
    assert not torch.equal(obj["quantized"][name], plain["quantized"][name])  # other rounding
    restored = dequantize_state_dict(obj)
    expected = obj["quantized"][name].float() * obj["scales"][name].float()[:, None]
    assert torch.equal(restored[name], expected)
