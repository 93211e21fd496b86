"""The artifact: per-row quantized weights, torch.save, compressed.

Two formats, both read by `read_artifact`:
- v1, the baseline's (`FORMAT`): int8, clip at a fixed quantile, zlib level 9, no header;
  written whenever the spec is the baseline's (QUANT_BITS=8, no clip search, quantized
  embedding, zlib, the 65,536-element float threshold), so the baseline artifact is
  byte-for-byte the challenge's.
- v2 (`FORMAT_V2`): `bits` 8, 6 or 5 (values in [-(2^(b-1)-1), 2^(b-1)-1], stored one per
  int8), optional GPTQ-lite clip search per row or SDClip (rows clipped at k standard
  deviations), optional full-Hessian GPTQ (same format: only the rounding differs, see
  trainer/gptq.py), an fp16 token embedding or one with bits and SDClip of its own (values
  and scales alike: "bits" names the matrices'), and any compressor; the file is HEADER_MAGIC, one version byte, one compressor byte, then the
  compressed torch.save bytes.

Quantized object (a dict, saved with torch.save):
  "__quant_format__": FORMAT or FORMAT_V2
  "bits": 8 | 6 | 5 (v2 only)
  "compressor": "zlib" | "zstd" | "lzma" | "brotli" (v2 only)
  "quantized": {name: int8 tensor}          2-D float tensors > 65,536 elements: per row;
  "scales":    {name: fp16 [rows] | fp32 []}  other large float tensors: one fp32 scale
  "dtypes":    {name: original dtype name}
  "passthrough": {name: tensor}             small float tensors (fp16, or fp32 for control
                                            tensors) and every non-float tensor, as is
  "passthrough_orig_dtypes": {name: dtype}  what fp16-stored passthrough tensors were
  "qmeta": {name: {"scheme": "per_row", "axis": 0}}
  "model": the model shape (ModelShape.as_dict()) so the artifact alone rebuilds the model
  "eval":  what scoring needs besides data: seq_len, val_batch_size, val_max_tokens, ...
The scored model is exactly `dequantize(...)` of what was read back from the file.
"""

from __future__ import annotations

import io
import lzma
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainer.gptq import gptq_quantize
from trainer.model import CONTROL_TENSOR_PATTERNS, is_control_tensor, name_patterns

FORMAT = "int8_clean_per_row_v1"
FORMAT_V2 = "caddie_per_row_v2"
KEEP_FLOAT_MAX_NUMEL = 65_536
KEEP_FLOAT_DTYPE = torch.float16
PER_ROW_SCALE_DTYPE = torch.float16
CLIP_QUANTILE = 99.99984 / 100.0  # clip each row at this quantile of |w|
# GPTQ-lite: the clip quantiles tried per row (the plain one first, so never worse).
CLIP_CANDIDATES = (CLIP_QUANTILE, 0.999, 0.9995, 0.9999, 0.99999, 1.0)
MIN_SCALE_V2 = 1e-8  # v1 floors scales at 1/127 (the baseline's); v2 only avoids zero
EMBEDDING_NAME = "tok_emb.weight"
ZLIB_LEVEL = 9
ZSTD_LEVEL = 22
BROTLI_QUALITY = 11
HEADER_MAGIC = b"CADDIEQ"
HEADER_VERSION = 2
COMPRESSOR_IDS = {"zlib": 1, "zstd": 2, "lzma": 3, "brotli": 4}


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize and compress; the default is the baseline's int8 + zlib."""

    bits: int = 8
    clip_search: bool = False
    fp16_embed: bool = False
    compressor: str = "zlib"
    keep_float_max: int = KEEP_FLOAT_MAX_NUMEL  # tensors this small are not quantized
    gptq: bool = False  # round matrices that have a Hessian with GPTQ
    gptq_damp: float = 0.01  # fraction of mean(diag H) added to H's diagonal
    sdclip_k: float = 0.0  # > 0: clip rows at k standard deviations (SDClip)
    embed_bits: int = 0  # the tied embedding's bits; 0: `bits`
    embed_sdclip_k: float = 0.0  # the tied embedding's SDClip; 0: `sdclip_k`
    # Small float tensors whose name contains one of these stay fp32 (the others fp16):
    # INT8_KEEP_FLOAT_FP32_NAME_PATTERNS, which defaults to CONTROL_TENSOR_NAME_PATTERNS.
    keep_fp32_patterns: tuple[str, ...] = CONTROL_TENSOR_PATTERNS

    @classmethod
    def from_config(cls, config: Any) -> QuantSpec:
        keep = config.int8_keep_float_fp32_name_patterns or config.control_tensor_name_patterns
        return cls(
            config.quant_bits,
            config.quant_clip_search,
            config.fp16_embed,
            config.compressor,
            config.quant_keep_float_max,
            config.gptq,
            config.gptq_damp,
            config.quant_sdclip_k,
            config.quant_embed_bits,
            config.quant_embed_sdclip_k,
            name_patterns(keep),
        )

    @property
    def baseline(self) -> bool:
        # Which names stay fp32 does not change the format: the baseline's script reads
        # that list from the environment too.
        return replace(self, keep_fp32_patterns=CONTROL_TENSOR_PATTERNS) == QuantSpec()

    def for_tensor(self, name: str) -> tuple[int, float]:
        """(bits, SDClip k) for the named tensor: the embedding may have its own."""
        if name != EMBEDDING_NAME:
            return self.bits, self.sdclip_k
        return self.embed_bits or self.bits, self.embed_sdclip_k or self.sdclip_k

    @property
    def label(self) -> str:
        """The community's name for the artifact kind, e.g. int8+zlib, int6+zstd."""
        return f"int{self.bits}+{self.compressor}"


class ArtifactError(ValueError):
    """An artifact that cannot be read back; the message names the file."""


def _nbytes(t: Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantize_rows(
    t32: Tensor, bits: int, clip_search: bool, sdclip_k: float = 0.0
) -> tuple[Tensor, Tensor]:
    """v2 per-row quantization of a float32 matrix: (int8 values, fp16 scale [rows]).

    Each row is clipped at a quantile of its |w| and rounded to 2^(bits-1)-1 levels.
    With `clip_search` (GPTQ-lite) every quantile in CLIP_CANDIDATES is tried and each
    row keeps the one whose dequantized row (with the fp16 scale actually stored) has
    the lowest squared error; the plain clip is a candidate, so it never loses to it.
    With `sdclip_k` > 0 (SDClip) each row is clipped at k times its standard deviation
    instead: not the smallest error, but fewer distinct values, which compress smaller.
    """
    levels = 2 ** (bits - 1) - 1
    if sdclip_k > 0:
        clips: Iterable[Tensor] = [sdclip_k * t32.std(dim=1, correction=0)]  # [rows]
    else:
        quantiles = CLIP_CANDIDATES if clip_search else CLIP_CANDIDATES[:1]
        clips = (torch.quantile(t32.abs(), q, dim=1) for q in quantiles)  # [rows] each
    best_q = best_scale = best_err = None
    for clip in clips:
        scale = (clip / levels).clamp_min(MIN_SCALE_V2).to(PER_ROW_SCALE_DTYPE)
        s32 = scale.float()[:, None]
        q = torch.clamp(torch.round(t32 / s32), -levels, levels)
        err = (q * s32 - t32).square().sum(dim=1)  # [rows]
        if best_err is None:
            best_q, best_scale, best_err = q, scale, err
            continue
        better = err < best_err
        best_q = torch.where(better[:, None], q, best_q)
        best_scale = torch.where(better, scale, best_scale)
        best_err = torch.where(better, err, best_err)
    assert best_q is not None and best_scale is not None  # clips always holds a candidate
    return best_q.to(torch.int8).contiguous(), best_scale.contiguous()


def quantize_tensor(t: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 values, scale): per-row fp16 scales for matrices, one fp32 scale otherwise."""
    t32 = t.float()
    if t32.ndim == 2:
        clip = (
            torch.quantile(t32.abs(), CLIP_QUANTILE, dim=1)
            if t32.numel()
            else torch.empty((t32.shape[0],), dtype=torch.float32)
        )  # [rows]
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q.contiguous(), scale.to(dtype=PER_ROW_SCALE_DTYPE).contiguous()
    clip_abs = (
        float(torch.quantile(t32.abs().flatten(), CLIP_QUANTILE).item()) if t32.numel() else 0.0
    )
    scale = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale), -127, 127)
    return q.to(torch.int8).contiguous(), scale


def quantize_state_dict(
    state_dict: dict[str, Tensor],
    spec: QuantSpec | None = None,
    hessians: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """(quantized object, stats); stats count parameters and payload bytes.

    The baseline spec (or None) gives the v1 object; any other spec the v2 object. With
    `spec.gptq`, a matrix named in `hessians` keeps its per-row scales but is rounded by
    GPTQ against its Hessian.
    """
    spec = spec or QuantSpec()
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    stats = dict(param_count=0, baseline_tensor_bytes=0, int8_payload_bytes=0)
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        stats["param_count"] += int(t.numel())
        stats["baseline_tensor_bytes"] += _nbytes(t)
        keep_embedding = spec.fp16_embed and name == EMBEDDING_NAME
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= spec.keep_float_max or keep_embedding:
            passthrough[name] = _keep_float(name, t, orig_dtypes, spec.keep_fp32_patterns)
        else:
            if spec.baseline or t.ndim != 2:
                q, s = quantize_tensor(t)
            else:
                bits, sdclip_k = spec.for_tensor(name)
                q, s = quantize_rows(t.float(), bits, spec.clip_search, sdclip_k)
                if spec.gptq and hessians and name in hessians:
                    q = gptq_quantize(tensor, hessians[name], s, bits, spec.gptq_damp)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name] = q, s
            dtypes[name] = _dtype_name(t.dtype)
            stats["int8_payload_bytes"] += _nbytes(q) + _nbytes(s)
            continue
        stats["int8_payload_bytes"] += _nbytes(passthrough[name])
    obj: dict[str, Any] = {
        "__quant_format__": FORMAT if spec.baseline else FORMAT_V2,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    if not spec.baseline:
        obj["bits"] = spec.bits
        obj["compressor"] = spec.compressor  # also in the file header; kept for reporting
    return obj, stats


def _keep_float(
    name: str, t: Tensor, orig_dtypes: dict[str, str], fp32_patterns: tuple[str, ...]
) -> Tensor:
    # Control tensors stay exact in fp32; other small fp32/bf16 tensors are stored as fp16.
    if is_control_tensor(name, fp32_patterns):
        return t.float().contiguous()
    if t.dtype in (torch.float32, torch.bfloat16):
        orig_dtypes[name] = _dtype_name(t.dtype)
        return t.to(dtype=KEEP_FLOAT_DTYPE).contiguous()
    return t


def dequantize_state_dict(obj: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict the artifact stands for: q * scale in the original dtype."""
    if obj.get("__quant_format__") not in (FORMAT, FORMAT_V2):
        raise ArtifactError(
            f"unknown quant format {obj.get('__quant_format__')!r}, "
            f"expected {FORMAT!r} or {FORMAT_V2!r}"
        )
    out: dict[str, Tensor] = {}
    qmeta = obj.get("qmeta", {})
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    for name, q in obj["quantized"].items():
        dtype = getattr(torch, obj["dtypes"][name])
        s = obj["scales"][name]
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            # [rows] scale broadcast over the trailing dimensions
            row_scale = s.to(dtype=torch.float32).view(q.shape[0], *([1] * (q.ndim - 1)))
            out[name] = (q.float() * row_scale).to(dtype=dtype).contiguous()
        else:
            out[name] = (q.float() * float(s.item())).to(dtype=dtype).contiguous()
    for name, t in obj["passthrough"].items():
        restored = t.detach().to("cpu").contiguous()
        if isinstance(orig_dtypes.get(name), str):
            restored = restored.to(dtype=getattr(torch, orig_dtypes[name])).contiguous()
        out[name] = restored
    return out


def available_compressors() -> list[str]:
    """The compressors this machine can use (brotli only if its package is installed)."""
    names = ["zlib", "zstd", "lzma"]
    try:
        import brotli  # noqa: F401
    except ImportError:
        return names
    return [*names, "brotli"]


def compress(raw: bytes, compressor: str) -> bytes:
    if compressor == "zlib":
        return zlib.compress(raw, level=ZLIB_LEVEL)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    if compressor == "lzma":
        return lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    if compressor == "brotli":
        try:
            import brotli
        except ImportError:
            raise ArtifactError("COMPRESSOR='brotli' needs the brotli package") from None
        return brotli.compress(raw, quality=BROTLI_QUALITY)
    raise ArtifactError(f"COMPRESSOR={compressor!r} is not one of {sorted(COMPRESSOR_IDS)}")


def decompress(payload: bytes, compressor: str) -> bytes:
    if compressor == "zlib":
        return zlib.decompress(payload)
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(payload)
    if compressor == "lzma":
        return lzma.decompress(payload)
    import brotli

    return brotli.decompress(payload)


def pack(obj: dict[str, Any], compressor: str = "zlib") -> tuple[bytes, int]:
    """(artifact bytes, uncompressed torch.save length).

    A v1 object with zlib is written bare (the baseline's file); anything else gets the
    v2 header naming its compressor.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    payload = compress(raw, compressor)
    if compressor == "zlib" and obj.get("__quant_format__") == FORMAT:
        return payload, len(raw)
    header = HEADER_MAGIC + bytes((HEADER_VERSION, COMPRESSOR_IDS[compressor]))
    return header + payload, len(raw)


def _split_header(blob: bytes, source: str | Path) -> tuple[bytes, str]:
    """(payload, compressor) of an artifact file's bytes."""
    if not blob.startswith(HEADER_MAGIC):
        return blob, "zlib"
    version, code = blob[len(HEADER_MAGIC) : len(HEADER_MAGIC) + 2]
    if version != HEADER_VERSION:
        raise ArtifactError(f"{source} has artifact version {version}, expected {HEADER_VERSION}")
    names = {v: k for k, v in COMPRESSOR_IDS.items()}
    if code not in names:
        raise ArtifactError(f"{source} names an unknown compressor id {code}")
    return blob[len(HEADER_MAGIC) + 2 :], names[code]


def unpack(blob: bytes, source: str | Path = "artifact") -> dict[str, Any]:
    """The quantized object from artifact bytes; weights-only loading (no code runs)."""
    payload, compressor = _split_header(blob, source)
    if compressor == "brotli" and "brotli" not in available_compressors():
        raise ArtifactError(f"{source} is brotli-compressed; install the brotli package")
    try:
        raw = decompress(payload, compressor)
    except Exception as exc:  # each compressor raises its own error type
        raise ArtifactError(f"{source} is not {compressor}-compressed: {exc}") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt pickle
        raise ArtifactError(f"{source} does not hold a saved quantized model: {exc}") from None
    if not isinstance(obj, dict) or obj.get("__quant_format__") not in (FORMAT, FORMAT_V2):
        raise ArtifactError(f"{source} is not a {FORMAT} or {FORMAT_V2} artifact")
    return obj


def read_artifact(path: str | Path) -> dict[str, Any]:
    """The quantized object stored at `path` (the artifact file)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    return unpack(path.read_bytes(), path)
