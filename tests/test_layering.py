"""Dependencies run one way (docs/architecture.md): read from every import statement in the source.

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"app", "server", "web", "worker", "cli", "trainer", "migrations", "bench"}

# package -> our packages it must never import (its own name is always allowed).
FORBIDDEN = {
    "server": {"app", "web", "worker", "cli", "trainer", "bench"},
    "web": {"app", "worker", "cli", "trainer", "bench"},
    "worker": {"app", "web", "cli", "bench"},
    "trainer": OURS - {"trainer"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports; relative imports stay inside their package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_packages(path) & FORBIDDEN[package]):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    assert violations(package) == []


def test_the_walk_sees_imports_inside_functions_and_dotted_names(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os.path\n"
        "from . import sibling\n"
        "def later():\n"
        "    from web.pages import include_pages\n"
        "    import worker.director\n"
    )
    assert imported_packages(module) == {"os", "web", "worker"}
