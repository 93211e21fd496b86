"""The end-to-end modules' shared data: one small tokenized corpus per test process."""

import subprocess
import sys

import pytest

from tests.e2e.stacks import REPO


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small corpus → `python -m trainer data build` → tokenizer and shards (read only by
    the runs, so every module's stacks can train on the same files)."""
    from cli.corpus import write_corpus

    root = tmp_path_factory.mktemp("dataset")
    corpus = write_corpus(root / "text", limit_bytes=300_000)
    built = subprocess.run(
        [sys.executable, "-m", "trainer", "data", "build", "--text", str(corpus), "--out",
         str(root / "data"), "--vocab-size", "512", "--val-docs", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    tokenizer, data_path = built.stdout.split()
    return {"tokenizer_path": tokenizer, "data_path": data_path}
