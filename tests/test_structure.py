"""The module graph under src/llmrun has no import cycles (imports inside functions and under
TYPE_CHECKING count too: a cycle there is a seam that does not hold)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _graph() -> dict[str, set[str]]:
    mods = {}
    for path in (SRC / "llmrun").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                subs = [f"{name}.{a.name}" for a in node.names]
                targets += [t for t in subs if t in mods]
                if any(t not in mods for t in subs):
                    targets.append(name)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 40 and "llmrun.cli.pull" in graph["llmrun.cli"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_sampling_is_layered_once() -> None:
    """User overrides over registry defaults over built-ins, one rule for run/chat and serve
    (client mode sends the overrides alone)."""
    from llmrun.datatypes import Sampling, layer_sampling
    from llmrun.server.schemas import CompletionRequest

    built_in = Sampling()
    s = layer_sampling({"temperature": 0.0, "top_k": None}, {"top_k": 20, "top_p": 0.8})
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.0, 20, 0.8, built_in.min_p)
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x", "temperature": 0.0})
    served = req.sampling({"top_k": 20, "top_p": 0.8})
    assert (served.temperature, served.top_k, served.top_p) == (0.0, 20, 0.8)


def test_cli_holds_no_resolution_store_or_hub_logic() -> None:
    """Resolution lives in resolve.py: no command module parses references, reads the
    store's records by hand or touches the Hub; they call the core."""
    for path in sorted((SRC / "llmrun" / "cli").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "huggingface_hub" not in text, path.name
        assert "by_repo_file" not in text and ".find(ref)" not in text, path.name
