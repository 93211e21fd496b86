"""`data build`: a tokenizer and challenge-format shards from your own documents.

Input: every `*.txt` file under a folder is one document; every line of a `*.jsonl` file
is one {"text": ...} document. Files are read in sorted path order. The tokenizer is a
SentencePiece BPE trained with the challenge exporter's settings (or an existing model);
each document becomes BOS (id 1) + its tokens, no EOS; the first `val_docs` documents
form the validation split, the rest the training split.

Output layout (what DATA_PATH / TOKENIZER_PATH point at):
  OUT/tokenizers/<name>.model
  OUT/datasets/<name>/fineweb_val_000000.bin, fineweb_train_000000.bin, ...
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from trainer.data import shard_name, write_shard

BOS_ID = 1
SHARD_TOKENS = 10**8  # tokens per shard, as in the official export
# The challenge exporter's SentencePiece settings; ids 0..3 are pad/bos/eos/unk.
TOKENIZER_SETTINGS: dict[str, Any] = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)
MAX_TRAINING_SENTENCES = 2_000_000


class CorpusError(ValueError):
    """Input that cannot become a dataset; the message names the path or option."""


@dataclass(frozen=True)
class BuiltDataset:
    tokenizer_path: Path
    dataset_dir: Path
    train_tokens: int
    val_tokens: int
    documents: int


def read_documents(text_dir: str | Path) -> list[str]:
    """The documents under `text_dir`, in sorted path order (jsonl lines in file order)."""
    root = Path(text_dir)
    if not root.is_dir():
        raise CorpusError(f"text folder not found: {root}")
    docs: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".txt":
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
        elif path.suffix == ".jsonl":
            docs.extend(_jsonl_documents(path))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise CorpusError(f"no documents (*.txt, *.jsonl) with text under {root}")
    return docs


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number} is not JSON: {exc}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f'{path}:{number} has no string "text" field')
            yield record["text"]


def train_tokenizer(docs: list[str], vocab_size: int, model_path: Path) -> Path:
    """Train a BPE tokenizer on `docs` (line by line) and write it to `model_path` (.model)."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    # Normalization folds newlines into spaces, so lines carry the same statistics as documents.
    sentences = (line for doc in docs for line in doc.splitlines() if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            input_sentence_size=MAX_TRAINING_SENTENCES,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **TOKENIZER_SETTINGS,
        )
        shutil.move(f"{prefix}.model", model_path)
        shutil.move(f"{prefix}.vocab", model_path.with_suffix(".vocab"))
    return model_path


def encode_documents(sp: spm.SentencePieceProcessor, docs: list[str]) -> np.ndarray:
    """All documents as one uint16 stream: BOS + tokens per document."""
    parts: list[np.ndarray] = []
    for ids in sp.encode(docs, num_threads=os.cpu_count() or 1):
        parts.append(np.asarray([BOS_ID, *ids], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def build(
    text_dir: str | Path,
    out_dir: str | Path,
    *,
    vocab_size: int = 1024,
    val_docs: int | None = None,
    name: str | None = None,
    tokenizer: str | Path | None = None,
) -> BuiltDataset:
    """Tokenizer + shards under `out_dir`; `val_docs` defaults to a tenth of the documents."""
    docs = read_documents(text_dir)
    val_count = max(1, len(docs) // 10) if val_docs is None else val_docs
    if not 0 < val_count < len(docs):
        raise CorpusError(
            f"--val-docs {val_count} must be between 1 and {len(docs) - 1}: validation needs a "
            f"document and training the rest of the {len(docs)}"
        )
    out = Path(out_dir)
    if tokenizer is not None:
        source = Path(tokenizer)
        if not source.is_file():
            raise CorpusError(f"tokenizer not found: {source}")
        sp = spm.SentencePieceProcessor(model_file=str(source))
        vocab_size = int(sp.vocab_size())
        name = name or f"custom_sp{vocab_size}"
        model_path = out / "tokenizers" / f"{name}.model"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() != model_path.resolve():
            shutil.copyfile(source, model_path)
    else:
        name = name or f"custom_sp{vocab_size}"
        model_path = train_tokenizer(docs, vocab_size, out / "tokenizers" / f"{name}.model")
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
    dataset_dir = out / "datasets" / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(dataset_dir.glob("fineweb_*.bin")):
        stale.unlink()
    val = encode_documents(sp, docs[:val_count])
    train = encode_documents(sp, docs[val_count:])
    _write_split(dataset_dir, "val", val)
    _write_split(dataset_dir, "train", train)
    return BuiltDataset(model_path, dataset_dir, int(train.size), int(val.size), len(docs))


def _write_split(folder: Path, split: str, tokens: np.ndarray) -> None:
    for index, start in enumerate(range(0, max(tokens.size, 1), SHARD_TOKENS)):
        write_shard(folder / shard_name(split, index), tokens[start : start + SHARD_TOKENS])
