"""The naive baseline GPT of the challenge.

Module construction order, parameter names and init are the baseline's on purpose:
they fix how the seeded RNG is consumed (so a seed gives the same initial weights),
the state-dict keys of the artifact, and the order in which Muon shares matrices
between ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Small per-channel gains and mixes: kept in fp32, optimized by Adam, never quantized.
CONTROL_TENSOR_PATTERNS = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)


@dataclass(frozen=True)
class ModelShape:
    """What it takes to rebuild the model; stored inside the artifact."""

    vocab_size: int
    num_layers: int
    model_dim: int
    num_heads: int
    num_kv_heads: int
    mlp_mult: int
    tie_embeddings: bool
    tied_embed_init_std: float
    logit_softcap: float
    rope_base: float
    qk_gain_init: float

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    """Weightless RMS normalization over the last dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """fp32 master weights, cast to the activation dtype (bf16 under autocast) per matmul."""

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class Rotary(nn.Module):
    """RoPE cos/sin tables, cached for the last sequence length and device."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cached_len = 0
        self._cos: Tensor | None = None
        self._sin: Tensor | None = None

    def forward(
        self, seq_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        stale = self._cos is None or self._cached_len != seq_len or self._cos.device != device
        if stale:
            positions = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(positions, self.inv_freq.to(device))  # [seq_len, head_dim/2]
            self._cos = freqs.cos()[None, None, :, :]  # [1, 1, seq_len, head_dim/2]
            self._sin = freqs.sin()[None, None, :, :]
            self._cached_len = seq_len
        return self._cos.to(dtype=dtype), self._sin.to(dtype=dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the head dimension of x [batch, heads, seq, head_dim]."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """GQA attention with QK RMSNorm, RoPE and a learned per-head query gain."""

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seq_len, dim = x.shape
        # [batch, seq, dim] -> [batch, heads, seq, head_dim]
        q = self.c_q(x).reshape(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = F.rms_norm(q, (q.size(-1),))
        k = F.rms_norm(k, (k.size(-1),))
        cos, sin = self.rotary(seq_len, x.device, q.dtype)
        q = apply_rotary(q, cos, sin) * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        k = apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        # [batch, heads, seq, head_dim] -> [batch, seq, dim]
        y = y.transpose(1, 2).contiguous().reshape(bsz, seq_len, dim)
        return self.proj(y)


class MLP(nn.Module):
    """relu(x W1)^2 W2, hidden width mlp_mult * dim."""

    def __init__(self, dim: int, mlp_mult: int):
        super().__init__()
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.proj = CastedLinear(mlp_mult * dim, dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    """Pre-norm block whose input is a learned per-channel mix of x and the embedding x0."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        mlp_mult: int,
        rope_base: float,
        qk_gain_init: float,
    ):
        super().__init__()
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(dim, num_heads, num_kv_heads, rope_base, qk_gain_init)
        self.mlp = MLP(dim, mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # [2, dim]: row 0 weighs the stream x, row 1 the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        x = x + self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(self.attn_norm(x))
        return x + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Embedding, U-Net of blocks (first half feeds skips to the second), softcapped tied head."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        dim = shape.model_dim
        self.tok_emb = nn.Embedding(shape.vocab_size, dim)
        self.num_encoder_layers = shape.num_layers // 2
        self.num_decoder_layers = shape.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                shape.num_heads,
                shape.num_kv_heads,
                shape.mlp_mult,
                shape.rope_base,
                shape.qk_gain_init,
            )
            for _ in range(shape.num_layers)
        )
        self.final_norm = RMSNorm()
        self.lm_head = (
            None if shape.tie_embeddings else CastedLinear(dim, shape.vocab_size, bias=False)
        )
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()

    def _init_weights(self) -> None:
        if self.shape.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.shape.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Mean cross-entropy (nats) of target_ids [batch, seq] given input_ids [batch, seq]."""
        x = F.rms_norm(self.tok_emb(input_ids), (self.shape.model_dim,))
        x0 = x
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
        x = self.final_norm(x).reshape(-1, x.size(-1))  # [batch * seq, dim]
        logits = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        cap = self.shape.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        return F.cross_entropy(logits.float(), target_ids.reshape(-1), reduction="mean")


def is_control_tensor(name: str) -> bool:
    return any(pattern in name for pattern in CONTROL_TENSOR_PATTERNS)


def build_model(shape: ModelShape, device: torch.device, mixed: bool | None = None) -> GPT:
    """The model on `device` with the baseline's parameter dtypes (`mixed`: default on CUDA).

    Mixed, as the baseline on CUDA: everything is cast to bf16, then linear weights and
    small/control parameters go back to fp32. That leaves the token embedding (and the
    RoPE frequency buffer) in bf16 and rounds every other initial weight through bf16;
    it is repeated exactly. Not mixed (CPU): everything stays fp32.
    """
    model = GPT(shape).to(device)
    if not (device.type == "cuda" if mixed is None else mixed):
        return model
    model = model.bfloat16()
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (param.ndim < 2 or is_control_tensor(name)) and param.dtype != torch.float32:
                param.data = param.data.float()
    return model
