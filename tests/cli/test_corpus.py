"""The offline corpora: which files count, duplicates, the cap and the seeded order."""

import json
from pathlib import Path

from cli.corpus import package_docstrings, write_large_corpus

LONG = "x" * 100


def _module(path: Path, *docs: str) -> None:
    """A .py file whose module docstring is docs[0] and one function per further doc."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f'"""{docs[0]}"""']
    body += [f'def f{i}():\n    """{doc}"""\n' for i, doc in enumerate(docs[1:])]
    path.write_text("\n".join(body), encoding="utf-8")


def _tree(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "lib", tmp_path / "site"
    _module(first / "a.py", f"alpha {LONG}", f"beta {LONG}", "too short")
    _module(first / "tests" / "t.py", f"in a test suite {LONG}")
    _module(second / "pkg" / "b.py", f"gamma {LONG}", f"alpha {LONG}")
    _module(second / "pkg" / "_vendor" / "v.py", f"vendored {LONG}")
    (second / "broken.py").write_text('"""never closed', encoding="utf-8")
    return [first, second]


def test_package_docstrings_keep_each_text_once_and_skip_tests_and_vendored(tmp_path):
    docs = list(package_docstrings(10**9, roots=_tree(tmp_path)))
    assert docs == [f"alpha {LONG}", f"beta {LONG}", f"gamma {LONG}"]


def test_the_cap_stops_after_the_document_that_reaches_it(tmp_path):
    docs = list(package_docstrings(len(f"alpha {LONG}") + 1, roots=_tree(tmp_path)))
    assert docs == [f"alpha {LONG}", f"beta {LONG}"]


def test_large_corpus_is_a_seeded_shuffle_capped_in_bytes(tmp_path):
    roots = _tree(tmp_path)
    for i in range(40):
        _module(roots[0] / f"m{i:02d}.py", f"module {i} {LONG}")

    def lines(out: Path, seed: int, limit: int) -> list[str]:
        folder = write_large_corpus(out, limit, seed=seed, roots=roots)
        text = (folder / "package_docstrings.jsonl").read_text(encoding="utf-8")
        return [json.loads(line)["text"] for line in text.splitlines()]

    everything = lines(tmp_path / "all", 0, 10**9)
    assert sorted(everything) == sorted(package_docstrings(10**9, roots=roots))
    assert everything == lines(tmp_path / "again", 0, 10**9)
    assert everything != lines(tmp_path / "other_seed", 1, 10**9)
    assert everything != sorted(everything)
    capped = lines(tmp_path / "capped", 0, 5 * len(LONG))
    assert capped == everything[: len(capped)] and 5 <= len(capped) < len(everything)

