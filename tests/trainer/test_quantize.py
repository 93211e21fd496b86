"""int8 + zlib artifact: what is stored, and that reading it back is exact."""

from __future__ import annotations

import zlib

import pytest
import torch

from trainer.quantize import (
    FORMAT,
    ArtifactError,
    dequantize_state_dict,
    pack,
    quantize_state_dict,
    read_artifact,
    unpack,
)


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(300, 256, generator=g)  # 76,800 elements: per-row int8
    big[5, 7] = 40.0  # an outlier that sets its row's scale
    return {
        "blocks.0.mlp.fc.weight": big,
        "tok_emb.weight": torch.randn(260, 256, generator=g).bfloat16(),
        "conv.weight": torch.randn(70_000, generator=g),  # large 1-D: one per-tensor scale
        "blocks.0.attn.c_q.weight": torch.randn(64, 64, generator=g),  # small: fp16 passthrough
        "blocks.0.resid_mix": torch.randn(2, 64, generator=g),  # control: fp32 passthrough
        "step_count": torch.tensor([12, 7], dtype=torch.int64),
    }


def test_round_trip_through_bytes_is_exact_to_the_stored_values():
    state = sample_state()
    obj, stats = quantize_state_dict(state)
    blob, raw_len = pack(obj)
    assert len(zlib.decompress(blob)) == raw_len
    back = unpack(blob)
    assert back["__quant_format__"] == FORMAT
    restored = dequantize_state_dict(back)
    assert list(restored) == list(obj["quantized"]) + list(obj["passthrough"])

    q, scale = back["quantized"]["blocks.0.mlp.fc.weight"], back["scales"]["blocks.0.mlp.fc.weight"]
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (300,)
    assert back["qmeta"]["blocks.0.mlp.fc.weight"] == {"scheme": "per_row", "axis": 0}
    expected = q.float() * scale.float()[:, None]
    assert torch.equal(restored["blocks.0.mlp.fc.weight"], expected)

    emb = restored["tok_emb.weight"]
    assert emb.dtype == torch.bfloat16  # original dtype restored
    emb_q, emb_s = back["quantized"]["tok_emb.weight"], back["scales"]["tok_emb.weight"]
    assert torch.equal(emb, (emb_q.float() * emb_s.float()[:, None]).bfloat16())

    conv_scale = back["scales"]["conv.weight"]
    assert conv_scale.ndim == 0 and conv_scale.dtype == torch.float32
    assert torch.equal(
        restored["conv.weight"], back["quantized"]["conv.weight"].float() * conv_scale.item()
    )

    small = restored["blocks.0.attn.c_q.weight"]
    assert small.dtype == torch.float32  # stored fp16, returned in its original dtype
    assert torch.equal(small, state["blocks.0.attn.c_q.weight"].half().float())
    assert torch.equal(restored["blocks.0.resid_mix"], state["blocks.0.resid_mix"])
    assert torch.equal(restored["step_count"], state["step_count"])
    assert stats["param_count"] == sum(t.numel() for t in state.values())


def test_quantization_error_is_at_most_half_a_row_step():
    state = sample_state()
    obj, _ = quantize_state_dict(state)
    restored = dequantize_state_dict(obj)
    w = state["blocks.0.mlp.fc.weight"]
    step = obj["scales"]["blocks.0.mlp.fc.weight"].float()[:, None]
    err = (restored["blocks.0.mlp.fc.weight"] - w).abs()
    inside = w.abs() <= 127 * step
    assert (err[inside] <= step.expand_as(w)[inside] * 0.5 + 1e-3).all()
    # The outlier's row gets a coarser step than the others; its error is still bounded.
    assert step[5] > 4 * step.median()


def test_pack_is_deterministic():
    obj, _ = quantize_state_dict(sample_state())
    assert pack(obj)[0] == pack(obj)[0]


def test_unreadable_artifacts_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="artifact not found"):
        read_artifact(tmp_path / "missing.ptz")
    junk = tmp_path / "junk.ptz"
    junk.write_bytes(b"not zlib at all")
    with pytest.raises(ArtifactError, match="junk.ptz is not zlib-compressed"):
        read_artifact(junk)
    other = tmp_path / "other.ptz"
    other.write_bytes(pack({"__quant_format__": "int4_v9"})[0])
    with pytest.raises(ArtifactError, match="other.ptz is not a int8_clean_per_row_v1"):
        read_artifact(other)
