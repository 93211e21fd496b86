"""Full-Hessian GPTQ (Frantar et al. 2022): quantize a weight matrix column by column and
push each column's rounding error onto the columns not yet quantized, weighted by the
inverse Hessian of the layer's inputs, so the layer's outputs (not its weights) stay
close.

For a linear layer y = x Wᵀ with inputs X [tokens, in], the output error of a quantized
Ŵ is ||X Wᵀ - X Ŵᵀ||² = Σ_rows (w - ŵ) H (w - ŵ)ᵀ with H = XᵀX [in, in]. `collect_hessians`
gathers H for every linear layer from a few training batches (forward hooks);
`gptq_quantize` uses it. The per-row scales are fixed before (the artifact format does
not change: int8 values and an fp16 scale per row), and columns go in order of decreasing
H diagonal (the most-used inputs first, "act order").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

BLOCK_COLUMNS = 128  # columns quantized together before their error reaches the rest
DAMP_RETRIES = 4  # each retry multiplies the damping by 10 when H is not positive definite


def collect_hessians(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    forward: Callable[[Tensor, Tensor], object],
) -> dict[str, Tensor]:
    """{weight name: H = Σ xᵀx / tokens} for every linear layer of `model`, summed over
    all ranks; the tied embedding gets the Hessian of the head's input (the final norm's
    output). `forward(x, y)` runs the model (e.g. under autocast)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor | None = None) -> None:
            x = _inputs[0] if output is None else output
            x = x.detach().reshape(-1, x.size(-1)).float()  # [tokens, in]
            if name not in sums:
                sums[name] = torch.zeros(x.size(1), x.size(1), device=x.device)
                counts[name] = 0
            sums[name].addmm_(x.T, x)
            counts[name] += x.size(0)

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(hook_for(f"{name}.weight")))
    if getattr(model, "lm_head", None) is None and hasattr(model, "final_norm"):
        handles.append(model.final_norm.register_forward_hook(hook_for("tok_emb.weight")))
    try:
        with torch.no_grad():
            for x, y in batches:
                forward(x, y)
    finally:
        for handle in handles:
            handle.remove()
    distributed = dist.is_available() and dist.is_initialized()
    hessians = {}
    for name in sorted(sums):
        total = torch.tensor(float(counts[name]), device=sums[name].device)
        if distributed:
            dist.all_reduce(sums[name])
            dist.all_reduce(total)
        hessians[name] = sums[name] / total.clamp_min(1.0)
    return hessians


def gptq_quantize(
    weight: Tensor, hessian: Tensor, scale: Tensor, bits: int, damp: float
) -> Tensor:
    """int8 values [rows, cols] in ±(2^(bits-1)-1) such that `values * scale[:, None]`
    keeps X Wᵀ close for inputs whose Hessian is `hessian` [cols, cols]. Runs on the
    Hessian's device; `damp` × mean(diag H) is added to the diagonal (more on failure)."""
    device = hessian.device
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().to(device=device, dtype=torch.float32).clone()
    h = hessian.to(dtype=torch.float32).clone()
    dead = torch.diag(h) == 0  # inputs that never fire: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    upper = _inverse_cholesky(h, damp)
    s = scale.to(device=device, dtype=torch.float32)  # [rows]
    q = torch.zeros_like(w)
    cols = w.size(1)
    for i1 in range(0, cols, BLOCK_COLUMNS):
        i2 = min(i1 + BLOCK_COLUMNS, cols)
        block = w[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        u = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = block[:, i]
            qc = torch.clamp(torch.round(column / s), -levels, levels)
            q[:, i1 + i] = qc
            err = (column - qc * s) / u[i, i]
            block[:, i:] -= err[:, None] * u[i, i:][None, :]
            errors[:, i] = err
        w[:, i2:] -= errors @ upper[i1:i2, i2:]
    return q[:, torch.argsort(order)].to(torch.int8).cpu().contiguous()


def _inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """The upper Cholesky factor of (H + λI)⁻¹, λ = damp × mean(diag H)."""
    eye = torch.eye(h.size(0), device=h.device)
    mean_diag = torch.diag(h).mean()
    damp = max(damp, 1e-6)
    for _ in range(DAMP_RETRIES):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp *= 10.0
    raise ValueError(f"GPTQ: the Hessian stays singular even with damping {damp / 10:g}")
