"""The `baseline` preset against the challenge's own train_gpt.py, fact by fact.

Every expected value here is written out by hand from the challenge's script or from the
naive baseline's log (`model_params:17059912`, `Serialized model int8+zlib: ... (payload:
17178912 raw_torch:17224025 ...)`), never computed by the code under test.
"""

from __future__ import annotations

import io
import math
import os
import tempfile

import pytest
import torch
from torch import nn

from trainer.config import load_config
from trainer.evaluate import TTTSettings, evaluate, evaluate_sliding, evaluate_ttt
from trainer.model import ModelShape, build_model
from trainer.muon import NS_COEFFICIENTS, NS_EPS, build_optimizers
from trainer.quantize import (
    CLIP_QUANTILE,
    FORMAT,
    KEEP_FLOAT_MAX_NUMEL,
    ZLIB_LEVEL,
    QuantSpec,
    pack,
    quantize_state_dict,
)
from trainer.train import (
    RECOMPILE_LIMIT,
    compile_fullgraph,
    logs_train_step,
    lr_scale,
    muon_momentum,
    training_cap_ms,
)

CPU = torch.device("cpu")

# Every variable the challenge's Hyperparameters class reads, with its default there.
OFFICIAL_DEFAULTS = {
    "DATA_PATH": "./data/datasets/fineweb10B_sp1024",
    "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model",
    "SEED": 1337,
    "VAL_BATCH_SIZE": 524_288,
    "VAL_LOSS_EVERY": 1000,
    "TRAIN_LOG_EVERY": 200,
    "ITERATIONS": 20000,
    "WARMDOWN_ITERS": 1200,
    "WARMUP_STEPS": 20,
    "TRAIN_BATCH_TOKENS": 524_288,
    "TRAIN_SEQ_LEN": 1024,
    "MAX_WALLCLOCK_SECONDS": 600.0,
    "QK_GAIN_INIT": 1.5,
    "VOCAB_SIZE": 1024,
    "NUM_LAYERS": 9,
    "NUM_KV_HEADS": 4,
    "MODEL_DIM": 512,
    "NUM_HEADS": 8,
    "MLP_MULT": 2,
    "TIE_EMBEDDINGS": True,
    "ROPE_BASE": 10000.0,
    "LOGIT_SOFTCAP": 30.0,
    "EMBED_LR": 0.6,
    "HEAD_LR": 0.008,
    "TIED_EMBED_LR": 0.05,
    "TIED_EMBED_INIT_STD": 0.005,
    "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.04,
    "MUON_MOMENTUM": 0.95,
    "MUON_BACKEND_STEPS": 5,
    "MUON_MOMENTUM_WARMUP_START": 0.85,
    "MUON_MOMENTUM_WARMUP_STEPS": 500,
    "BETA1": 0.9,
    "BETA2": 0.95,
    "ADAM_EPS": 1e-8,
    "GRAD_CLIP_NORM": 0.0,
    "CONTROL_TENSOR_NAME_PATTERNS": (
        "attn_scale,attn_scales,mlp_scale,mlp_scales,resid_mix,resid_mixes,q_gain,"
        "skip_weight,skip_weights"
    ),
}
# A different value for each that still passes every cross-field rule, as a string.
OTHER_VALUES = {
    "DATA_PATH": "/data/sp1024/",
    "TOKENIZER_PATH": "/data/tok.model",
    "SEED": "42",
    "VAL_BATCH_SIZE": "1048576",
    "VAL_LOSS_EVERY": "0",
    "TRAIN_LOG_EVERY": "0",
    "ITERATIONS": "500",
    "WARMDOWN_ITERS": "3000",
    "WARMUP_STEPS": "0",
    "TRAIN_BATCH_TOKENS": "786432",
    "TRAIN_SEQ_LEN": "2048",
    "MAX_WALLCLOCK_SECONDS": "0",
    "QK_GAIN_INIT": "5.0",
    "VOCAB_SIZE": "8192",
    "NUM_LAYERS": "11",
    "NUM_KV_HEADS": "8",
    "MODEL_DIM": "768",
    "NUM_HEADS": "16",
    "MLP_MULT": "3",
    "TIE_EMBEDDINGS": "0",
    "ROPE_BASE": "50000",
    "LOGIT_SOFTCAP": "15",
    "EMBED_LR": "0.5",
    "HEAD_LR": "0.01",
    "TIED_EMBED_LR": "0.035",
    "TIED_EMBED_INIT_STD": "0.01",
    "MATRIX_LR": "0.025",
    "SCALAR_LR": "0.025",
    "MUON_MOMENTUM": "0.99",
    "MUON_BACKEND_STEPS": "4",
    "MUON_MOMENTUM_WARMUP_START": "0.92",
    "MUON_MOMENTUM_WARMUP_STEPS": "1500",
    "BETA1": "0.8",
    "BETA2": "0.99",
    "ADAM_EPS": "1e-10",
    "GRAD_CLIP_NORM": "0.3",
    "CONTROL_TENSOR_NAME_PATTERNS": "attn_scale,q_gain",
}


def _parsed(raw: str, like: object) -> object:
    if isinstance(like, bool):
        return raw == "1"
    return type(like)(raw)


@pytest.fixture(scope="module")
def baseline_model() -> nn.Module:
    # The full-size baseline with the CUDA dtype layout (bf16 embedding, fp32 elsewhere).
    config = load_config(None, {})
    torch.manual_seed(config.seed)
    return build_model(ModelShape.from_config(config), CPU, mixed=True)


def test_every_official_variable_has_the_official_default():
    config = load_config(None, {})
    assert config.preset == "baseline"
    for var, default in OFFICIAL_DEFAULTS.items():
        assert getattr(config, var.lower()) == default, var
    assert config.run_id == ""  # RUN_ID: a fresh uuid4 per run, as in the script
    # Artifacts store the patterns with the shape; ones written before they did load with
    # the same default.
    shape_default = ModelShape.__dataclass_fields__["control_tensor_name_patterns"].default
    assert shape_default == OFFICIAL_DEFAULTS["CONTROL_TENSOR_NAME_PATTERNS"]


@pytest.mark.parametrize("var", sorted(OTHER_VALUES))
def test_every_official_variable_is_honoured_with_its_meaning(var):
    config = load_config(None, {var: OTHER_VALUES[var]})
    expected = _parsed(OTHER_VALUES[var], OFFICIAL_DEFAULTS[var])
    assert getattr(config, var.lower()) == expected != OFFICIAL_DEFAULTS[var]


def test_the_lr_multiplier_is_the_official_formula():
    # Wall-clock warmdown: WARMDOWN_ITERS x the average step time, counted back from the cap.
    c = load_config(None, {})
    cap = training_cap_ms(c)
    assert cap == 600_000.0
    assert lr_scale(c, 0, 0.0, cap) == 1.0
    assert lr_scale(c, 10_000, 430_000.0, cap) == 1.0  # 170 s left > 1200 x 43 ms
    assert lr_scale(c, 13_000, 559_000.0, cap) == 41_000.0 / 51_600.0
    assert lr_scale(c, 13_950, 600_000.0, cap) == 0.0
    # Without a cap: linear over the last WARMDOWN_ITERS of ITERATIONS.
    c = load_config(None, {"MAX_WALLCLOCK_SECONDS": "0"})
    assert training_cap_ms(c) is None
    assert lr_scale(c, 18_799, 0.0, None) == 1.0
    assert lr_scale(c, 18_800, 0.0, None) == 1.0
    assert lr_scale(c, 19_400, 0.0, None) == 0.5
    assert lr_scale(c, 19_999, 0.0, None) == 1.0 / 1200.0
    c = load_config(None, {"WARMDOWN_ITERS": "0"})
    assert lr_scale(c, 13_000, 599_000.0, 600_000.0) == 1.0


def test_muon_momentum_warms_up_linearly_as_the_official_script():
    c = load_config(None, {})
    assert muon_momentum(c, 0) == 0.85
    assert muon_momentum(c, 250) == pytest.approx(0.90, abs=1e-15)
    assert muon_momentum(c, 500) == 0.95
    assert muon_momentum(c, 5000) == 0.95
    assert muon_momentum(load_config(None, {"MUON_MOMENTUM_WARMUP_STEPS": "0"}), 0) == 0.95


def test_train_lines_are_the_first_ten_every_nth_and_the_last():
    assert [s for s in range(1, 1001) if logs_train_step(200, s, False)] == [
        *range(1, 11), 200, 400, 600, 800, 1000
    ]
    assert logs_train_step(200, 13_780, True)
    assert not any(logs_train_step(0, s, s == 7) for s in range(1, 20))


def test_the_baseline_has_the_logged_parameter_count_and_init(baseline_model):
    m = baseline_model
    assert sum(p.numel() for p in m.parameters()) == 17_059_912  # model_params:17059912
    emb = m.tok_emb.weight
    assert emb.dtype == torch.bfloat16 and emb.shape == (1024, 512)
    assert emb.float().std().item() == pytest.approx(0.005, rel=0.01)  # TIED_EMBED_INIT_STD
    assert abs(emb.float().mean().item()) < 1e-4
    assert m.lm_head is None  # tied: the head is the embedding
    assert m.skip_weights.shape == (4, 512) and bool((m.skip_weights == 1).all())
    for block in m.blocks:
        attn = block.attn
        assert not attn.proj.weight.any() and not block.mlp.proj.weight.any()  # zero-init
        # nn.Linear's default init: uniform within 1/sqrt(fan_in).
        assert attn.c_q.weight.abs().max().item() <= 1 / math.sqrt(512)
        assert attn.c_k.weight.shape == attn.c_v.weight.shape == (256, 512)  # 4 KV heads x 64
        assert block.mlp.fc.weight.shape == (1024, 512)
        assert bool((attn.q_gain == 1.5).all()) and attn.q_gain.shape == (8,)
        assert torch.equal(block.resid_mix, torch.stack((torch.ones(512), torch.zeros(512))))
        assert bool((block.attn_scale == 1).all()) and bool((block.mlp_scale == 1).all())
        # RoPE over the whole 64-dim head, base 10000 (its buffer is bf16 on CUDA too).
        expected = 1.0 / 10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)
        assert torch.equal(attn.rotary.inv_freq, expected.bfloat16())
        assert block.attn_norm(torch.ones(1, 512)).eq(1).all()  # weightless RMSNorm
    assert m.shape.logit_softcap == 30.0


def test_a_seed_draws_the_initial_weights_in_the_official_order():
    # The script builds nn.Embedding (a normal draw), then per block c_q, c_k, c_v, proj,
    # fc, proj (nn.Linear's uniform draws, even for the projections it then zeroes), and
    # finally redraws the tied embedding with std TIED_EMBED_INIT_STD.
    env = {"NUM_LAYERS": "3", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
           "VOCAB_SIZE": "96", "TRAIN_SEQ_LEN": "16", "TRAIN_BATCH_TOKENS": "1024",
           "VAL_BATCH_SIZE": "1024"}
    config = load_config(None, env)
    torch.manual_seed(1234)
    model = build_model(ModelShape.from_config(config), CPU)

    torch.manual_seed(1234)
    nn.Embedding(96, 64)
    shapes = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (128, 64)]  # (in, out)
    drawn = [[nn.Linear(i, o, bias=False).weight.detach() for i, o in shapes] for _ in range(3)]
    embedding = nn.init.normal_(torch.empty(96, 64), mean=0.0, std=0.005)

    assert torch.equal(model.tok_emb.weight, embedding)
    for block, (c_q, c_k, c_v, _, fc, _) in zip(model.blocks, drawn, strict=True):
        assert torch.equal(block.attn.c_q.weight, c_q)
        assert torch.equal(block.attn.c_k.weight, c_k)
        assert torch.equal(block.attn.c_v.weight, c_v)
        assert torch.equal(block.mlp.fc.weight, fc)


def test_optimizer_groups_and_settings_are_the_official_ones(baseline_model):
    config = load_config(None, {})
    opts = build_optimizers(baseline_model, config, fused=False)
    token, muon, scalar = opts.optimizers  # the script's step order (no untied head)
    assert muon is opts.muon
    assert len(muon.param_groups[0]["params"]) == 9 * 6  # every block matrix
    assert len(scalar.param_groups[0]["params"]) == 9 * 4 + 1  # gains, mixes, skips
    assert token.param_groups[0]["lr"] == token.param_groups[0]["base_lr"] == 0.05
    assert scalar.param_groups[0]["lr"] == 0.04 and muon.param_groups[0]["base_lr"] == 0.04
    for adam in (token, scalar):
        assert adam.defaults["betas"] == (0.9, 0.95) and adam.defaults["eps"] == 1e-8
        assert adam.defaults["weight_decay"] == 0
    group = muon.param_groups[0]
    assert (group["momentum"], group["backend_steps"], group["nesterov"]) == (0.95, 5, True)
    assert group["weight_decay"] == 0.0
    assert NS_COEFFICIENTS == (3.4445, -4.7750, 2.0315) and NS_EPS == 1e-7


def test_the_int8_export_has_the_logged_payload_and_torch_size(baseline_model):
    # Serialized model int8+zlib: ... (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)
    # Both depend on shapes and dtypes only, not on the trained values.
    assert (CLIP_QUANTILE, KEEP_FLOAT_MAX_NUMEL, ZLIB_LEVEL) == (99.99984 / 100.0, 65_536, 9)
    spec = QuantSpec.from_config(load_config(None, {}))
    assert spec.baseline
    obj, stats = quantize_state_dict(baseline_model.state_dict(), spec)
    assert stats["int8_payload_bytes"] == 17_178_912
    assert f"{stats['baseline_tensor_bytes'] / stats['int8_payload_bytes']:.2f}" == "3.91"
    # Every small float tensor is a control tensor (kept fp32), so the optional
    # passthrough_orig_dtypes is absent, as in the script's object.
    assert set(obj) == {"__quant_format__", "quantized", "scales", "dtypes", "passthrough",
                        "qmeta"}
    assert obj["__quant_format__"] == FORMAT
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert len(buf.getvalue()) == 17_224_025
    assert obj["scales"]["blocks.0.attn.c_q.weight"].dtype == torch.float16
    assert obj["passthrough"]["blocks.0.attn.q_gain"].dtype == torch.float32  # control: fp32
    assert obj["dtypes"]["tok_emb.weight"] == "bfloat16"


def test_the_raw_model_file_is_the_logged_size(baseline_model):
    # Serialized model: 67224983 bytes, saved from CUDA; torch.save stores each tensor's
    # device name ("cuda:0" here "cpu"), so the CPU file is a little smaller.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "final_model.pt")
        torch.save(baseline_model.state_dict(), path)
        size = os.path.getsize(path)
    assert 67_224_983 - 4096 < size <= 67_224_983


def test_control_patterns_come_from_the_environment():
    env = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
           "VOCAB_SIZE": "96", "TRAIN_SEQ_LEN": "16", "TRAIN_BATCH_TOKENS": "1024",
           "VAL_BATCH_SIZE": "1024", "CONTROL_TENSOR_NAME_PATTERNS": "attn_scale,q_gain,skip"}
    config = load_config(None, env)
    model = build_model(ModelShape.from_config(config), CPU, mixed=True)
    # resid_mix is 2-D and no longer a control tensor: bf16 on CUDA and a Muon matrix.
    assert model.blocks[0].resid_mix.dtype == torch.bfloat16
    opts = build_optimizers(model, config, fused=False)
    assert any(p is model.blocks[0].resid_mix for p in opts.muon.param_groups[0]["params"])
    obj, _ = quantize_state_dict(model.state_dict(), QuantSpec.from_config(config))
    assert obj["passthrough"]["blocks.0.resid_mix"].dtype == torch.float16
    assert obj["passthrough"]["blocks.0.attn_scale"].dtype == torch.float32
    # INT8_KEEP_FLOAT_FP32_NAME_PATTERNS narrows what the artifact keeps in fp32 only.
    config = load_config(None, {**env, "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS": "q_gain"})
    spec = QuantSpec.from_config(config)
    assert spec.baseline  # still the challenge's v1 file
    obj, _ = quantize_state_dict(model.state_dict(), spec)
    assert obj["passthrough"]["blocks.0.attn_scale"].dtype == torch.float16
    assert obj["passthrough"]["blocks.0.attn.q_gain"].dtype == torch.float32
    blob, _ = pack(obj)
    assert not blob.startswith(b"CADDIEQ")


def test_the_model_traces_as_one_graph_for_training_and_one_for_evaluation():
    # On CUDA the model runs under torch.compile(fullgraph=True), as the script's: any
    # untraceable Python in forward fails the run, and a guard that changes every step
    # recompiles every step. Dynamo alone (no inductor) checks both on CPU.
    import torch._dynamo.testing

    env = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
           "VOCAB_SIZE": "96", "TRAIN_SEQ_LEN": "16", "TRAIN_BATCH_TOKENS": "1024",
           "VAL_BATCH_SIZE": "1024"}
    model = build_model(ModelShape.from_config(load_config(None, env)), CPU, mixed=True)
    torch._dynamo.reset()  # frames compiled by earlier tests in this process count to the limit
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False, fullgraph=True)
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # warmup steps, then training again after a validation
        compiled(x, x).backward()
    with torch.inference_mode():
        compiled(x, x)
        compiled(x, x)
    for _ in range(2):
        compiled(x, x).backward()
    assert counter.frame_count == 2
    assert torch.equal(compiled(x, x), model(x, x))


TINY_SHAPE = {"NUM_LAYERS": "4", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
              "VOCAB_SIZE": "96", "TRAIN_SEQ_LEN": "16", "TRAIN_BATCH_TOKENS": "1024",
              "VAL_BATCH_SIZE": "1024", "BIGRAM_BUCKETS": "64", "BIGRAM_DIM": "16",
              "ROPE_DIMS": "8", "EVAL_STRIDE": "8", "TTT_CHUNK_TOKENS": "16"}
# Per-layer switches at 4 layers: the record's XSA on the last 2; the frontier's XSA on all,
# the loop over layers 1-2, parallel residuals on the last 2.
TINY_SWITCHES = {
    "baseline": {},
    "record": {"XSA_LAST_N": "2"},
    "frontier": {"XSA_LAST_N": "4", "RECUR_START": "1", "RECUR_LAYERS": "2",
                 "PARALLEL_LAST_N": "2"},
}


def tiny_preset_model(tmp_path, preset: str, **env: str):
    """(config, model) of `preset` at TINY_SHAPE with the CUDA run's parameter dtypes."""
    run_json = tmp_path / "run.json"
    run_json.write_text(f'{{"preset": "{preset}"}}')
    shape = TINY_SHAPE if preset != "baseline" else {
        k: v for k, v in TINY_SHAPE.items() if not k.startswith(("BIGRAM", "ROPE_DIMS"))}
    config = load_config(run_json, {**shape, **TINY_SWITCHES[preset], **env})
    return config, build_model(ModelShape.from_config(config), CPU, mixed=True)


@pytest.mark.parametrize("preset", ["record", "frontier"])
def test_every_switch_traces_as_one_graph_per_mode(tmp_path, preset):
    # The record's and frontier's switches run under the same fullgraph compile on CUDA. A
    # mode the training loop changes (the loop turned on, late QAT) may compile once more;
    # steps within a mode must not, and no switch may break the graph.
    import torch._dynamo.testing

    config, model = tiny_preset_model(tmp_path, preset)
    assert model.smear_gate is not None and model.bigram_emb is not None
    torch._dynamo.reset()  # frames compiled by earlier tests in this process count to the limit
    counter = torch._dynamo.testing.CompileCounter()
    compiled = compile_fullgraph(model, backend=counter)
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    modes = [("no loop", lambda: setattr(model, "looping", False)),
             ("loop", lambda: setattr(model, "looping", True)),
             ("late QAT", lambda: model.set_qat_bits(config.quant_bits))]
    if not config.recur_layers:
        modes = [modes[1], modes[2]]
    for number, (name, enter) in enumerate(modes, start=1):
        enter()
        for _ in range(3):
            compiled(x, x).backward()
        assert counter.frame_count == number, f"{preset}: {name} recompiled within the mode"
    model.set_qat_bits(0)  # the exported model is scored without fake quantization
    training = counter.frame_count
    with torch.inference_mode():
        for _ in range(2):
            losses = compiled(x, x, reduction="none")
    assert counter.frame_count <= training + 2  # the loop state is seen once more, then eval
    with torch.inference_mode():
        assert torch.equal(losses, model(x, x, reduction="none"))


class _OneBytePerToken:
    """Byte tables stand-in: the compile count does not depend on them."""

    def target_bytes(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(y)


def test_a_frontier_run_compiles_each_evaluation_once_and_stays_under_the_limit(tmp_path):
    # Evaluation batches whose window counts do not divide evenly (the last of a rank, of a
    # TTT chunk) are padded to one shape; without that each remainder compiled anew, and the
    # run's compiles passed torch's default limit of 8, which under fullgraph=True fails the
    # run after training. The trainer raises the limit as well: this flow needs 10.
    import torch._dynamo.testing

    _, model = tiny_preset_model(tmp_path, "frontier", EVAL_STRIDE="4", TTT_CHUNK_TOKENS="64")
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = compile_fullgraph(model, backend=counter)
    x = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    val = torch.randint(0, 96, (1001,), generator=torch.Generator().manual_seed(1))
    common = dict(rank=0, world_size=1, device=CPU)
    frames = []

    def standard():  # 62 sequences in batches of 5: a short last batch
        evaluate(compiled, val, _OneBytePerToken(), seq_len=16, local_batch_tokens=80, **common)

    def train(mode):
        mode()
        for _ in range(2):
            compiled(x, x).backward()

    for step in (lambda: train(lambda: setattr(model, "looping", False)), standard,
                 lambda: train(lambda: setattr(model, "looping", True)),
                 lambda: train(lambda: model.set_qat_bits(6)),
                 lambda: model.set_qat_bits(0), standard):
        step()
    frames.append(counter.frame_count)
    # 247 windows in batches of 7 (a last batch of 2); TTT chunks of 13, 16 and 10 windows
    # (last batches of 6, 2 and 3).
    sliding = evaluate_sliding(compiled, val, _OneBytePerToken(), window=16, stride=4,
                               batch_seqs=7, **common)
    frames.append(counter.frame_count)
    ttt = TTTSettings(chunk_tokens=64, epochs=2, lr=1e-3, momentum=0.9, seq_len=16)
    evaluate_ttt(compiled, val, _OneBytePerToken(), ttt, window=16, stride=4, batch_seqs=7,
                 **common)
    frames.append(counter.frame_count)
    assert sliding.tokens == 1000
    assert frames[1] - frames[0] == 1  # sliding windows: one shape
    assert frames[2] - frames[1] == 2  # TTT: scoring (no_grad) and its training steps
    assert frames[2] <= RECOMPILE_LIMIT <= torch._dynamo.config.recompile_limit


@pytest.mark.parametrize("preset", ["baseline", "record", "frontier"])
def test_every_switch_trains_under_bf16_autocast_with_the_cuda_dtypes(tmp_path, preset):
    # On CUDA the forward runs under bf16 autocast over a model with a bf16 embedding and
    # fp32 matrices; CPU autocast runs the same mix here. Each gradient keeps its
    # parameter's dtype and is finite, with late QAT off and on.
    config, model = tiny_preset_model(tmp_path, preset)
    assert model.tok_emb.weight.dtype == torch.bfloat16
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    for bits in (0, config.quant_bits):
        model.set_qat_bits(bits)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)
            per_token = model(x, x, reduction="none")
        loss.backward()
        assert loss.dtype == per_token.dtype == torch.float32 and per_token.shape == (32,)
        assert torch.isfinite(loss) and torch.isfinite(per_token).all()
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert param.grad.dtype == param.dtype and torch.isfinite(param.grad).all(), name
