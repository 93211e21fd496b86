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


# --- v2: int8/int6/int5 per row, GPTQ-lite, fp16 embedding, any compressor -----------------

from trainer.quantize import (  # noqa: E402
    FORMAT_V2,
    HEADER_MAGIC,
    QuantSpec,
    available_compressors,
    quantize_rows,
)


def trained_like_matrix(rows: int = 96, cols: int = 768, seed: int = 1) -> torch.Tensor:
    # Heavy-tailed rows (Student-t), as trained weights are: clipping outliers pays off.
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=g)
    chi = torch.randn(rows, cols, 3, generator=g).square().sum(-1) / 3
    return 0.02 * normal / chi.sqrt()


@pytest.mark.parametrize("compressor", available_compressors())
@pytest.mark.parametrize("bits", [8, 6, 5])
def test_v2_round_trip_is_exact_to_the_stored_values(bits, compressor):
    state = sample_state()
    spec = QuantSpec(bits=bits, clip_search=True, fp16_embed=True, compressor=compressor)
    obj, _ = quantize_state_dict(state, spec)
    blob, _ = pack(obj, compressor)
    assert blob.startswith(HEADER_MAGIC) and blob[len(HEADER_MAGIC)] == 2
    back = unpack(blob)
    assert back["__quant_format__"] == FORMAT_V2 and back["bits"] == bits
    restored = dequantize_state_dict(back)
    levels = 2 ** (bits - 1) - 1
    q = back["quantized"]["blocks.0.mlp.fc.weight"]
    scale = back["scales"]["blocks.0.mlp.fc.weight"]
    assert q.dtype == torch.int8 and int(q.abs().max()) <= levels
    assert int(q.abs().max()) == levels  # the range is used
    assert torch.equal(restored["blocks.0.mlp.fc.weight"], q.float() * scale.float()[:, None])
    # fp16 embedding: passed through, not quantized, back in its original dtype.
    assert "tok_emb.weight" not in back["quantized"]
    assert torch.equal(restored["tok_emb.weight"], state["tok_emb.weight"].half().bfloat16())
    assert torch.equal(restored["blocks.0.resid_mix"], state["blocks.0.resid_mix"])
    assert torch.equal(restored["step_count"], state["step_count"])


def test_the_baseline_spec_still_writes_the_bare_v1_zlib_file():
    obj, _ = quantize_state_dict(sample_state(), QuantSpec())
    blob, _ = pack(obj, "zlib")
    assert obj["__quant_format__"] == FORMAT and "bits" not in obj
    assert blob == pack(quantize_state_dict(sample_state())[0])[0]
    assert zlib.decompress(blob)  # no header: the challenge's own format


@pytest.mark.parametrize("bits", [8, 6, 5])
def test_gptq_lite_never_reconstructs_worse_than_plain_per_row(bits):
    for seed in range(3):
        w = trained_like_matrix(seed=seed)
        plain_q, plain_s = quantize_rows(w, bits, clip_search=False)
        lite_q, lite_s = quantize_rows(w, bits, clip_search=True)
        plain_err = (plain_q.float() * plain_s.float()[:, None] - w).square().sum(1)
        lite_err = (lite_q.float() * lite_s.float()[:, None] - w).square().sum(1)
        assert (lite_err <= plain_err).all()
        # And on heavy-tailed rows it is strictly better in total.
        assert lite_err.sum() < plain_err.sum()


def test_fewer_bits_give_smaller_compressed_artifacts():
    state = {"blocks.0.mlp.fc.weight": trained_like_matrix(256, 512)}
    sizes = {}
    for bits in (8, 6, 5):
        obj, _ = quantize_state_dict(state, QuantSpec(bits=bits, compressor="zstd"))
        sizes[bits] = len(pack(obj, "zstd")[0])
    assert sizes[5] < sizes[6] < sizes[8]


def test_corrupt_v2_artifacts_name_the_problem(tmp_path):
    obj, _ = quantize_state_dict(sample_state(), QuantSpec(bits=6, compressor="zstd"))
    blob, _ = pack(obj, "zstd")
    bad_version = tmp_path / "v9.ptz"
    bad_version.write_bytes(HEADER_MAGIC + bytes((9, 2)) + blob[len(HEADER_MAGIC) + 2 :])
    with pytest.raises(ArtifactError, match="v9.ptz has artifact version 9"):
        read_artifact(bad_version)
    truncated = tmp_path / "cut.ptz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match="cut.ptz is not zstd-compressed"):
        read_artifact(truncated)
    unknown = tmp_path / "c7.ptz"
    unknown.write_bytes(HEADER_MAGIC + bytes((2, 7)) + b"x")
    with pytest.raises(ArtifactError, match="unknown compressor id 7"):
        read_artifact(unknown)


def test_the_float_threshold_decides_what_is_quantized():
    state = sample_state()
    default, _ = quantize_state_dict(state, QuantSpec(bits=6))
    lowered, _ = quantize_state_dict(state, QuantSpec(bits=6, keep_float_max=1000))
    assert "blocks.0.attn.c_q.weight" in default["passthrough"]  # 4,096 elements: kept
    assert "blocks.0.attn.c_q.weight" in lowered["quantized"]
    assert "blocks.0.resid_mix" in lowered["passthrough"]  # 128 elements: still kept
    assert not QuantSpec(keep_float_max=1000).baseline


def test_sdclip_clips_rows_at_k_standard_deviations_and_compresses_smaller():
    w = trained_like_matrix(256, 512)
    q, scale = quantize_rows(w, 6, clip_search=True, sdclip_k=12.85)
    # The clip search is ignored: each row's step is k sigma over the 31 int6 levels.
    expected = (12.85 * w.std(dim=1, correction=0) / 31).half()
    assert torch.equal(scale, expected)
    assert torch.equal(q.float(), torch.clamp(torch.round(w / expected.float()[:, None]), -31, 31))
    sizes = {}
    for label, spec in {"lite": QuantSpec(bits=6, clip_search=True, compressor="zstd"),
                        "sdclip": QuantSpec(bits=6, sdclip_k=12.85, compressor="zstd")}.items():
        obj, _ = quantize_state_dict({"blocks.0.mlp.fc.weight": w}, spec)
        sizes[label] = len(pack(obj, "zstd")[0])
    assert sizes["sdclip"] < 0.8 * sizes["lite"]


def test_the_embedding_takes_its_own_bits_and_sdclip():
    state = sample_state()
    spec = QuantSpec(bits=6, sdclip_k=12.85, embed_bits=8, embed_sdclip_k=2.0,
                     compressor="zstd")
    back = unpack(pack(quantize_state_dict(state, spec)[0], "zstd")[0])
    assert back["bits"] == 6
    embedding = state["tok_emb.weight"].float()
    expected = (2.0 * embedding.std(dim=1, correction=0) / 127).half()
    assert torch.equal(back["scales"]["tok_emb.weight"], expected)
    assert int(back["quantized"]["tok_emb.weight"].abs().max()) == 127  # clipped at 2 sigma
    assert int(back["quantized"]["blocks.0.mlp.fc.weight"].abs().max()) <= 31
    restored = dequantize_state_dict(back)
    q, s = back["quantized"]["tok_emb.weight"], back["scales"]["tok_emb.weight"]
    assert torch.equal(restored["tok_emb.weight"],
                       (q.float() * s.float()[:, None]).to(torch.bfloat16))
    # Without its own settings the embedding follows the matrices'.
    assert QuantSpec(bits=6, sdclip_k=12.85).for_tensor("tok_emb.weight") == (6, 12.85)
