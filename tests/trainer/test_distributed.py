"""Data parallelism on CPU (gloo): Muon's shared work and a 2-rank torchrun training run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer import contract
from trainer.muon import Muon

from .conftest import REPO, TinyRun, trainer_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(5)
    shapes = [(8, 4), (4, 8), (6, 6), (10, 3), (5, 5)]
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def two_steps(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    opt = Muon(params, lr=0.05, momentum=0.9, backend_steps=5)
    opt.step()
    opt.step()  # second step uses the momentum buffers each rank kept for its matrices
    return [p.detach().clone() for p in params]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(two_steps(make_params()), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_muon_shared_over_ranks_equals_one_process(tmp_path):
    expected = two_steps(make_params())
    out = str(tmp_path / "params")
    mp.spawn(_rank_main, args=(2, free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_torchrun_two_ranks_trains_and_its_artifact_scores_alone(tiny_run: TinyRun, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ITERATIONS": "2",
        "WARMUP_STEPS": "1",
        "VAL_MAX_TOKENS": "4096",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "trainer",
        "train",
        "--config",
        str(tiny_run.config_path),
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / contract.RESULTS).read_text())
    assert results["hardware"]["world_size"] == 2 and results["steps"] == 2
    assert results["val_tokens"] == 4096
    log = (tmp_path / contract.TRAIN_LOG).read_text()
    assert "world_size:2 grad_accum_steps:4" in log
    assert log.count("final_int8_zlib_roundtrip_exact") == 1  # rank 0 alone writes
    scored = trainer_cmd("eval", "--artifact", str(tmp_path / contract.ARTIFACT), "--json")
    assert scored.returncode == 0, scored.stderr
    # One process batches the same sequences; only the order of the float sums differs.
    assert json.loads(scored.stdout)["val_bpb"] == pytest.approx(results["val_bpb"], rel=1e-6)
