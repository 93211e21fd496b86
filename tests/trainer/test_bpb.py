"""Byte tables on the official tokenizers and the bpb of an evaluation."""

from __future__ import annotations

import math

import pytest
import sentencepiece as spm
import torch

from tests.fixture_files import SP1024, SP8192
from trainer.evaluate import TokenizerError, build_byte_tables, evaluate, load_tokenizer

BOS = 1

ASCII_TEXT = (
    "The quick brown fox jumps over the lazy dog. It was 1999, and   spaces\n"
    'and new lines were everywhere; 42, 17 & 59! Quoth the raven: "Nevermore."'
)
UNICODE_TEXT = ASCII_TEXT + " Café naïve — 日本語 ☃ emoji 🎉 and ŝtranĝe letters."


def counted_bytes(sp: spm.SentencePieceProcessor, ids: list[int]) -> int:
    """Bytes the tables charge for `ids` as targets after a BOS."""
    tables = build_byte_tables(sp, int(sp.vocab_size()))
    stream = torch.tensor([BOS, *ids])
    return int(tables.target_bytes(stream[:-1], stream[1:]).sum())


def test_bytes_equal_the_decoded_utf8_length_with_byte_fallback():
    sp = spm.SentencePieceProcessor(model_file=str(SP8192))
    ids = sp.encode(UNICODE_TEXT)
    assert any(sp.is_byte(i) for i in ids)  # the text really exercises byte fallback
    assert counted_bytes(sp, ids) == len(sp.decode(ids).encode("utf-8"))


def test_bytes_equal_the_decoded_utf8_length_on_sp1024():
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    ids = sp.encode(ASCII_TEXT)
    assert not any(sp.is_unknown(i) for i in ids)
    assert counted_bytes(sp, ids) == len(sp.decode(ids).encode("utf-8"))


def test_unknown_tokens_count_zero_bytes_on_sp1024():
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    ids = sp.encode("abc ☃ def")
    unknown = [i for i in ids if sp.is_unknown(i)]
    assert unknown, "sp1024 has no byte fallback, so the snowman must be <unk>"
    known = [i for i in ids if not sp.is_unknown(i)]
    assert counted_bytes(sp, unknown) == 0
    tables = build_byte_tables(sp, 1024)
    assert tables.is_boundary[unknown[0]] and tables.base_bytes[unknown[0]] == 0
    assert counted_bytes(sp, known) == len(sp.decode(known).encode("utf-8"))


def test_leading_space_is_not_charged_after_bos():
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    word = sp.piece_to_id("\u2581the")
    assert not sp.is_unknown(word)
    tables = build_byte_tables(sp, 1024)
    prev = torch.tensor([BOS, word])
    target = torch.tensor([word, word])
    assert tables.target_bytes(prev, target).tolist() == [3, 4]


def test_ids_past_the_tokenizer_are_boundaries():
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    tables = build_byte_tables(sp, 1100)
    assert tables.is_boundary.shape == (1100,)
    assert tables.is_boundary[1024:].all() and not tables.base_bytes[1024:].any()


def test_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="TOKENIZER_PATH=.*absent.model"):
        load_tokenizer(tmp_path / "absent.model", 1024)
    with pytest.raises(TokenizerError, match="not a SentencePiece .model"):
        load_tokenizer(tmp_path / "tok.json", 1024)


def test_vocab_mismatch_is_refused():
    with pytest.raises(TokenizerError, match="VOCAB_SIZE=512"):
        load_tokenizer(SP1024, 512)


class UniformModel(torch.nn.Module):
    """Predicts every token with probability 1/vocab: loss is exactly ln(vocab)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, x, y):
        logits = torch.zeros(y.numel(), self.vocab)
        return torch.nn.functional.cross_entropy(logits, y.reshape(-1))


def test_evaluate_scores_each_target_once_and_converts_to_bits_per_byte():
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    docs = [ASCII_TEXT, "A second document, shorter.", ASCII_TEXT.upper()]
    stream = [t for doc in docs for t in [BOS, *sp.encode(doc)]]
    seq_len = 8
    usable = ((len(stream) - 1) // seq_len) * seq_len
    val = torch.tensor(stream[: usable + 1], dtype=torch.int64).to(torch.uint16)
    tables = build_byte_tables(sp, 1024)
    result = evaluate(
        UniformModel(1024),
        val,
        tables,
        seq_len=seq_len,
        local_batch_tokens=16,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
    )
    targets = torch.tensor(stream[1 : usable + 1])
    previous = torch.tensor(stream[:usable])
    expected_bytes = int(tables.target_bytes(previous, targets).sum())
    assert result.tokens == usable
    assert result.bytes == expected_bytes
    assert result.val_loss == pytest.approx(math.log(1024), rel=1e-6)
    assert result.val_bpb == pytest.approx(math.log2(1024) * usable / expected_bytes, rel=1e-6)
