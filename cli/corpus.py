"""Offline corpora made of Python docstrings: every machine with Python has them.

The demo's corpus is the standard library's docstrings (about 2 MB, one document per module,
class or function docstring; short ones dropped). The mini-golf benchmark needs several
times more text than a run reads, so that no token is trained on twice (as in the real
challenge): its corpus adds the docstrings of the installed packages, without duplicates,
shuffled so that the validation documents are a sample of the whole.
"""

import ast
import json
import random
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

MIN_DOC_CHARS = 100
# Folders left out: the installed packages (the stdlib's own corpus) and test suites.
STDLIB_SKIPPED = frozenset({"site-packages", "test"})
# The packages' corpus also leaves out vendored copies, which would repeat other packages.
PACKAGE_SKIPPED = STDLIB_SKIPPED | {"tests", "testing", "_vendor", "vendored"}


def stdlib_docstrings(limit_bytes: int) -> Iterator[str]:
    """Yield docstrings from the stdlib's .py files (sorted, so the corpus is reproducible)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return _capped(_tree_docstrings(root, STDLIB_SKIPPED), limit_bytes)


def installed_roots() -> list[Path]:
    """The stdlib's folder, then the installed packages' (purelib and platlib)."""
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]), *sorted({Path(paths["purelib"]), Path(paths["platlib"])})]


def package_docstrings(limit_bytes: int, roots: list[Path] | None = None) -> Iterator[str]:
    """The docstrings under `roots` (default: installed_roots()), each text once."""
    roots = installed_roots() if roots is None else roots
    seen: set[str] = set()

    def unique() -> Iterator[str]:
        for root in roots:
            for doc in _tree_docstrings(root, PACKAGE_SKIPPED):
                if doc not in seen:
                    seen.add(doc)
                    yield doc

    return _capped(unique(), limit_bytes)


def _capped(docs: Iterator[str], limit_bytes: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        yield doc
        total += len(doc.encode("utf-8"))
        if total >= limit_bytes:
            return


def _tree_docstrings(root: Path, skipped: frozenset[str]) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if skipped.intersection(path.relative_to(root).parts[:-1]):
            continue
        yield from _file_docstrings(path)


def _file_docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_DOC_CHARS:
            yield doc


def write_corpus(out_dir: Path, limit_bytes: int = 3_000_000) -> Path:
    """The demo's corpus, one JSON line per document; returns the folder to build from."""
    return _write(out_dir / "stdlib_docstrings.jsonl", stdlib_docstrings(limit_bytes))


def write_large_corpus(out_dir: Path, limit_bytes: int, seed: int = 0,
                       roots: list[Path] | None = None) -> Path:
    """A seeded random sample of the packages' docstrings, up to `limit_bytes` of text."""
    target = out_dir / "package_docstrings.jsonl"
    if target.exists() and target.stat().st_size > 0:
        return out_dir
    docs = list(package_docstrings(limit_bytes=2**62, roots=roots))
    random.Random(seed).shuffle(docs)
    return _write(target, _capped(iter(docs), limit_bytes))


def _write(target: Path, docs: Iterator[str]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.stat().st_size > 0:
        return target.parent
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    tmp.rename(target)
    return target.parent


def prepare_dataset(work: Path, name: str, write: Callable[[], Path], vocab_size: int,
                    val_docs: int) -> tuple[Path, Path]:
    """Build (once) under `work`/data a tokenizer trained on the corpus `write()` makes and the
    shards of its documents, the first `val_docs` held out; (data_path, tokenizer_path)."""
    data_path = work / "data" / "datasets" / name
    tokenizer = work / "data" / "tokenizers" / f"{name}.model"
    if tokenizer.exists() and any(data_path.glob("fineweb_val_*.bin")):
        return data_path, tokenizer
    print(f"building the corpus for {name} ...", flush=True)
    corpus = write()
    print(f"training a {vocab_size}-token SentencePiece BPE and writing shards ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "trainer", "data", "build", "--text", str(corpus),
         "--vocab-size", str(vocab_size), "--out", str(work / "data"), "--name", name,
         "--val-docs", str(val_docs)],
        check=True,
    )
    return data_path, tokenizer
