"""The training run: one linear script, the baseline's loop, sectioned by banners.

`run(config, out_dir)` is what `python -m trainer train` and `torchrun ... -m trainer
train` call. Rank 0 writes train.log, metrics.jsonl, results.json and the artifact into
`out_dir`; every rank trains and scores its share.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import contract
from trainer.config import MICRO_BATCHES
from trainer.data import (
    TRAIN_PATTERN,
    VAL_PATTERN,
    DistributedTokenLoader,
    find_shards,
    load_validation_tokens,
)
from trainer.evaluate import (
    ByteTables,
    TTTSettings,
    ValResult,
    autocast_for,
    build_byte_tables,
    evaluate,
    evaluate_sliding,
    evaluate_ttt,
    load_tokenizer,
)
from trainer.gptq import collect_hessians
from trainer.model import ModelShape, build_model, layer_order
from trainer.muon import build_optimizers, compile_newton_schulz
from trainer.quantize import (
    ArtifactError,
    QuantSpec,
    dequantize_state_dict,
    pack,
    quantize_state_dict,
    read_artifact,
)

SCORE_TAG = "final_int8_zlib_roundtrip"  # the baseline's tag (int8 + zlib, standard eval)
PACKAGE_DIR = Path(__file__).resolve().parent


def score_tag(spec: QuantSpec, eval_mode: str, ttt: bool = False) -> str:
    """The community's tag of the final line, e.g. final_int6_sliding_window, legal_ttt."""
    if ttt:
        return "legal_ttt"
    if eval_mode == "sliding":
        return f"final_int{spec.bits}_sliding_window"
    return f"final_int{spec.bits}_{spec.compressor}_roundtrip"


# ======================================================================================
# Run context: who am I, on what device. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK.
# ======================================================================================


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def grad_accum_steps(self) -> int:
        # The baseline always splits a batch into 8 micro-batches over ranks x accumulation.
        return MICRO_BATCHES // self.world_size


class LaunchError(ValueError):
    """A launch environment the trainer cannot use; the message names the variable."""


def start_launch(env: dict[str, str]) -> Launch:
    """Read the torchrun variables, pick the device and join the process group."""
    distributed = "RANK" in env and "WORLD_SIZE" in env
    rank = int(env.get("RANK", "0"))
    world_size = int(env.get("WORLD_SIZE", "1"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if world_size <= 0 or MICRO_BATCHES % world_size:
        raise LaunchError(f"WORLD_SIZE={world_size} must divide {MICRO_BATCHES}")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if distributed:
            dist.init_process_group(backend="nccl", device_id=device)
            dist.barrier()
        _fast_cuda_math()
    else:
        device = torch.device("cpu")
        if distributed:
            dist.init_process_group(backend="gloo")
    return Launch(rank, world_size, local_rank, device, distributed)


def _fast_cuda_math() -> None:
    # The baseline's settings: tf32 matmuls, flash attention only.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_math_sdp(False)


# Compiles of the model in one run: a graph per mode the loop enters (loop on, late QAT),
# for periodic and final evaluation (inference, a short last batch, per-token losses) and
# for TTT's scoring and training: about ten, over torch's default limit of 8 a function,
# past which fullgraph=True fails the run instead of falling back.
RECOMPILE_LIMIT = 64


def compile_fullgraph(model: nn.Module, backend: Any = "inductor") -> nn.Module:
    """torch.compile as the baseline (dynamic=False, fullgraph=True), recompile limit raised."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(model, backend=backend, dynamic=False, fullgraph=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ======================================================================================
# Run log: train.log for people (community line formats), metrics.jsonl for the worker.
# ======================================================================================


class RunLog:
    """Rank 0 appends; other ranks' calls do nothing."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.text_path = out_dir / contract.TRAIN_LOG
        self.metrics_path = out_dir / contract.METRICS
        self._phase_start: dict[str, float] = {}

    def line(self, message: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            print(message, flush=True)
        with open(self.text_path, "a", encoding="utf-8") as f:
            print(message, file=f)

    def event(self, name: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": name, "time": time.time(), **fields}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def phase(self, phase: str, state: str) -> None:
        now = time.perf_counter()
        if state == "start":
            self._phase_start[phase] = now
        elapsed = 1000.0 * (now - self._phase_start.get(phase, now))
        self.event(contract.EVENT_PHASE, phase=phase, state=state, elapsed_ms=elapsed)


# ======================================================================================
# Facts for results.json: code counted, hardware, library versions.
# ======================================================================================


def code_files() -> list[Path]:
    """What a pod needs to run the trainer: trainer/*.py and trainer/schema.json, sorted."""
    files = [*PACKAGE_DIR.glob("*.py"), PACKAGE_DIR / contract.SCHEMA]
    return sorted(files, key=lambda p: p.name)


def counted_code() -> dict[str, bytes]:
    """The code this run counts, by path: the single-file script when running from one
    (TRAINER_BUNDLE, set by it), else the package's files as `trainer/<name>`."""
    bundle = os.environ.get(contract.BUNDLE_ENV)
    if bundle:
        return {Path(bundle).name: Path(bundle).read_bytes()}
    return {f"{PACKAGE_DIR.name}/{path.name}": path.read_bytes() for path in code_files()}


def hardware(launch: Launch) -> dict[str, Any]:
    cuda = launch.device.type == "cuda"
    return {
        "device": launch.device.type,
        "gpu_name": torch.cuda.get_device_name(launch.device) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "world_size": launch.world_size,
        "nvidia_smi": nvidia_smi(),
    }


def nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    done = subprocess.run([exe], capture_output=True, text=True, check=False, timeout=60)
    return done.stdout or None


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sentencepiece": spm.__version__,
    }


# ======================================================================================
# Schedule: constant LR, then a linear warmdown over the last WARMDOWN_ITERS steps —
# counted in wall-clock time (iterations x measured step time) when a cap is set.
# ======================================================================================


def lr_scale(config: Any, step: int, elapsed_ms: float, cap_ms: float | None) -> float:
    """The LR multiplier: the warmdown, lifted onto the floor MIN_LR_SCALE when set."""
    scale = _warmdown(config, step, elapsed_ms, cap_ms)
    floor = config.min_lr_scale
    return scale if floor <= 0 else floor + (1.0 - floor) * scale


def _warmdown(config: Any, step: int, elapsed_ms: float, cap_ms: float | None) -> float:
    if config.warmdown_frac > 0:
        # The last WARMDOWN_FRAC of the wall-clock budget (of ITERATIONS without a cap).
        if cap_ms is None:
            span = config.warmdown_frac * config.iterations
            return min(max(config.iterations - step, 0) / max(span, 1e-9), 1.0)
        span_ms = config.warmdown_frac * cap_ms
        return min(max(cap_ms - elapsed_ms, 0.0) / max(span_ms, 1e-9), 1.0)
    if config.warmdown_iters <= 0:
        return 1.0
    if cap_ms is None:
        start = max(config.iterations - config.warmdown_iters, 0)
        if start <= step < config.iterations:
            return max((config.iterations - step) / max(config.warmdown_iters, 1), 0.0)
        return 1.0
    warmdown_ms = config.warmdown_iters * (elapsed_ms / max(step, 1))
    remaining_ms = max(cap_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


class WeightAverage:
    """Exponential moving average of the weights (fp32 copies), updated every step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            self.shadow[name].lerp_(value.detach().float(), 1.0 - self.decay)

    def apply_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model`, each in the dtype of its parameter."""
        current = model.state_dict()
        model.load_state_dict({k: v.to(current[k].dtype) for k, v in self.shadow.items()})


def logs_train_step(every: int, step: int, stopping: bool) -> bool:
    """Whether step `step` (1-based, just taken) gets a train_loss line: the first ten,
    every TRAIN_LOG_EVERY-th and the last; TRAIN_LOG_EVERY=0 logs none."""
    return every > 0 and (step <= 10 or step % every == 0 or stopping)


def muon_momentum(config: Any, step: int) -> float:
    warm = config.muon_momentum_warmup_steps
    frac = min(step / warm, 1.0) if warm > 0 else 1.0
    return (1 - frac) * config.muon_momentum_warmup_start + frac * config.muon_momentum


# ======================================================================================
# The run.
# ======================================================================================


def run(
    config: Any, out_dir: str | Path, env: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """Train, export, score; return the results dict on rank 0 (None elsewhere)."""
    env = dict(os.environ if env is None else env)
    out = Path(out_dir)
    launch = start_launch(env)
    try:
        results = _run(config, out, launch)
        if launch.distributed:
            # Every rank reaches here before any tears its group down: gloo aborts a rank
            # whose peer destroyed the group while its last collective was still closing.
            dist.barrier()
        return results
    finally:
        if launch.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: Any, out: Path, launch: Launch) -> dict[str, Any] | None:
    spec = QuantSpec.from_config(config)
    artifact_file = contract.artifact_name(spec.bits)
    if launch.master:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (contract.TRAIN_LOG, contract.METRICS, contract.RESULTS, artifact_file,
                      contract.RAW_MODEL):
            (out / stale).unlink(missing_ok=True)
    if launch.distributed:
        dist.barrier()
    log = RunLog(out, launch.master)
    device = launch.device
    cuda = device.type == "cuda"
    compile_model = cuda and config.torch_compile
    run_id = config.run_id or str(uuid.uuid4())
    log.phase("setup", "start")

    # --- header: what ran, where, with which libraries ------------------------------
    hw = hardware(launch)
    lib = versions()
    log.line(f"run_id:{run_id}")
    log.line(f"config:{json.dumps(config.as_dict(), sort_keys=True)}")
    log.line(" ".join(f"{k}:{v}" for k, v in lib.items()))
    log.line(
        f"device:{hw['device']} gpu_name:{hw['gpu_name']} gpu_count:{hw['gpu_count']} "
        f"world_size:{launch.world_size}"
    )
    if hw["nvidia_smi"]:
        log.line(hw["nvidia_smi"], console=False)

    # --- seeds: python, numpy, torch (CPU and every GPU), as the baseline -----------
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if cuda:
        torch.cuda.manual_seed_all(config.seed)

    # --- tokenizer, validation tokens, byte tables ----------------------------------
    sp = load_tokenizer(config.tokenizer_path, config.vocab_size)
    train_files = find_shards(config.data_path, TRAIN_PATTERN)
    val_files = find_shards(config.data_path, VAL_PATTERN)
    val_tokens = load_validation_tokens(val_files, config.train_seq_len, config.val_max_tokens)
    tables = build_byte_tables(sp, config.vocab_size).to(device)
    log.line(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={config.tokenizer_path}")
    log.line(
        f"train_loader:dataset:{Path(config.data_path).resolve().name} train_shards:{len(train_files)}"
    )
    log.line(
        # The pattern as the baseline prints it: DATA_PATH joined as given, not normalized.
        f"val_loader:shards pattern={os.path.join(config.data_path, VAL_PATTERN)} "
        f"tokens:{val_tokens.numel() - 1}"
    )

    # --- model and optimizers --------------------------------------------------------
    shape = ModelShape.from_config(config)
    base_model = build_model(shape, device)
    if compile_model:
        compile_newton_schulz()
        compiled: nn.Module = compile_fullgraph(base_model)
    else:
        compiled = base_model
    model: nn.Module = compiled
    if launch.distributed:
        ids = [launch.local_rank] if cuda else None
        model = DDP(compiled, device_ids=ids, broadcast_buffers=False)
    opts = build_optimizers(base_model, config, fused=cuda or _cpu_fused_adam())
    grad_accum = launch.grad_accum_steps
    token_lr = config.tied_embed_lr if config.tie_embeddings else config.embed_lr
    log.line(f"model_params:{sum(p.numel() for p in base_model.parameters())}")
    log.line(f"world_size:{launch.world_size} grad_accum_steps:{grad_accum}")
    if cuda:
        log.line("sdp_backends:cudnn=False flash=True mem_efficient=False math=False")
    log.line(f"attention_mode:gqa num_heads:{config.num_heads} num_kv_heads:{config.num_kv_heads}")
    log.line(
        f"tie_embeddings:{config.tie_embeddings} embed_lr:{token_lr} "
        f"head_lr:{config.head_lr if base_model.lm_head is not None else 0.0} "
        f"matrix_lr:{config.matrix_lr} scalar_lr:{config.scalar_lr}"
    )
    log.line(
        f"train_batch_tokens:{config.train_batch_tokens} train_seq_len:{config.train_seq_len} "
        f"iterations:{config.iterations} warmup_steps:{config.warmup_steps} "
        f"max_wallclock_seconds:{config.max_wallclock_seconds:.3f}"
    )
    log.line(f"seed:{config.seed}")
    log.phase("setup", "end")

    def new_loader() -> DistributedTokenLoader:
        return DistributedTokenLoader(train_files, launch.rank, launch.world_size, device)

    def train_step(loader: DistributedTokenLoader) -> torch.Tensor:
        """Forward/backward over the micro-batches; returns the mean loss (no optimizer step)."""
        total = torch.zeros((), device=device)
        for micro in range(grad_accum):
            if launch.distributed:
                # All-reduce gradients once, on the last micro-batch.
                model.require_backward_grad_sync = micro == grad_accum - 1
            x, y = loader.next_batch(config.train_batch_tokens, config.train_seq_len, grad_accum)
            with autocast_for(device):
                loss = model(x, y)
            total += loss.detach()
            (loss * (1.0 / grad_accum)).backward()
        return total / grad_accum

    def validate(deadline: float | None = None) -> Any:
        """Non-overlapping evaluation of `model` on the validation split (stops at deadline)."""
        return evaluate(
            model,
            val_tokens,
            tables,
            seq_len=config.train_seq_len,
            local_batch_tokens=config.val_batch_size // MICRO_BATCHES,
            rank=launch.rank,
            world_size=launch.world_size,
            device=device,
            deadline=deadline,
        )

    # ==================================================================================
    # Warmup: a few real steps to trigger compilation, then weights, optimizer state and
    # data stream go back to their start so measured training begins from the true init.
    # ==================================================================================
    loader = new_loader()
    if config.warmup_steps > 0:
        log.phase("warmup", "start")
        initial_weights = {k: v.detach().cpu().clone() for k, v in base_model.state_dict().items()}
        initial_opt_states = [copy.deepcopy(opt.state_dict()) for opt in opts.optimizers]
        model.train()
        for i in range(config.warmup_steps):
            opts.zero_grad()
            train_step(loader)
            opts.step()
            opts.zero_grad()
            if config.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == config.warmup_steps:
                log.line(f"warmup_step:{i + 1}/{config.warmup_steps}")
        base_model.load_state_dict(initial_weights, strict=True)
        for opt, state in zip(opts.optimizers, initial_opt_states, strict=True):
            opt.load_state_dict(state)
        opts.zero_grad()
        if launch.distributed:
            model.require_backward_grad_sync = True
        loader = new_loader()
        log.phase("warmup", "end")

    # ==================================================================================
    # Training loop. train_time counts only training: the timer pauses for validation.
    # ==================================================================================
    log.phase("train", "start")
    ema = WeightAverage(base_model, config.ema_decay) if config.ema_decay > 0 else None
    qat_on = False
    cap_ms = training_cap_ms(config)
    if config.gptq and cap_ms is not None:
        log.line(
            f"gptq:reserving {1000.0 * config.gptq_reserve_s:.0f}ms from training budget, "
            f"effective={cap_ms:.0f}ms"
        )
    looping_from = config.recur_start_frac if shape.recur_layers else None
    if looping_from:
        base_model.looping = False  # turned on once training has used that fraction
    train_ms = 0.0
    stop_after: int | None = None
    pre_quant = None
    step = 0
    sync(device)
    t0 = time.perf_counter()
    while True:
        last_step = step == config.iterations or (stop_after is not None and step >= stop_after)
        if last_step or (config.val_loss_every > 0 and step % config.val_loss_every == 0):
            sync(device)
            train_ms += 1000.0 * (time.perf_counter() - t0)
            pre_quant = validate()
            log.line(
                f"step:{step}/{config.iterations} val_loss:{pre_quant.val_loss:.4f} "
                f"val_bpb:{pre_quant.val_bpb:.4f} train_time:{train_ms:.0f}ms "
                f"step_avg:{train_ms / max(step, 1):.2f}ms"
            )
            log.event(
                contract.EVENT_VAL,
                step=step,
                val_loss=pre_quant.val_loss,
                val_bpb=pre_quant.val_bpb,
                train_time_ms=train_ms,
            )
            sync(device)
            t0 = time.perf_counter()
        if last_step:
            if stop_after is not None and step < config.iterations:
                log.line(
                    f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms "
                    f"step:{step}/{config.iterations}"
                )
            break

        elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        scale = lr_scale(config, step, elapsed_ms, cap_ms)
        if looping_from and not base_model.looping:
            done = elapsed_ms / cap_ms if cap_ms is not None else step / config.iterations
            if done >= looping_from:
                base_model.looping = True
                log.line(
                    f"layer_loop:enabled step:{step} frac:{done:.3f} "
                    f"order:{layer_order(shape, looping=True)}"
                )
        if not qat_on and scale < config.late_qat_threshold:
            qat_on = True
            base_model.set_qat_bits(spec.bits, spec.sdclip_k)
            log.line(f"late_qat:enabled step:{step} scale:{scale:.4f} bits:{spec.bits}")
        opts.zero_grad()
        train_loss = train_step(loader)
        opts.set_muon_momentum(muon_momentum(config, step))
        opts.scale_lr(scale)
        if config.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(base_model.parameters(), config.grad_clip_norm)
        opts.step()
        opts.zero_grad()
        if ema is not None:
            ema.update(base_model)
        step += 1

        approx_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        if logs_train_step(config.train_log_every, step, stop_after is not None):
            loss_value = train_loss.item()
            log.line(
                f"step:{step}/{config.iterations} train_loss:{loss_value:.4f} "
                f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms"
            )
            log.event(
                contract.EVENT_TRAIN_STEP,
                step=step,
                train_loss=loss_value,
                train_time_ms=approx_ms,
                step_avg_ms=approx_ms / step,
            )
        reached_cap = cap_ms is not None and approx_ms >= cap_ms
        if launch.distributed and cap_ms is not None:
            # Every rank must stop after the same step.
            flag = torch.tensor(int(reached_cap), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached_cap = bool(flag.item())
        if stop_after is None and reached_cap:
            stop_after = step
    log.phase("train", "end")
    base_model.set_qat_bits(0)
    base_model.looping = True  # the exported model always runs the loop
    if ema is not None:
        # The average is what gets exported; its own pre-quantization score is the diagnostic.
        log.line("ema:applying EMA weights")
        ema.apply_to(base_model)
        pre_quant = validate()
        log.line(
            f"DIAGNOSTIC post_ema val_loss:{pre_quant.val_loss:.4f} "
            f"val_bpb:{pre_quant.val_bpb:.4f}"
        )
    if cuda:
        log.line(
            f"peak memory allocated: {torch.cuda.max_memory_allocated() // 1024 // 1024} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 1024 // 1024} MiB"
        )

    # ==================================================================================
    # GPTQ calibration: the Hessian of every linear layer's inputs over training batches
    # that follow the last step. It reads training data, so it is training time: the
    # GPTQ_RESERVE_S kept from the cap is for it.
    # ==================================================================================
    hessians, calibration_s = None, 0.0
    if config.gptq:
        log.phase("gptq_calibration", "start")
        sync(device)
        t_calibration = time.perf_counter()

        def calibration_batches():
            for _ in range(config.gptq_calibration_batches):
                yield loader.next_batch(config.train_batch_tokens, config.train_seq_len, grad_accum)

        def calibration_forward(x: torch.Tensor, y: torch.Tensor) -> None:
            with autocast_for(device):
                base_model(x, y)

        hessians = collect_hessians(base_model, calibration_batches(), calibration_forward)
        sync(device)
        calibration_s = time.perf_counter() - t_calibration
        log.line(f"gptq:calibrated {len(hessians)} layers in {calibration_s:.1f}s")
        used_ms = train_ms + 1000.0 * calibration_s
        if cap_ms is not None and used_ms > 1000.0 * config.max_wallclock_seconds:
            log.line(
                f"gptq:over_budget train_time+calibration:{used_ms:.0f}ms > "
                f"max_wallclock_seconds:{config.max_wallclock_seconds:.0f}s"
            )
        log.phase("gptq_calibration", "end")

    # ==================================================================================
    # Artifact (int8 + zlib for the baseline), written by rank 0. Its size plus the code
    # is what counts.
    # ==================================================================================
    code = counted_code()
    code_bytes, code_sha = contract.code_digest(code)
    if launch.master:
        # The baseline's first three size lines are about the unquantized weights, saved
        # as final_model.pt (the file name is part of torch.save's bytes); the file is
        # kept only with SAVE_RAW_MODEL.
        raw_path = out / contract.RAW_MODEL
        torch.save(base_model.state_dict(), raw_path)
        raw_model_bytes = raw_path.stat().st_size
        if not config.save_raw_model:
            raw_path.unlink()
        log.line(f"Serialized model: {raw_model_bytes} bytes")
        log.line(f"Code size: {code_bytes} bytes")
        log.line(f"Total submission size: {raw_model_bytes + code_bytes} bytes")
    log.phase("artifact", "start")
    sync(device)
    t_artifact = time.perf_counter()
    artifact_path = out / artifact_file
    quant_obj, stats = quantize_state_dict(base_model.state_dict(), spec, hessians)
    quant_obj["model"] = shape.as_dict()
    quant_obj["eval"] = eval_settings(config)
    blob, raw_bytes = pack(quant_obj, spec.compressor)
    if launch.master:
        artifact_path.write_bytes(blob)
    artifact_s = time.perf_counter() - t_artifact
    model_bytes = len(blob)
    ratio = stats["baseline_tensor_bytes"] / max(stats["int8_payload_bytes"], 1)
    log.line(
        f"Serialized model {spec.label}: {model_bytes} bytes "
        f"(payload:{stats['int8_payload_bytes']} raw_torch:{raw_bytes} payload_ratio:{ratio:.2f}x)"
    )
    log.line(f"Total submission size {spec.label}: {model_bytes + code_bytes} bytes")
    log.phase("artifact", "end")

    # ==================================================================================
    # Score: the model becomes exactly what the file on disk holds, then is evaluated.
    # ==================================================================================
    if launch.distributed:
        dist.barrier()
    log.phase("eval", "start")
    sync(device)
    t_eval = time.perf_counter()
    tag = score_tag(spec, config.eval_mode, config.ttt_epochs > 0)
    base_model.load_state_dict(dequantize_state_dict(read_artifact(artifact_path)), strict=True)
    deadline = t_eval + config.eval_max_seconds if config.eval_max_seconds > 0 else None
    if config.eval_mode == "standard":
        final = validate(deadline)
    else:
        final = score_model(compiled, val_tokens, tables, eval_settings(config), launch, deadline)
    sync(device)
    eval_s = time.perf_counter() - t_eval
    # Before the score lines: the exact score stays the log's last line.
    log.line(
        f"time_budget train:{train_ms:.0f}ms gptq_calibration:{1000.0 * calibration_s:.0f}ms "
        f"artifact:{1000.0 * artifact_s:.0f}ms eval:{1000.0 * eval_s:.0f}ms"
    )
    detail = f" stride:{config.eval_stride}" if config.eval_mode == "sliding" else ""
    log.line(
        f"{tag} val_loss:{final.val_loss:.4f} val_bpb:{final.val_bpb:.4f}{detail} "
        f"eval_time:{1000.0 * eval_s:.0f}ms"
    )
    if not final.complete:
        log.line(
            f"eval_budget_exceeded: eval_max_seconds:{config.eval_max_seconds:.0f} "
            f"scored_tokens:{final.tokens} of:{val_tokens.numel() - 1}"
        )
    log.line(f"{tag}_exact val_loss:{final.val_loss:.8f} val_bpb:{final.val_bpb:.8f}")
    log.event(
        contract.EVENT_FINAL,
        tag=f"{tag}_exact",
        val_loss=final.val_loss,
        val_bpb=final.val_bpb,
        eval_time_ms=1000.0 * eval_s,
        eval_mode=config.eval_mode,
        complete=final.complete,
    )
    log.phase("eval", "end")
    if not launch.master:
        return None

    # ==================================================================================
    # Results: the record the worker verifies against the files it downloads.
    # ==================================================================================
    assert pre_quant is not None  # the last step always validates
    results = {
        "val_loss": final.val_loss,
        "val_bpb": final.val_bpb,
        "score_tag": f"{tag}_exact",
        "pre_quant_val_loss": pre_quant.val_loss,
        "pre_quant_val_bpb": pre_quant.val_bpb,
        "steps": step,
        "train_time_s": train_ms / 1000.0 + calibration_s,
        "gptq_calibration_s": calibration_s,
        "artifact_time_s": artifact_s,
        "eval_time_s": eval_s,
        "code_bytes": code_bytes,
        "model_bytes": model_bytes,
        "bytes_total": code_bytes + model_bytes,
        "artifact_file": artifact_file,
        "artifact_kind": spec.label,
        "eval_mode": config.eval_mode,
        "eval_complete": final.complete,
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
        "code_sha256": code_sha,
        "code_files": list(code),
        "val_tokens": final.tokens,
        "val_bytes": final.bytes,
        "seed": config.seed,
        "hardware": hw,
        "versions": lib,
        "config": {**config.as_dict(), "run_id": run_id},
    }
    (out / contract.RESULTS).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log.event(contract.EVENT_RESULTS, **results)
    return results


def training_cap_ms(config: Any) -> float | None:
    """The training loop's wall-clock cap: MAX_WALLCLOCK_SECONDS less the GPTQ reserve."""
    if config.max_wallclock_seconds <= 0:
        return None
    reserve = config.gptq_reserve_s if config.gptq else 0.0
    return 1000.0 * (config.max_wallclock_seconds - reserve)


def eval_settings(config: Any) -> dict[str, Any]:
    """What scoring the artifact needs besides the model shape (stored in the artifact)."""
    return {
        "train_seq_len": config.train_seq_len,
        "val_batch_size": config.val_batch_size,
        "val_max_tokens": config.val_max_tokens,
        "eval_mode": config.eval_mode,
        "eval_seq_len": config.eval_seq_len or config.train_seq_len,
        "eval_stride": config.eval_stride,
        "eval_batch_seqs": config.eval_batch_seqs,
        "eval_max_seconds": config.eval_max_seconds,
        "ttt_epochs": config.ttt_epochs,
        "ttt_chunk_tokens": config.ttt_chunk_tokens,
        "ttt_lr": config.ttt_lr,
        "ttt_momentum": config.ttt_momentum,
        "data_path": str(Path(config.data_path).resolve()),
        "tokenizer_path": str(Path(config.tokenizer_path).resolve()),
        "torch_compile": config.torch_compile,
    }


def score_model(
    model: nn.Module,
    val_tokens: torch.Tensor,
    tables: ByteTables,
    settings: dict[str, Any],
    launch: Launch,
    deadline: float | None,
) -> ValResult:
    """Score with the evaluation the settings (an artifact's "eval" section) name.

    Artifacts written before sliding evaluation existed have no eval_mode: standard.
    """
    common = dict(
        rank=launch.rank, world_size=launch.world_size, device=launch.device, deadline=deadline
    )
    ttt_epochs = settings.get("ttt_epochs", 0)
    if ttt_epochs <= 0 and settings.get("eval_mode", "standard") != "sliding":
        return evaluate(
            model,
            val_tokens,
            tables,
            seq_len=settings["train_seq_len"],
            local_batch_tokens=settings["val_batch_size"] // MICRO_BATCHES,
            **common,
        )
    windows = dict(
        window=settings["eval_seq_len"],
        stride=settings["eval_stride"],
        batch_seqs=settings["eval_batch_seqs"],
    )
    if ttt_epochs > 0:
        ttt = TTTSettings(
            chunk_tokens=settings["ttt_chunk_tokens"],
            epochs=ttt_epochs,
            lr=settings["ttt_lr"],
            momentum=settings["ttt_momentum"],
            seq_len=settings["eval_seq_len"],
        )
        return evaluate_ttt(model, val_tokens, tables, ttt, **windows, **common)
    return evaluate_sliding(model, val_tokens, tables, **windows, **common)


def _cpu_fused_adam() -> bool:
    # Fused Adam on CPU exists in recent torch; fall back to the default implementation.
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def score_artifact(
    artifact: str | Path,
    data_path: str | None = None,
    tokenizer_path: str | None = None,
) -> dict[str, Any]:
    """Score an artifact alone, in this process: rebuild, dequantize, evaluate (one rank)."""
    t_start = time.perf_counter()
    obj = read_artifact(artifact)
    for key in ("model", "eval"):
        if not isinstance(obj.get(key), dict):
            raise ArtifactError(f"artifact {artifact} lacks the {key!r} section needed to score it")
    shape = ModelShape(**obj["model"])
    settings = obj["eval"]
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        _fast_cuda_math()
    sp = load_tokenizer(tokenizer_path or settings["tokenizer_path"], shape.vocab_size)
    val_files = find_shards(data_path or settings["data_path"], VAL_PATTERN)
    seq_len = settings["train_seq_len"]
    val_tokens = load_validation_tokens(val_files, seq_len, settings["val_max_tokens"])
    tables = build_byte_tables(sp, shape.vocab_size).to(device)
    model = build_model(shape, device)
    model.load_state_dict(dequantize_state_dict(obj), strict=True)
    scored: nn.Module = model
    if device.type == "cuda" and settings.get("torch_compile", True):
        scored = compile_fullgraph(model)
    alone = Launch(0, 1, 0, device, False)
    budget = settings.get("eval_max_seconds", 0.0)
    deadline = time.perf_counter() + budget if budget > 0 else None
    result = score_model(scored, val_tokens, tables, settings, alone, deadline)
    sync(device)
    spec = QuantSpec(bits=obj.get("bits", 8), compressor=obj.get("compressor", "zlib"))
    tag = score_tag(spec, settings.get("eval_mode", "standard"), settings.get("ttt_epochs", 0) > 0)
    return {
        "score_tag": f"{tag}_exact",
        "val_loss": result.val_loss,
        "val_bpb": result.val_bpb,
        "val_tokens": result.tokens,
        "val_bytes": result.bytes,
        "eval_mode": settings.get("eval_mode", "standard"),
        "eval_complete": result.complete,
        "eval_time_s": time.perf_counter() - t_start,
        "artifact_sha256": hashlib.sha256(Path(artifact).read_bytes()).hexdigest(),
        "device": device.type,
    }
