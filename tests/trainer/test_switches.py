"""Every technique is a config switch: each runs forward and backward and changes something;
presets resolve; bad values fail naming the variable; with all switches off the model is
the baseline's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.trainer.test_model import CPU, TINY_ENV, batch, tiny_model
from trainer.config import FIELDS, PRESETS, ConfigError, load_config
from trainer.model import ModelShape, build_model, fake_quantize, layer_order
from trainer.muon import Muon, build_optimizers, newton_schulz5
from trainer.quantize import quantize_rows
from trainer.train import WeightAverage, lr_scale

# The model switches and a value that turns each on.
MODEL_SWITCHES = {
    "MLP_ACTIVATION": "leaky_relu2",
    "SMEAR_GATE": "1",
    "BIGRAM_BUCKETS": "97",
    "XSA_LAST_N": "2",
    "ROPE_DIMS": "4",
    "LN_SCALE": "1",
    "ORTHO_INIT": "1",
    "MLP_MULT": "3",
    "PARALLEL_LAST_N": "2",
    "RECUR_LAYERS": "2",
}


def perturbed_state(model) -> dict[str, torch.Tensor]:
    """Every weight plus seeded noise (so zero-initialized parts matter too), by name."""
    out = {}
    for name, value in model.state_dict().items():
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        out[name] = value + 0.05 * torch.randn(value.shape, generator=g)
    return out


@pytest.mark.parametrize(("var", "value"), list(MODEL_SWITCHES.items()))
def test_each_model_switch_trains_and_changes_the_model(var, value):
    _, base = tiny_model()
    config, model = tiny_model(**{var: value})
    x, y = batch()
    loss = model(x, y)
    loss.backward()
    assert math.isfinite(loss.item())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opts = build_optimizers(model, config, fused=False)
    grouped = {id(p) for opt in opts.optimizers for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}  # every parameter is optimized

    if var == "ORTHO_INIT":  # an init switch: the initial matrices differ
        w = model.blocks[0].attn.c_q.weight
        assert torch.allclose(w @ w.T, torch.eye(w.size(0)), atol=1e-5)
        assert model.blocks[0].mlp.proj.weight.abs().sum() > 0
        return
    # Same (perturbed) weights where the names match: the switch alone changes the loss.
    base_state = perturbed_state(base)
    state = {**perturbed_state(model), **{k: v for k, v in base_state.items()
                                          if k in model.state_dict()
                                          and model.state_dict()[k].shape == v.shape}}
    base.load_state_dict(base_state)
    model.load_state_dict(state)
    with torch.no_grad():
        assert model(x, y).item() != pytest.approx(base(x, y).item(), abs=1e-6)


def test_per_token_losses_average_to_the_mean_loss():
    _, model = tiny_model(SMEAR_GATE="1", BIGRAM_BUCKETS="31", XSA_LAST_N="3")
    x, y = batch()
    per_token = model(x, y, reduction="none")
    assert per_token.shape == (32,)
    assert per_token.mean().item() == pytest.approx(model(x, y).item(), rel=1e-6)


def test_the_model_is_causal_with_every_switch_on():
    _, model = tiny_model(**{k: v for k, v in MODEL_SWITCHES.items() if k != "MLP_MULT"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = batch()
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 64
    before = model(x, y, reduction="none").view(2, 16)
    after = model(changed, y, reduction="none").view(2, 16)
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.equal(before[:, 10:], after[:, 10:])


def test_late_qat_fake_quantizes_forward_and_passes_gradients_straight_through():
    _, model = tiny_model(ORTHO_INIT="1")
    x, y = batch()
    plain = model(x, y)
    model.set_qat_bits(6)
    quantized = model(x, y)
    quantized.backward()
    assert quantized.item() != plain.item()
    grad = model.blocks[0].attn.c_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.set_qat_bits(0)
    assert model(x, y).item() == plain.item()


def test_late_qat_on_sdclip_rounds_to_the_grid_the_export_stores():
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    q, scale = quantize_rows(w, 6, clip_search=False, sdclip_k=12.85)
    exported = q.float() * scale.float()[:, None]

    def distance(fake: torch.Tensor) -> float:
        return float((fake - exported).abs().mean())

    # Only the stored scale's fp16 rounding differs; the max-|w| grid is far finer.
    assert distance(fake_quantize(w, 6, sdclip_k=12.85)) < 0.05 * distance(fake_quantize(w, 6))
    _, model = tiny_model(ORTHO_INIT="1")
    model.set_qat_bits(6, 12.85)
    layer = model.blocks[0].attn.c_q
    assert (layer.qat_bits, layer.qat_sdclip_k) == (6, 12.85)


def test_switch_modules_leave_the_baseline_weights_as_they_were():
    _, base = tiny_model(seed=5)
    _, switched = tiny_model(seed=5, SMEAR_GATE="1", BIGRAM_BUCKETS="97", XSA_LAST_N="1",
                        ROPE_DIMS="4", LN_SCALE="1")
    for name, value in base.state_dict().items():
        assert torch.equal(switched.state_dict()[name], value), name


def test_muon_weight_decay_is_decoupled():
    p = torch.nn.Parameter(torch.ones(4, 4))
    p.grad = torch.zeros(4, 4)  # no gradient: only the decay moves the weights
    Muon([p], lr=0.5, momentum=0.9, backend_steps=5, weight_decay=0.04).step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 1 - 0.5 * 0.04))
    q = torch.nn.Parameter(torch.ones(4, 4))
    q.grad = torch.zeros(4, 4)
    Muon([q], lr=0.5, momentum=0.9, backend_steps=5).step()
    assert torch.equal(q.detach(), torch.ones(4, 4))


def schedule(**values):
    fields = dict(warmdown_frac=0.0, warmdown_iters=0, iterations=1000, min_lr_scale=0.0)
    return SimpleNamespace(**{**fields, **values})


def test_warmdown_by_fraction_of_the_wall_clock_budget():
    c = schedule(warmdown_frac=0.25)
    cap = 600_000.0
    assert lr_scale(c, 10, 100_000.0, cap) == 1.0
    assert lr_scale(c, 10, 450_000.0, cap) == pytest.approx(1.0)
    assert lr_scale(c, 10, 525_000.0, cap) == pytest.approx(0.5)
    assert lr_scale(c, 10, 600_000.0, cap) == 0.0
    # Without a cap the fraction is of ITERATIONS.
    assert lr_scale(c, 875, 0.0, None) == pytest.approx(0.5)


def test_lr_floor_lifts_the_whole_schedule():
    c = schedule(warmdown_frac=0.5, min_lr_scale=0.1)
    assert lr_scale(c, 0, 0.0, 1000.0) == 1.0
    assert lr_scale(c, 0, 750.0, 1000.0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_scale(c, 0, 1000.0, 1000.0) == pytest.approx(0.1)


def test_ema_tracks_the_weights_and_is_what_gets_applied():
    model = torch.nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    ema.apply_to(model)
    assert torch.allclose(model.weight, start + 0.1)


def resolve(preset: str, tmp_path: Path):
    path = tmp_path / f"{preset}.json"
    path.write_text(json.dumps({"preset": preset}))
    return load_config(path, {})


def test_presets_resolve_and_the_record_preset_builds(tmp_path):
    for name, values in PRESETS.items():
        config = resolve(name, tmp_path)
        assert config.preset == name
        assert all(getattr(config, k) == v for k, v in values.items())
    record = resolve("record", tmp_path)
    assert (record.num_layers, record.mlp_mult, record.xsa_last_n, record.rope_dims) == (11, 3, 4, 16)
    assert (record.quant_bits, record.compressor, record.eval_mode, record.eval_stride) == (
        6, "zstd", "sliding", 64)
    assert record.train_seq_len == 2048 and record.ema_decay == 0.997
    model = build_model(ModelShape.from_config(record), CPU)
    assert sum(p.numel() for p in model.parameters()) > 25_000_000
    # The baseline preset leaves every switch at its (off) default.
    baseline = resolve("baseline", tmp_path)
    for name, spec in FIELDS.items():
        assert getattr(baseline, name) == spec["default"]
    assert baseline.quant_bits == 8 and baseline.eval_mode == "standard"
    assert not (baseline.smear_gate or baseline.bigram_buckets or baseline.xsa_last_n)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QUANT_BITS": "7"}, "QUANT_BITS=7 is not one of [5, 6, 8]"),
        ({"COMPRESSOR": "gzip"}, "COMPRESSOR='gzip' is not one of"),
        ({"EVAL_MODE": "windowed"}, "EVAL_MODE='windowed' is not one of"),
        ({"EMA_DECAY": "1.5"}, "EMA_DECAY=1.5 is above the maximum 1.0"),
        ({"ROPE_DIMS": "5"}, "ROPE_DIMS=5 must be even"),
        ({"ROPE_DIMS": "16"}, "ROPE_DIMS=16 must be even and at most the head size 8"),
        ({"XSA_LAST_N": "4"}, "XSA_LAST_N=4 exceeds NUM_LAYERS=3"),
        ({"BIGRAM_BUCKETS": "1"}, "BIGRAM_BUCKETS=1 is too few"),
        ({"EVAL_MODE": "sliding", "EVAL_STRIDE": "17"}, "EVAL_STRIDE=17 exceeds the window"),
        ({"SMEAR_GATE": "maybe"}, "SMEAR_GATE='maybe' is not a bool"),
    ],
)
def test_bad_switch_values_fail_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, {**TINY_ENV, **env})
    assert message in str(exc.value)


def test_parallel_residual_blocks_read_one_input_and_add_both_branches():
    _, model = tiny_model(PARALLEL_LAST_N="1")
    last, first = model.blocks[2], model.blocks[0]
    assert last.parallel and not first.parallel
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, x0 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    mixed = last.resid_mix[0] * x + last.resid_mix[1] * x0
    h = torch.nn.functional.rms_norm(mixed, (32,))
    expected = mixed + last.attn_scale * last.attn(h) + last.mlp_scale * last.mlp(h)
    assert torch.allclose(last(x, x0), expected, atol=1e-6)


def test_depth_recurrence_reruns_a_range_of_layers_with_the_same_weights():
    config, model = tiny_model(NUM_LAYERS="4", RECUR_START="1", RECUR_LAYERS="2",
                               RECUR_REPEATS="2")
    shape = ModelShape.from_config(config)
    assert layer_order(shape, looping=True) == [0, 1, 2, 1, 2, 1, 2, 3]
    assert layer_order(shape, looping=False) == [0, 1, 2, 3]
    _, plain = tiny_model(NUM_LAYERS="4")
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 32  # shared weights: only the U-Net over 8 runs has 2 more skip rows
    calls = [0] * 4
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x, y = batch()
    model(x, y)
    assert calls == [1, 3, 3, 1]
    model.looping = False
    model(x, y)
    assert calls == [2, 4, 4, 2]


def orthogonality_error(update: torch.Tensor) -> float:
    """Mean distance of the singular values from 1."""
    return (torch.linalg.svdvals(update.float()) - 1).abs().mean().item()


def test_polar_express_gets_closer_to_orthogonal_in_five_steps():
    g = torch.randn(64, 128, generator=torch.Generator().manual_seed(2))
    g = g * torch.logspace(0, -2, 128)  # a spread of singular values, as gradients have
    standard = orthogonality_error(newton_schulz5(g, 5))
    polar = orthogonality_error(newton_schulz5(g, 5, polar_express=True))
    assert polar < 0.5 * standard


def muon_update(variant: str, grad: torch.Tensor) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    Muon([p], lr=1.0, momentum=0.0, backend_steps=5, variant=variant).step()
    return -p.detach()


def test_muoneq_r_normalizes_rows_before_orthogonalizing():
    g = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    rows = torch.logspace(-2, 2, 16)[:, None]  # rescale each row of the gradient
    for variant in ("muoneq_r", "polar_express_muoneq_r"):
        assert torch.allclose(muon_update(variant, g * rows), muon_update(variant, g), atol=1e-2)
    # Plain Muon is not row-scale invariant: the large rows dominate its update.
    assert not torch.allclose(muon_update("standard", g * rows), muon_update("standard", g),
                              atol=1e-1)
    with pytest.raises(ValueError, match="MUON_VARIANT='fast' is not one of"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0, momentum=0.0, backend_steps=5,
             variant="fast")
