"""The package's layering: sub-packages in data-flow order, each importing only those before it, and a library
that imports nothing of the training application or the benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

import speeder_hf

PACKAGE = Path(speeder_hf.__file__).parent
# The data flow, first to last; a sub-package may import the ones before it and the shared top-level modules.
ORDER = ["data", "model", "catalog", "processing", "training", "evaluation", "serving", "hub"]
SHARED = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the `speeder_hf` (and other) modules `path` imports, relative imports resolved."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def test_the_library_imports_neither_the_application_nor_the_benchmarks():
    for path in PACKAGE.rglob("*.py"):
        outside = {name for name in imported_modules(path) if name.split(".")[0] in {"speeder_hf_train", "benchmarks"}}
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


def test_each_sub_package_imports_only_those_before_it_in_the_data_flow():
    assert sorted(ORDER) == sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    for position, name in enumerate(ORDER):
        allowed = {name, *ORDER[:position], *SHARED}
        for path in (PACKAGE / name).rglob("*.py"):
            reached = {m.split(".")[1] for m in imported_modules(path) if m.startswith("speeder_hf.")}
            assert reached <= allowed, f"{path.relative_to(PACKAGE)} imports {sorted(reached - allowed)}"
    for path in PACKAGE.glob("*.py"):  # the shared modules import no sub-package (the package root re-exports)
        if path.stem != "__init__":
            reached = {m.split(".")[1] for m in imported_modules(path) if m.startswith("speeder_hf.")}
            assert reached <= SHARED, f"{path.name} imports {sorted(reached - SHARED)}"
