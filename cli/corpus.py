"""An offline corpus for the demo: docstrings of the Python standard library.

Every machine with Python has it, so the demo needs no download. One document per
module, class or function docstring; short ones are dropped.
"""

import ast
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_DOC_CHARS = 100


def stdlib_docstrings(limit_bytes: int) -> Iterator[str]:
    """Yield docstrings from the stdlib's .py files (sorted, so the corpus is reproducible)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        for doc in _file_docstrings(path):
            yield doc
            total += len(doc.encode("utf-8"))
            if total >= limit_bytes:
                return


def _file_docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    for node in nodes:
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_DOC_CHARS:
            yield doc


def write_corpus(out_dir: Path, limit_bytes: int = 3_000_000) -> Path:
    """Write the corpus as one JSON line per document; returns the folder to build from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "stdlib_docstrings.jsonl"
    if target.exists() and target.stat().st_size > 0:
        return out_dir
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in stdlib_docstrings(limit_bytes):
            f.write(json.dumps({"text": doc}) + "\n")
    tmp.rename(target)
    return out_dir
