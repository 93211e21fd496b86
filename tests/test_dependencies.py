"""Dependencies run one way (docs/architecture.md), read from every import statement in the
source (imports inside functions count too: a lazy import is still a dependency), with its one
exception: the torch-free trainer modules that exist to be shared."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The trainer modules server/, web/, cli/ and worker/ may import, as docs/architecture.md
# lists them: names, files and JSON keys (contract), config resolution with the schema's
# rules (config) and the single-file script's format (singlefile).
SHARED_TRAINER_MODULES = frozenset({"trainer.contract", "trainer.config", "trainer.singlefile"})
IMPORTERS = ("server", "web", "cli", "worker")
OURS = {"app", "server", "web", "worker", "cli", "trainer", "migrations", "bench"}
# package -> our packages it must never import (its own name is always allowed); the trainer
# modules each may import are the shared ones, checked below.
FORBIDDEN = {
    "server": {"app", "web", "worker", "cli", "bench"},
    "web": {"app", "worker", "cli", "bench"},
    "worker": {"app", "web", "cli", "bench"},
    "trainer": OURS - {"trainer"},
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module `path` imports, at any depth; `from a import b` counts as
    `a.b` when `a` is a package, so `from trainer import config` is `trainer.config`."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if (REPO / node.module.replace(".", "/")).is_dir():
                modules |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                modules.add(node.module)
    return modules


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    found = [f"{path.relative_to(REPO)} imports {name}"
             for path in sorted((REPO / package).rglob("*.py"))
             for name in sorted({m.split(".")[0] for m in imported_modules(path)} & FORBIDDEN[package])]
    assert found == []


def trainer_imports(folder: str) -> dict[str, set[str]]:
    """Source file (relative to the repository) -> the trainer modules it imports."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        trainer = {m for m in imported_modules(path) if m.split(".")[0] == "trainer"}
        if trainer:
            found[str(path.relative_to(REPO))] = trainer
    return found


@pytest.mark.parametrize("folder", IMPORTERS)
def test_only_the_shared_trainer_modules_are_imported(folder: str) -> None:
    unshared = {path: modules - SHARED_TRAINER_MODULES
                for path, modules in trainer_imports(folder).items()
                if modules - SHARED_TRAINER_MODULES}
    assert unshared == {}


def test_the_shared_modules_are_in_use() -> None:
    """The list is no wider than what is imported: each module on it has an importer."""
    used = set().union(*(m for folder in IMPORTERS for m in trainer_imports(folder).values()))
    assert used == SHARED_TRAINER_MODULES


@pytest.mark.parametrize("module", sorted(SHARED_TRAINER_MODULES))
def test_a_shared_module_imports_only_the_standard_library(module: str) -> None:
    path = REPO / (module.replace(".", "/") + ".py")
    outside = {m for m in imported_modules(path)
               if m.split(".")[0] not in sys.stdlib_module_names
               and m not in SHARED_TRAINER_MODULES}
    assert outside == set()


def test_the_walk_sees_every_form_of_import(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text("import trainer.model as m\nfrom trainer import config, contract\n"
                      "from trainer.quantize import pack\nfrom . import sibling\n"
                      "def late():\n    import torch\n")
    assert imported_modules(source) == {"trainer.model", "trainer.config", "trainer.contract",
                                        "trainer.quantize", "torch"}


@pytest.mark.parametrize("module", [*sorted(SHARED_TRAINER_MODULES), "app.main", "worker.tasks"])
def test_importing_leaves_torch_out(module: str) -> None:
    """The server, the worker and the shared modules load where torch is not installed."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
