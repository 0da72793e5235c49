"""What the code imports is declared: every third-party module imported anywhere under
src/llmrun belongs to a distribution named in pyproject's [project].dependencies (a plain
install has it), except imports guarded by `except ImportError` (optional by construction)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a try whose handlers catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                                "ModuleNotFoundError")
                for h in node.handlers):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def _imported_modules() -> dict[str, str]:
    """Top-level module -> a file that imports it (unguarded, absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "llmrun").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if node.__dict__.get("lineno") in guarded:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("llmrun", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0])
                for d in project["dependencies"]}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in _imported_modules().items():
        owners = {_norm(d) for d in dists.get(module, [module])}
        if not owners & declared:
            missing[module] = (where, sorted(owners))
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"
