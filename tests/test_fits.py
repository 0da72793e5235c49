"""`llmrun catalog --fits`: llmrun's memory estimate from each model's GGUF header, read from
the Hub by Range requests (not the weights), kept for offline use; `bench` figures shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import GEMMA, Cli, make_env
from hubdouble import HubDouble

from llmrun import memory, tiny_model
from llmrun.fits import assess
from llmrun.gguf_file import read_info
from llmrun.gguf_info import GGUFInfo
from llmrun.registry import parse_registry, shipped_text

REPO = "test-org/roomy-GGUF"
FILE = "roomy-F16.gguf"


def _entry_yaml(size: int, ctx: int) -> str:
    return shipped_text().split("models:")[0] + f"""models:
  roomy:1m:
    title: Roomy
    family: roomy
    params: 1M
    license: mit
    repo: {REPO}
    default_quant: F16
    ctx: {ctx}
    quants:
      F16:
        files: [{{path: {FILE}, size: {size}}}]
"""


@pytest.fixture
def roomy(tmp_path: Path) -> Path:
    """A tiny llama whose weights dwarf its header: a wide vocabulary-free shape."""
    path = tmp_path / FILE
    tiny_model.write(path, ["F16"], shape=tiny_model.Shape(embd=512, ff=1024, layers=4,
                                                           ctx=32768))
    return path


@pytest.mark.slow  # a Hub double and llmrun in other processes
def test_fits_reads_only_the_header_from_the_hub_then_works_offline(tmp_path: Path,
                                                                     roomy: Path) -> None:
    size = roomy.stat().st_size
    info = read_info(roomy)
    with HubDouble() as hub:
        hub.add_file(REPO, FILE, source=roomy)
        cli = Cli(make_env(tmp_path, HF_ENDPOINT=hub.url), tmp_path)
        (tmp_path / "home").mkdir(exist_ok=True)
        (tmp_path / "home" / "models.yaml").write_text(_entry_yaml(size, 8192))
        done = cli("catalog", "--fits", "--json", "roomy")
        assert done.returncode == 0, done.stderr
        served = sum(r.body_bytes for r in hub.responses if FILE in r.path)
    [row] = json.loads(done.stdout)
    assert row["header"] == "hub"
    assert row["ctx"] == 8192  # the entry's context: the tiny model fits at it
    expected = memory.estimate(info, 8192, weights=size).resident
    assert row["needs"] == expected and row["fits"] is True
    assert 0 < served < size // 4, (served, size)  # the header, not the weights
    # offline, with the Hub gone: the kept header gives the same answer
    offline = cli("catalog", "--fits", "--json", "roomy", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    [again] = json.loads(offline.stdout)
    assert again["header"] == "cached" and again["needs"] == expected
    table = cli("catalog", "--fits", "roomy", env={"HF_HUB_OFFLINE": "1"})
    assert table.returncode == 0
    header, line = table.stdout.splitlines()
    assert header.split("\t")[:7] == ["NAME", "PARAMS", "QUANT", "SIZE", "CONTEXT", "NEEDS",
                                      "FITS RAM"]
    assert line.split("\t")[4] == "8K" and line.split("\t")[6] == "yes"


@pytest.mark.slow  # llmrun in another process
def test_fits_without_a_header_says_so(tmp_path: Path, roomy: Path) -> None:
    cli = Cli(make_env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "models.yaml").write_text(_entry_yaml(roomy.stat().st_size, 8192))
    done = cli("catalog", "--fits", "roomy")
    assert done.returncode == 0, done.stderr
    assert "without a GGUF header to read" in done.stderr
    assert done.stdout.splitlines()[1].split("\t")[5:7] == ["?", "?"]


def _info(layers: int = 32, kv_heads: int = 8, head_dim: int = 128,
          trained: int = 131072) -> GGUFInfo:
    meta = {"general.architecture": "llama", "llama.block_count": layers,
            "llama.attention.head_count": 32, "llama.attention.head_count_kv": kv_heads,
            "llama.embedding_length": 32 * head_dim, "llama.context_length": trained}
    return GGUFInfo(path=Path("x.gguf"), file_size=4 << 30, version=3, n_tensors=0,
                    metadata=meta, array_lengths={"tokenizer.ggml.tokens": 128256})


def test_context_is_halved_until_it_fits_and_never_below_4096() -> None:
    """An 8B-shaped header: 128 KiB of KV cache per token. The entry asks for 32K."""
    entry = parse_registry(_entry_yaml(4 << 30, 32768), "t").models["roomy:1m"]
    info = _info()
    per_token = memory.kv_cache_bytes(info, 256) // 256
    assert per_token == 32 * 8 * 256 * 2
    roomy_ram = (4 << 30) + 32768 * per_token + 1
    assert assess(entry, "F16", info, available=roomy_ram, vram=None).ctx == 32768
    tight = (4 << 30) + 10000 * per_token
    fit = assess(entry, "F16", info, available=tight, vram=None)
    assert fit.ctx == 8192 and fit.fits_ram is True
    short = assess(entry, "F16", info, available=4 << 30, vram=16 << 30)
    assert short.ctx == 4096 and short.fits_ram is False and short.fits_vram is True
    unknown = assess(entry, "F16", None, available=2 << 30, vram=None)
    assert unknown.fits_ram is False and unknown.need is None  # the weights alone are too big


def test_bench_figures_show_in_fits(private_gemma_cli: Cli) -> None:
    gemma_cli = private_gemma_cli
    done = gemma_cli("bench", GEMMA, "-p", "16", "-n", "8", "-r", "1", "--json")
    assert done.returncode == 0, done.stderr
    tg = json.loads(done.stdout)["results"][1]["tokens_per_s"]["mean"]
    fits = gemma_cli("catalog", "--fits", "--json", GEMMA, env={"HF_HUB_OFFLINE": "1"})
    assert fits.returncode == 0, fits.stderr
    [row] = json.loads(fits.stdout)
    assert row["header"] == "pulled" and row["tg_tokens_per_s"] == pytest.approx(tg)
