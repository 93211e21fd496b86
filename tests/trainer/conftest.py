"""Fixtures for the trainer: a small real corpus, a built dataset and one tiny CPU run.

The corpus is the docstrings of the Python standard library (real English-ish prose and
code), one document per module, written to a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.corpora import write_docstring_corpus
from tests.fixture_files import TOKENIZERS as TOKENIZERS
from trainer import contract

REPO = Path(__file__).resolve().parents[2]
CORPUS_BYTES = 400_000  # enough text for a 512-piece BPE and a few thousand val tokens
VOCAB = 512
VAL_DOCS = 8
TINY_STEPS = 20


def trainer_cmd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m trainer ARGS` in a fresh process with the repository on the path."""
    # One intra-op thread: tiny shapes gain nothing from more, and spinning OpenMP threads
    # slow everything down when other suites share the 2 cores.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Dataset:
    text_dir: Path
    docs: list[str]
    tokenizer: Path
    data_path: Path
    stdout: str


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """`python -m trainer data build` on the docstring corpus (vocab 512)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = write_docstring_corpus(root / "text", CORPUS_BYTES)
    done = trainer_cmd(
        "data",
        "build",
        "--text",
        str(root / "text"),
        "--out",
        str(root / "data"),
        "--vocab-size",
        str(VOCAB),
        "--val-docs",
        str(VAL_DOCS),
    )
    assert done.returncode == 0, done.stderr
    tokenizer, data_path = (Path(line) for line in done.stdout.split())
    return Dataset(root / "text", docs, tokenizer, data_path, done.stdout)


@dataclass(frozen=True)
class TrainedRun:
    out: Path
    config_path: Path
    results: dict
    stdout: str

    def again(self, out: Path, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Train on the same run.json into `out`, with `env` overriding it."""
        return trainer_cmd("train", "--config", str(self.config_path), "--out", str(out),
                           env=env, timeout=timeout)


def train(values: dict, root: Path) -> TrainedRun:
    """`python -m trainer train` on a run.json of `values` in `root`, into root/run; it must succeed."""
    config_path = root / "run.json"
    config_path.write_text(json.dumps(values))
    out = root / "run"
    done = trainer_cmd("train", "--config", str(config_path), "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / contract.RESULTS).read_text())
    return TrainedRun(out, config_path, results, done.stdout)


@pytest.fixture(scope="session")
def tiny_run(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One full `python -m trainer train` of the tiny preset (fewer steps) on CPU."""
    return train(
        {
            "preset": "tiny",
            "data_path": str(dataset.data_path),
            "tokenizer_path": str(dataset.tokenizer),
            "iterations": TINY_STEPS,
            "warmdown_iters": 8,
            "seed": 7,
        },
        tmp_path_factory.mktemp("tiny_run"),
    )
