"""Small real corpora for tests that build a dataset: the docstrings of the Python standard
library (real English-ish prose and code), one document per module."""

import ast
import sysconfig
from pathlib import Path


def write_docstring_corpus(folder: Path, limit_bytes: int) -> list[str]:
    """One .txt document per stdlib module with docstrings; returns the texts in path order."""
    folder.mkdir(parents=True, exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        parts = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds)]
        text = "\n\n".join(p for p in parts if p)
        if len(text) < 500:
            continue
        (folder / f"{path.stem}.txt").write_text(text, encoding="utf-8")
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= limit_bytes:
            break
    return docs
