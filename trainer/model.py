"""The challenge's GPT: the naive baseline plus the records' techniques, each a switch.

Module construction order, parameter names and init are the baseline's on purpose:
they fix how the seeded RNG is consumed (so a seed gives the same initial weights),
the state-dict keys of the artifact, and the order in which Muon shares matrices
between ranks. Every switch defaults to off, and a module a switch adds is built after
the baseline's modules are initialized (so they draw the same RNG), so with all switches
off the model is exactly the baseline.

Switches (see docs/trainer.md): SmearGate, BigramHash, XSA on the last N layers,
partial RoPE, LN scale, OrthoInit, LeakyReLU(0.5)^2, parallel residuals on the last N
layers, depth recurrence (a range of layers run again with the same weights), and
straight-through fake quantization of the linear weights (late QAT, turned on by the
training loop).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Small per-channel gains and mixes: kept in fp32, optimized by Adam, never quantized.
# A parameter is one when its name contains one of these fragments; the baseline's list
# is CONTROL_TENSOR_NAME_PATTERNS (comma-separated, as the challenge's script reads it),
# and the tensors switches add are control tensors whatever that variable says.
BASELINE_CONTROL_PATTERNS = (
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
SWITCH_CONTROL_PATTERNS = ("smear_gate",)
CONTROL_TENSOR_PATTERNS = BASELINE_CONTROL_PATTERNS + SWITCH_CONTROL_PATTERNS
DEFAULT_CONTROL_PATTERNS = ",".join(BASELINE_CONTROL_PATTERNS)
BIGRAM_INIT_STD = 0.02
# Multipliers of the (previous, current) token-pair hash; any odd constants would do.
BIGRAM_HASH_PREV, BIGRAM_HASH_CUR = 27191, 36313


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
    # Switches; defaults are the baseline, so artifacts written before they existed load.
    mlp_activation: str = "relu2"
    smear_gate: bool = False
    bigram_buckets: int = 0
    bigram_dim: int = 128
    xsa_last_n: int = 0
    rope_dims: int = 0
    ln_scale: bool = False
    ortho_init: bool = False
    parallel_last_n: int = 0
    recur_start: int = 0
    recur_layers: int = 0
    recur_repeats: int = 1
    control_tensor_name_patterns: str = DEFAULT_CONTROL_PATTERNS

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    """Weightless RMS normalization over the last dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))


def fake_quantize(w: Tensor, bits: int, sdclip_k: float = 0.0) -> Tensor:
    """w rounded to `bits`-bit per-row levels in the forward pass, the identity in the
    backward pass (straight-through estimator). The clip is the row's max |w|, or with
    `sdclip_k` > 0 k standard deviations of the row, the export's SDClip grid."""
    levels = 2 ** (bits - 1) - 1
    w32 = w.float()
    if sdclip_k > 0:
        clip = sdclip_k * w32.std(dim=-1, keepdim=True, correction=0)  # [rows, 1]
    else:
        clip = w32.abs().amax(dim=-1, keepdim=True)  # [rows, 1]
    scale = (clip / levels).clamp_min(1e-12)  # [rows, 1]
    q = torch.clamp(torch.round(w32 / scale), -levels, levels) * scale
    return w + (q.to(w.dtype) - w).detach()


class CastedLinear(nn.Linear):
    """fp32 master weights, cast to the activation dtype (bf16 under autocast) per matmul."""

    qat_bits = 0  # > 0: fake-quantize the weight to this many bits (late QAT)
    qat_sdclip_k = 0.0  # > 0: on the SDClip grid the export will use

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        weight = self.weight
        if self.qat_bits:
            weight = fake_quantize(weight, self.qat_bits, self.qat_sdclip_k)
        return F.linear(x, weight.to(x.dtype), bias)


class Rotary(nn.Module):
    """RoPE cos/sin tables, cached for the last sequence length and device.

    Positions and frequencies are in the buffer's dtype: bf16 on CUDA, where the whole
    model is cast to bf16 once (as the baseline does, so its tables are bf16 too).
    Under torch.compile the tables are computed inside the graph instead: no Python-side
    cache to guard on, and dynamo cannot trace the inference-mode check below.
    """

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
        if torch.compiler.is_compiling():
            cos, sin = self._tables(seq_len, device)
            return cos.to(dtype=dtype), sin.to(dtype=dtype)
        cos, sin = self._cos, self._sin
        # Tables built under inference_mode (validation) cannot be saved for backward.
        if (cos is None or sin is None or self._cached_len != seq_len or cos.device != device
                or (cos.is_inference() and not torch.is_inference_mode_enabled())):
            cos, sin = self._tables(seq_len, device)
            self._cos, self._sin, self._cached_len = cos, sin, seq_len
        return cos.to(dtype=dtype), sin.to(dtype=dtype)

    def _tables(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos and sin, each [1, 1, seq_len, head_dim/2]."""
        positions = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(positions, self.inv_freq.to(device))  # [seq_len, head_dim/2]
        return freqs.cos()[None, None, :, :], freqs.sin()[None, None, :, :]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the head dimension of x [batch, heads, seq, head_dim]."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """GQA attention with QK RMSNorm, RoPE and a learned per-head query gain.

    rope_dims > 0 rotates only the first rope_dims of each head (partial RoPE); xsa
    removes from each head's output its component along that head's own value vector
    (exclusive self-attention), so the layer carries context rather than the token itself.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        rope_base: float,
        qk_gain_init: float,
        rope_dims: int = 0,
        xsa: bool = False,
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
        self.rope_dims = rope_dims or self.head_dim
        self.rotary = Rotary(self.rope_dims, rope_base)
        self.xsa = xsa

    def forward(self, x: Tensor) -> Tensor:
        bsz, seq_len, dim = x.shape
        # [batch, seq, dim] -> [batch, heads, seq, head_dim]
        q = self.c_q(x).reshape(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = F.rms_norm(q, (q.size(-1),))
        k = F.rms_norm(k, (k.size(-1),))
        cos, sin = self.rotary(seq_len, x.device, q.dtype)
        q = self._rotate(q, cos, sin) * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        k = self._rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        if self.xsa:
            y = self._exclude_self(y, v)
        # [batch, heads, seq, head_dim] -> [batch, seq, dim]
        y = y.transpose(1, 2).contiguous().reshape(bsz, seq_len, dim)
        return self.proj(y)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.rope_dims == self.head_dim:
            return apply_rotary(x, cos, sin)
        r = self.rope_dims
        return torch.cat((apply_rotary(x[..., :r], cos, sin), x[..., r:]), dim=-1)

    def _exclude_self(self, y: Tensor, v: Tensor) -> Tensor:
        """y [batch, heads, seq, head_dim] minus its projection on the unit value of its
        kv head (each kv head serves heads/kv_heads query heads)."""
        bsz, heads, seq_len, head_dim = y.shape
        group = heads // self.num_kv_heads
        y = y.reshape(bsz, self.num_kv_heads, group, seq_len, head_dim)
        unit = F.normalize(v, dim=-1)[:, :, None]  # [batch, kv_heads, 1, seq, head_dim]
        y = y - (y * unit).sum(dim=-1, keepdim=True) * unit
        return y.reshape(bsz, heads, seq_len, head_dim)


class MLP(nn.Module):
    """act(x W1)^2 W2 with act relu (baseline) or leaky_relu(0.5); hidden mlp_mult * dim."""

    def __init__(self, dim: int, mlp_mult: int, activation: str = "relu2"):
        super().__init__()
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.proj = CastedLinear(mlp_mult * dim, dim, bias=False)
        self.proj._zero_init = True
        self.leaky = activation == "leaky_relu2"

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, 0.5) if self.leaky else torch.relu(h)
        return self.proj(h.square())


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
        *,
        activation: str = "relu2",
        rope_dims: int = 0,
        xsa: bool = False,
        norm_scale: float = 1.0,
        parallel: bool = False,
    ):
        super().__init__()
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(
            dim, num_heads, num_kv_heads, rope_base, qk_gain_init, rope_dims, xsa
        )
        self.mlp = MLP(dim, mlp_mult, activation)
        self.norm_scale = norm_scale  # LN scale: 1/sqrt(layer + 1), else 1
        self.parallel = parallel  # attention and MLP both read the block's mixed input
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # [2, dim]: row 0 weighs the stream x, row 1 the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        attn_in, mlp_norm = self.attn_norm(x), self.mlp_norm
        if self.norm_scale != 1.0:
            attn_in = attn_in * self.norm_scale
        if self.parallel:
            attn_out = self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(attn_in)
            return x + attn_out + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(attn_in)
        x = x + self.attn_scale.to(dtype=x.dtype)[None, None, :] * self.attn(attn_in)
        mlp_in = mlp_norm(x) if self.norm_scale == 1.0 else mlp_norm(x) * self.norm_scale
        return x + self.mlp_scale.to(dtype=x.dtype)[None, None, :] * self.mlp(mlp_in)


def layer_order(shape: ModelShape, looping: bool) -> list[int]:
    """The blocks in the order they run: with depth recurrence (and `looping`), the range
    recur_start .. recur_start + recur_layers - 1 runs 1 + recur_repeats times in a row,
    e.g. 11 layers, range 3-5, 2 repeats: 0 1 2 3 4 5 3 4 5 3 4 5 6 7 8 9 10."""
    order = list(range(shape.num_layers))
    if not (looping and shape.recur_layers):
        return order
    start, end = shape.recur_start, shape.recur_start + shape.recur_layers
    return order[:end] + order[start:end] * shape.recur_repeats + order[end:]


class GPT(nn.Module):
    """Embedding, U-Net of blocks (first half feeds skips to the second), softcapped tied head.

    With depth recurrence the U-Net is over the layers as they run (`layer_order`): its
    first half feeds skips to its second half, so the skip weights are sized for the
    looped order and the unlooped order uses the first of them.
    """

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        dim = shape.model_dim
        self.tok_emb = nn.Embedding(shape.vocab_size, dim)
        self.looping = True  # the training loop turns the loop off until RECUR_START_FRAC
        ran = len(layer_order(shape, looping=True))
        num_skips = min(ran // 2, ran - ran // 2)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, dim, dtype=torch.float32))
        first_xsa = shape.num_layers - shape.xsa_last_n
        first_parallel = shape.num_layers - shape.parallel_last_n
        self.blocks = nn.ModuleList(
            Block(
                dim,
                shape.num_heads,
                shape.num_kv_heads,
                shape.mlp_mult,
                shape.rope_base,
                shape.qk_gain_init,
                activation=shape.mlp_activation,
                rope_dims=shape.rope_dims,
                xsa=i >= first_xsa,
                norm_scale=(i + 1) ** -0.5 if shape.ln_scale else 1.0,
                parallel=i >= first_parallel,
            )
            for i in range(shape.num_layers)
        )
        self.final_norm = RMSNorm()
        self.lm_head = (
            None if shape.tie_embeddings else CastedLinear(dim, shape.vocab_size, bias=False)
        )
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()
        # Switch-added modules come after the baseline's init, so those draw the same RNG.
        self.smear_gate = nn.Parameter(torch.zeros(dim)) if shape.smear_gate else None
        self.bigram_emb: nn.Embedding | None = None
        self.bigram_proj: CastedLinear | None = None
        if shape.bigram_buckets:
            self.bigram_emb = nn.Embedding(shape.bigram_buckets, shape.bigram_dim)
            nn.init.normal_(self.bigram_emb.weight, std=BIGRAM_INIT_STD)
            self.bigram_proj = CastedLinear(shape.bigram_dim, dim, bias=False)
            nn.init.zeros_(self.bigram_proj.weight)  # starts as a no-op

    def _init_weights(self) -> None:
        if self.shape.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.shape.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)
        if self.shape.ortho_init:
            self._orthogonal_blocks()

    def _block_linears(self) -> list[CastedLinear]:
        return [m for m in self.blocks.modules() if isinstance(m, CastedLinear)]

    def _orthogonal_blocks(self) -> None:
        # Output projections start small rather than zero: 1/sqrt(2 L) keeps the residual
        # stream's variance independent of depth.
        out_scale = (2 * self.shape.num_layers) ** -0.5
        with torch.no_grad():
            for module in self._block_linears():
                nn.init.orthogonal_(module.weight)
                if getattr(module, "_zero_init", False):
                    module.weight.mul_(out_scale)

    def bigram_buckets(self, input_ids: Tensor) -> Tensor:
        """Hash bucket of each (previous, current) pair [batch, seq]; position 0 of a
        sequence has no previous token and gets the last bucket."""
        last = self.shape.bigram_buckets - 1
        prev, cur = input_ids[:, :-1], input_ids[:, 1:]
        pairs = torch.remainder((prev * BIGRAM_HASH_PREV) ^ (cur * BIGRAM_HASH_CUR), last)
        return torch.cat((torch.full_like(input_ids[:, :1], last), pairs), dim=1)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Normalized input embedding [batch, seq, dim], with BigramHash and SmearGate."""
        x = self.tok_emb(input_ids)
        if self.bigram_emb is not None and self.bigram_proj is not None:  # made together
            x = x + self.bigram_proj(self.bigram_emb(self.bigram_buckets(input_ids)).to(x.dtype))
        x = F.rms_norm(x, (self.shape.model_dim,))
        if self.smear_gate is not None:
            gate = torch.sigmoid(self.smear_gate.to(dtype=x.dtype))[None, None, :]
            prev = F.pad(x[:, :-1], (0, 0, 1, 0))  # the previous token's embedding, 0 at t=0
            x = x + gate * (prev - x)
        return x

    def set_qat_bits(self, bits: int, sdclip_k: float = 0.0) -> None:
        """Fake-quantize every block matrix to `bits` (0: off) from the next forward on,
        clipped as the export will (`sdclip_k` > 0: SDClip)."""
        for module in self._block_linears():
            module.qat_bits, module.qat_sdclip_k = bits, sdclip_k

    def forward(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy (nats) of target_ids [batch, seq] given input_ids [batch, seq]:
        the mean, or with reduction="none" one loss per target [batch * seq]."""
        if self.smear_gate is None and self.bigram_emb is None:
            x = F.rms_norm(self.tok_emb(input_ids), (self.shape.model_dim,))
        else:
            x = self.embed(input_ids)
        x0 = x
        order = layer_order(self.shape, self.looping)
        encoder, decoder = order[: len(order) // 2], order[len(order) // 2 :]
        skips: list[Tensor] = []
        for layer in encoder:
            x = self.blocks[layer](x, x0)
            skips.append(x)
        for i, layer in enumerate(decoder):
            if skips:
                x = x + self.skip_weights[i].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[layer](x, x0)
        x = self.final_norm(x).reshape(-1, x.size(-1))  # [batch * seq, dim]
        logits = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        cap = self.shape.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        return F.cross_entropy(logits.float(), target_ids.reshape(-1), reduction=reduction)


def name_patterns(text: str) -> tuple[str, ...]:
    """A comma-separated pattern variable as the baseline splits it (empty items dropped),
    plus the switches' control tensors."""
    return tuple(p for p in text.split(",") if p) + SWITCH_CONTROL_PATTERNS


def is_control_tensor(name: str, patterns: tuple[str, ...] = CONTROL_TENSOR_PATTERNS) -> bool:
    return any(pattern in name for pattern in patterns)


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
    patterns = name_patterns(shape.control_tensor_name_patterns)
    with torch.no_grad():
        for name, param in model.named_parameters():
            small = param.ndim < 2 or is_control_tensor(name, patterns)
            if small and param.dtype != torch.float32:
                param.data = param.data.float()
    return model
