"""The baseline's artifact: int8 weights, torch.save, zlib level 9.

Quantized object (a dict, saved with torch.save):
  "__quant_format__": FORMAT
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
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainer.model import is_control_tensor

FORMAT = "int8_clean_per_row_v1"
KEEP_FLOAT_MAX_NUMEL = 65_536
KEEP_FLOAT_DTYPE = torch.float16
PER_ROW_SCALE_DTYPE = torch.float16
CLIP_QUANTILE = 99.99984 / 100.0  # clip each row at this quantile of |w|
ZLIB_LEVEL = 9


class ArtifactError(ValueError):
    """An artifact that cannot be read back; the message names the file."""


def _nbytes(t: Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


def quantize_state_dict(state_dict: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, int]]:
    """(quantized object, stats); stats count parameters and payload bytes."""
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
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= KEEP_FLOAT_MAX_NUMEL:
            passthrough[name] = _keep_float(name, t, orig_dtypes)
        else:
            q, s = quantize_tensor(t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name] = q, s
            dtypes[name] = _dtype_name(t.dtype)
            stats["int8_payload_bytes"] += _nbytes(q) + _nbytes(s)
            continue
        stats["int8_payload_bytes"] += _nbytes(passthrough[name])
    obj: dict[str, Any] = {
        "__quant_format__": FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj, stats


def _keep_float(name: str, t: Tensor, orig_dtypes: dict[str, str]) -> Tensor:
    # Control tensors stay exact in fp32; other small fp32/bf16 tensors are stored as fp16.
    if is_control_tensor(name):
        return t.float().contiguous()
    if t.dtype in (torch.float32, torch.bfloat16):
        orig_dtypes[name] = _dtype_name(t.dtype)
        return t.to(dtype=KEEP_FLOAT_DTYPE).contiguous()
    return t


def dequantize_state_dict(obj: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict the artifact stands for: int8 * scale in the original dtype."""
    if obj.get("__quant_format__") != FORMAT:
        raise ArtifactError(
            f"unknown quant format {obj.get('__quant_format__')!r}, expected {FORMAT!r}"
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


def pack(obj: dict[str, Any]) -> tuple[bytes, int]:
    """(zlib-compressed torch.save bytes, uncompressed length)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    return zlib.compress(raw, level=ZLIB_LEVEL), len(raw)


def unpack(blob: bytes, source: str | Path = "artifact") -> dict[str, Any]:
    """The quantized object from compressed bytes; weights-only loading (no code runs)."""
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise ArtifactError(f"{source} is not zlib-compressed: {exc}") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt pickle
        raise ArtifactError(f"{source} does not hold a saved quantized model: {exc}") from None
    if not isinstance(obj, dict) or obj.get("__quant_format__") != FORMAT:
        raise ArtifactError(f"{source} is not a {FORMAT} artifact")
    return obj


def read_artifact(path: str | Path) -> dict[str, Any]:
    """The quantized object stored at `path` (the artifact file)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    return unpack(path.read_bytes(), path)
