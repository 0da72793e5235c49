"""Unit tests for our own logic: references, quant selection, the shipped registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrun import quants
from llmrun.errors import InvalidReference, NotFound, RegistryError
from llmrun.refs import HubRef, LocalRef, RegistryRef, parse
from llmrun.registry import Registry, parse_registry, shipped_text


@pytest.fixture(scope="module")
def reg() -> Registry:
    return Registry.load()


def test_registry_names_aliases_and_quant_tags(reg: Registry) -> None:
    ref = parse("GEMMA3:270M-BASE", reg)
    assert isinstance(ref, RegistryRef) and ref.name == "gemma3:270m-base"
    assert ref.quant == "Q4_K_M"
    alias = parse("llama3.2", reg)
    assert isinstance(alias, RegistryRef) and alias.name == "llama3.2:3b"
    q8 = parse("llama3.2:1b-q8_0", reg)
    assert isinstance(q8, RegistryRef) and q8.quant == "Q8_0" and q8.display == "llama3.2:1b-q8_0"
    with pytest.raises(NotFound, match="no quant") as exc:
        parse("llama3.2:1b-q2_k", reg)
    assert exc.value.hint and "q4_k_m" in exc.value.hint


def test_unknown_name_suggests(reg: Registry) -> None:
    with pytest.raises(NotFound) as exc:
        parse("lama3.2:1b", reg)
    assert exc.value.hint and "llama3.2:1b" in exc.value.hint


@pytest.mark.parametrize("text,repo,quant,rev", [
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "bartowski/Llama-3.2-1B-Instruct-GGUF",
     None, None),
    ("huggingface.co/org/repo:q8_0", "org/repo", "q8_0", None),
    ("hf.co/org/repo:Q4_K_M@abc123", "org/repo", "Q4_K_M", "abc123"),
    ("org/repo:Q4_K_M", "org/repo", "Q4_K_M", None),
])
def test_hub_refs(reg: Registry, text: str, repo: str, quant: str | None,
                  rev: str | None) -> None:
    assert parse(text, reg) == HubRef(repo, quant, rev)


def test_local_paths(reg: Registry) -> None:
    assert parse("./m.gguf", reg) == LocalRef(Path("m.gguf"))
    assert parse("model.GGUF", reg) == LocalRef(Path("model.GGUF"))
    with pytest.raises(InvalidReference):
        parse("/etc/passwd", reg)


@pytest.mark.parametrize("bad", [
    "", "a" * 300, "x\x1by", "..", "org/../x", "hf.co/org/..", "hf.co/org/repo:../q",
    "C:\\models\\x", "\\\\srv\\share", "%2e%2e%2f", "name with space", "hf.co/a/b/c",
])
def test_invalid_refs(reg: Registry, bad: str) -> None:
    with pytest.raises(InvalidReference):
        parse(bad, reg)


LISTING = [
    "README.md", "model-Q2_K.gguf", "model-Q4_K_M.gguf", "model-Q8_0.gguf",
    "mmproj-model-f16.gguf", "model-IQ4_XS.gguf",
    "big/model-Q6_K-00001-of-00002.gguf", "big/model-Q6_K-00002-of-00002.gguf",
    "model-Q4_K.imatrix.gguf",
]


def test_quant_selection_follows_llama_cpp() -> None:
    assert quants.select(LISTING, None, "o/r") == ["model-Q4_K_M.gguf"]
    assert quants.select(LISTING, "q8_0", "o/r") == ["model-Q8_0.gguf"]
    assert quants.select(LISTING, "Q6_K", "o/r") == [
        "big/model-Q6_K-00001-of-00002.gguf", "big/model-Q6_K-00002-of-00002.gguf"]
    assert quants.select(LISTING, "model-IQ4_XS.gguf", "o/r") == ["model-IQ4_XS.gguf"]
    # Q4_K must not match Q4_K_M (the separator rule)
    with pytest.raises(NotFound) as exc:
        quants.select(["m-Q4_K_M.gguf"], "Q4_K", "o/r")
    assert exc.value.hint == "available: Q4_K_M"
    # no default quant present: the first model file
    assert quants.select(["a-F16.gguf", "mmproj-x.gguf"], None, "o/r") == ["a-F16.gguf"]
    with pytest.raises(NotFound):
        quants.select(["mmproj-only.gguf", "x.bin"], None, "o/r")


def test_shipped_registry_is_consistent(reg: Registry) -> None:
    assert len(reg.models) >= 25
    names = [n.lower() for n in reg.models]
    assert len(names) == len(set(names))
    for name, e in reg.models.items():
        for q, quant in e.quants.items():
            for f in quant.files:
                assert re.search(re.escape(q) + r"[.-]", f.path, re.I), (name, q, f.path)
            parts = [quants.SPLIT_RE.match(f.path) for f in quant.files]
            if any(parts):
                assert quants.split_parts(quant.files[0].path) == [f.path for f in quant.files]
        for alias, target in reg.aliases.items():
            assert target in reg.models and alias not in reg.models
    demo = reg.models["gemma3:270m-base"]
    f = demo.quants["Q4_K_M"].files[0]
    assert f.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert f.size == 253113024 and f.package is not None and demo.chat_format == "gemma"


def test_families_the_issue_names_are_present(reg: Registry) -> None:
    families = {e.family for e in reg.models.values()}
    for fam in ("llama3.2", "qwen2.5", "qwen3", "gemma2", "gemma3", "mistral", "smollm2",
                "deepseek-r1", "tinyllama", "llama2", "vicuna", "falcon3"):
        assert fam in families, fam


def test_malformed_registry_reports_every_bad_field() -> None:
    text = shipped_text().replace("params: 268M", "params: many").replace(
        "default_quant: Q4_K_M\n    chat_format: gemma", "default_quant: Q9\n    chat_format: x")
    with pytest.raises(RegistryError) as exc:
        parse_registry(text, "test.yaml")
    lines = exc.value.message.splitlines()
    assert lines[0].startswith("test.yaml: ")
    assert any("params" in ln for ln in lines) and any("chat_format" in ln for ln in lines)
    with pytest.raises(RegistryError, match="not valid YAML"):
        parse_registry("models: [", "x.yaml")


def test_user_registry_overrides_and_adds(tmp_path: Path) -> None:
    user = tmp_path / "models.yaml"
    user.write_text(shipped_text().split("models:")[0] + """models:
  mine:1b:
    title: Mine
    family: mine
    params: 1B
    license: mit
    repo: me/mine-GGUF
    default_quant: Q8_0
    quants:
      Q8_0:
        files: [{path: mine-Q8_0.gguf}]
""")
    reg = Registry.load(user)
    assert "mine:1b" in reg.models and "gemma3:270m-base" in reg.models
