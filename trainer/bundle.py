"""`bundle --single-file`: the whole trainer as one readable `train_gpt.py`, as the records ship.

The script is the package's modules flattened into one file in dependency order, each under a
banner naming the module it came from, with the imports between them removed (`contract.X`
becomes `X`), `schema.json` carried as EMBEDDED_SCHEMA, and a `Hyperparameters` class at the
top holding the run's settings (every field, resolved). Run with no arguments it trains with
those settings, each overridden by the environment variable named like it in upper case
(NUM_LAYERS, SEED, DATA_PATH, ...), as the community's scripts do: `torchrun --standalone
--nproc_per_node=8 train_gpt.py`. `python train_gpt.py train --config run.json` replaces the
Hyperparameters with a run.json (what the worker runs). The script sets TRAINER_BUNDLE to its
own path, so the run counts the script's bytes as its code.

`--compressed` writes the records' compressed-code form instead: a few lines that decompress
(lzma, base85) and execute the same readable source, which is written beside it as
`train_gpt_source.py` (not counted).

Torch-free: it reads the package's files as text.
"""

from __future__ import annotations

import ast
import io
import json
import pprint
import tokenize
from pathlib import Path
from typing import Any

from trainer import contract
from trainer.singlefile import SCRIPT, SOURCE, compress, hyperparameters_block

BUNDLE_ENV = contract.BUNDLE_ENV
PACKAGE = "trainer"
SKIPPED = ("__init__.py", "bundle.py", "singlefile.py")  # a docstring; this builder; its format
RULE = "# " + "=" * 98

HEADER = '''"""Caddie's trainer as one file, in the records' style.

    torchrun --standalone --nproc_per_node=8 train_gpt.py     # 8 GPUs
    python train_gpt.py                                        # one process (GPU or CPU)

Settings: the Hyperparameters class below; each is overridden by the environment variable
named like it in upper case (NUM_LAYERS=11, SEED=42, ITERATIONS=..., DATA_PATH=...,
TOKENIZER_PATH=...). The data are the challenge's: ./data/datasets/fineweb10B_sp1024/ and
./data/tokenizers/ by default. Writes train.log, metrics.jsonl, results.json and the artifact
into the current folder. Other commands: `python train_gpt.py eval --artifact FILE`,
`python train_gpt.py train --config run.json --out DIR`.

Generated from the `trainer/` package (`python -m trainer bundle --single-file`): each section
below is one of its modules, named in its banner.
"""

from __future__ import annotations
'''

ENTRY = '''if __name__ == "__main__":
    # The code this run counts is this file (or the compressed script that executed it).
    os.environ[BUNDLE_ENV] = os.path.abspath(__file__)
    settings = {k: v for k, v in vars(Hyperparameters).items() if not k.startswith("_")}
    sys.exit(main(sys.argv[1:] or ["train"], settings=settings))
'''

def package_dir() -> Path:
    return Path(__file__).resolve().parent


def build_single_file(package: Path, out: str | Path, *, settings: dict[str, Any] | None = None,
                      compressed: bool = False) -> Path:
    """Write train_gpt.py for the package at `package` to `out` (a file, or a folder that gets
    train_gpt.py); with `compressed`, the readable source goes beside it. Returns its path."""
    out = Path(out)
    if out.is_dir():
        out = out / SCRIPT
    source = flatten(package, settings)
    if compressed:
        out.with_name(SOURCE).write_text(source, encoding="utf-8")
        out.write_text(compress(source), encoding="utf-8")
    else:
        out.write_text(source, encoding="utf-8")
    return out


def flatten(package: Path, settings: dict[str, Any] | None = None) -> str:
    """The readable single file: header, Hyperparameters, schema, modules, entry point."""
    schema = json.loads((package / contract.SCHEMA).read_text(encoding="utf-8"))
    modules = _modules(package)
    _refuse_clashes(modules)
    parts = [HEADER, hyperparameters_block(settings or _baseline(schema)),
             _section("trainer/schema.json",
                      "EMBEDDED_SCHEMA = " + pprint.pformat(schema, width=100, sort_dicts=False) + "\n")]
    parts += [_section(f"{PACKAGE}/{name}.py", _strip(text, name)) for name, text in modules]
    parts.append(_section("entry point", ENTRY))
    return "\n\n".join(part.rstrip("\n") + "\n" for part in parts)


def _baseline(schema: dict[str, Any]) -> dict[str, Any]:
    values = {name: spec["default"] for name, spec in schema["fields"].items()}
    return {contract.PRESET_KEY: "baseline", **values, **schema["presets"].get("baseline", {})}


def _section(title: str, body: str) -> str:
    return f"{RULE}\n# {title}\n{RULE}\n\n{body}"


def _modules(package: Path) -> list[tuple[str, str]]:
    """(module name, text) for every module, each after the modules it imports."""
    texts = {p.stem: p.read_text(encoding="utf-8") for p in sorted(package.glob("*.py"))
             if p.name not in SKIPPED}
    needs = {name: _imports(text) & set(texts) for name, text in texts.items()}
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise ValueError(f"import cycle in {PACKAGE}: {' -> '.join((*path, name))}")
        for dependency in sorted(needs[name]):
            visit(dependency, (*path, name))
        ordered.append(name)

    for name in sorted(texts, key=lambda n: (n == "__main__", n)):
        visit(name, ())
    return [(name, texts[name]) for name in ordered]


def _imports(text: str) -> set[str]:
    """The package's modules `text` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            rest = node.module.split(".")[1:]
            found |= set(rest) if rest else {alias.name for alias in node.names}
    return found


def _top_level_names(text: str) -> set[str]:
    names = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _refuse_clashes(modules: list[tuple[str, str]]) -> None:
    """One file has one namespace: two modules may not define the same top-level name."""
    owner: dict[str, str] = {"Hyperparameters": "the header", "EMBEDDED_SCHEMA": "the header"}
    for name, text in modules:
        for defined in _top_level_names(text):
            if defined in owner:
                raise ValueError(f"{PACKAGE}/{name}.py and {owner[defined]} both define {defined!r}")
            owner[defined] = f"{PACKAGE}/{name}.py"


def _strip(text: str, module: str) -> str:
    """The module without `from __future__`, imports of the package, `contract.` prefixes and
    (for __main__) its `if __name__ == "__main__"` block."""
    tree = ast.parse(text)
    drop: set[int] = set()  # 1-based line numbers
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "__future__" or node.module.split(".")[0] == PACKAGE):
            drop |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            drop |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            drop |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    stripped = _without_contract_prefix(text)
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
              for a in (*n.posonlyargs, *n.args, *n.kwonlyargs)}
    shadowed = bound & _contract_names(text)
    if shadowed:  # `x = contract.x` would become `x = x`
        raise ValueError(f"{PACKAGE}/{module}.py binds {sorted(shadowed)}, names of contract it uses")
    lines = stripped.splitlines(keepends=True)
    kept = "".join(line for number, line in enumerate(lines, 1) if number not in drop)
    return kept.strip("\n") + "\n"


def _contract_names(text: str) -> set[str]:
    """The NAMEs of `contract.NAME` in `text`."""
    return {n.attr for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "contract"}


def _without_contract_prefix(text: str) -> str:
    """`contract.NAME` -> `NAME` in code (never in strings or comments); same line count."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    cuts = []  # (row, start col, end col) of each `contract.` to remove
    for before, here, after in zip([None, *tokens], tokens, tokens[1:], strict=False):
        if (here.type == tokenize.NAME and here.string == "contract" and after.string == "."
                and (before is None or before.string != ".")
                and after.start == here.end):
            cuts.append((here.start[0], here.start[1], after.end[1]))
    lines = text.splitlines(keepends=True)
    for row, start, end in reversed(cuts):
        line = lines[row - 1]
        lines[row - 1] = line[:start] + line[end:]
    return "".join(lines)
