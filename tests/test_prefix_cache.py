"""The on-disk prompt prefix cache (prefix_cache.py): what it trusts (nothing unchecked),
what it keeps (bounded, least recently used out), and that a cached run answers exactly as an
uncached one, with the real model."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Cli, make_env

from llmrun.prefix_cache import MIN_TOKENS, PrefixCache, cache_key

TOKENS = list(range(1000, 1000 + 3 * MIN_TOKENS))


def _cache(tmp_path: Path, limit: int = 1 << 30) -> PrefixCache:
    return PrefixCache(tmp_path / "prefix", limit)


def test_the_longest_shared_prefix_is_found(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.store("k", TOKENS[: 2 * MIN_TOKENS], b"short")
    cache.store("k", TOKENS, b"long")
    hit = cache.lookup("k", [*TOKENS, 7, 8])
    assert hit is not None and (hit.payload, hit.usable) == (b"long", len(TOKENS))
    hit = cache.lookup("k", [*TOKENS[:2 * MIN_TOKENS], 7])
    assert hit is not None and hit.payload == b"short"
    assert cache.lookup("k", [*TOKENS[:MIN_TOKENS - 1], 7]) is None  # too short to pay
    assert cache.lookup("other-key", TOKENS) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "foreign"])
def test_a_damaged_entry_is_ignored_and_removed(tmp_path: Path, damage: str) -> None:
    cache = _cache(tmp_path)
    path = cache.store("k", TOKENS, b"x" * 4096)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-100])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # written for another key (model, options or build), then moved here
        other = cache.store("other", TOKENS, b"y" * 4096)
        os.replace(other, path)
    assert cache.lookup("k", TOKENS) is None
    assert not path.exists()  # never trusted again
    cache.store("k", TOKENS, b"z")  # and replaced
    hit = cache.lookup("k", TOKENS)
    assert hit is not None and hit.payload == b"z"


def test_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = _cache(tmp_path, limit=14_000)  # three entries fit (about 4.2 kB each), four do not
    paths = []
    for i in range(3):
        paths.append(cache.store("k", [*TOKENS, i], b"p" * 3000))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    assert cache.lookup("k", [*TOKENS, 0]) is not None  # used: now the most recent
    cache.store("k", [*TOKENS, 9], b"p" * 3000)  # over the limit: the oldest unused goes
    assert paths[0].exists() and not paths[1].exists() and paths[2].exists()
    assert sum(e["size"] for e in cache.entries()) <= 14_000


def _writer(root: str, n: int, size: int) -> None:
    cache = PrefixCache(Path(root), 1 << 30)
    for _ in range(n):
        cache.store("k", TOKENS, bytes([size % 256]) * size)


def test_two_processes_racing_on_one_entry_leave_it_whole(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "prefix"), 40, size))
             for size in (100_000, 300_000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    hit = _cache(tmp_path).lookup("k", TOKENS)
    assert hit is not None and hit.payload in (bytes([100_000 % 256]) * 100_000,
                                               bytes([300_000 % 256]) * 300_000)
    assert [p.name for p in (tmp_path / "prefix" / "k").iterdir()] == [hit.path.name]


def test_the_key_covers_what_changes_the_kv_cache() -> None:
    base = {"model": "a" * 64, "n_ctx": 4096, "flash_attn": 1, "build": "x"}
    assert cache_key(base) == cache_key(dict(base))
    for field, value in (("model", "b" * 64), ("n_ctx", 2048), ("flash_attn", 0),
                         ("build", "y")):
        assert cache_key({**base, field: value}) != cache_key(base)


# ---- with the real model -------------------------------------------------------------------
INSTRUCTIONS = " ".join(f"Rule {i}: answer briefly and never repeat rule {i}." for i in range(60))


def _run(cli: Cli, model: Path, question: str, *extra: str) -> dict[str, object]:
    proc = cli("run", str(model), "--raw", "--temperature", "0", "-n", "24", "--json",
               *extra, f"{INSTRUCTIONS}\n\n{question}")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_a_cached_run_answers_exactly_as_an_uncached_one(gemma_file: Path,
                                                         tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)
    first = _run(cli, gemma_file, "Question one?")
    assert first["timings"]["prompt_tokens_from_cache"] == 0  # type: ignore[index]
    second = _run(cli, gemma_file, "Question one?")
    third = _run(cli, gemma_file, "A different question?")
    uncached = _run(cli, gemma_file, "A different question?", "--no-cache")
    used = second["timings"]["prompt_tokens_from_cache"]  # type: ignore[index]
    assert used > 500 and third["timings"]["prompt_tokens_from_cache"] == used  # type: ignore[index]
    assert second["text"] == first["text"] and third["text"] == uncached["text"]
    assert uncached["timings"]["prompt_tokens_from_cache"] == 0  # type: ignore[index]
    evaluated = second["timings"]["prompt_tokens_evaluated"]  # type: ignore[index]
    assert evaluated < 20  # only the question
    listed = json.loads(cli("cache", "ls", "--json").stdout)
    assert len(listed) == 1 and listed[0]["tokens"] == used
    verbose = cli("run", str(gemma_file), "--raw", "--temperature", "0", "-n", "4", "-v",
                  f"{INSTRUCTIONS}\n\nQuestion one?")
    assert f"prompt from cache:    {used} token(s)" in verbose.stderr


def test_a_corrupted_cache_file_costs_a_recompute_never_a_wrong_answer(
        gemma_file: Path, tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)
    first = _run(cli, gemma_file, "Question?")
    [entry] = (tmp_path / "home" / "cache" / "prefix").glob("*/*.kv")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in the KV state
    entry.write_bytes(bytes(data))
    again = _run(cli, gemma_file, "Question?")
    assert again["text"] == first["text"]
    assert again["timings"]["prompt_tokens_from_cache"] == 0  # type: ignore[index]
    assert entry.exists() and entry.read_bytes() != bytes(data)  # replaced by a good one
    assert _run(cli, gemma_file, "Question?")["timings"][  # type: ignore[index]
        "prompt_tokens_from_cache"] > 0


def test_no_cache_and_a_zero_size_write_nothing(gemma_file: Path, tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)
    _run(cli, gemma_file, "Q?", "--no-cache")
    off = Cli(make_env(tmp_path, LLMRUN_PREFIX_CACHE="0"), tmp_path)
    _run(off, gemma_file, "Q?")
    assert not list((tmp_path / "home").glob("cache/prefix/*/*.kv"))
    bad = off("run", str(gemma_file), "--raw", "-n", "1", "x",
              env={"LLMRUN_PREFIX_CACHE": "lots"})
    assert bad.returncode == 2 and "LLMRUN_PREFIX_CACHE" in bad.stderr


def test_cache_rm_empties_it(gemma_file: Path, tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)
    _run(cli, gemma_file, "Q?")
    assert json.loads(cli("cache", "ls", "--json").stdout)
    proc = cli("cache", "rm")
    assert proc.returncode == 0 and "removed 1 cached prefix" in proc.stderr
    assert json.loads(cli("cache", "ls", "--json").stdout) == []


TEMPLATE = Path(__file__).parent / "fixtures" / "gemma-tools.jinja"


@pytest.fixture(scope="module")
def chat_model(gemma_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real weights with a chat template (tests/fixtures/gemma-tools.jinja)."""
    model = tmp_path_factory.mktemp("chat") / "chat.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gemma_file),
                    str(model), "--chat-template-file", str(TEMPLATE), "--force"],
                   check=True, capture_output=True, timeout=300)
    return model


def test_a_system_prompt_is_evaluated_once_across_runs(chat_model: Path,
                                                       tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)
    args = ("run", str(chat_model), "--no-think", "--temperature", "0", "-n", "16", "--json",
            "-s", INSTRUCTIONS)
    first = json.loads(cli(*args, "What is 2+2?").stdout)
    second = json.loads(cli(*args, "What is 3+3?").stdout)
    uncached = json.loads(cli(*args, "What is 3+3?", "--no-cache").stdout)
    assert first["timings"]["prompt_tokens_from_cache"] == 0
    assert second["timings"]["prompt_tokens_from_cache"] > 500
    assert second["text"] == uncached["text"]


def test_chat_continue_resumes_from_the_cached_conversation(chat_model: Path,
                                                            tmp_path: Path) -> None:
    model = chat_model
    cli = Cli(make_env(tmp_path), tmp_path)
    args = ("chat", str(model), "--no-think", "--temperature", "0", "-n", "12")
    proc = cli(*args, "-s", INSTRUCTIONS, input="Hello there\n")
    assert proc.returncode == 0, proc.stderr
    resumed = cli(*args, "-c", "-v", input="And then?\n")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed 2 message(s)" in resumed.stderr
    found = [line for line in resumed.stderr.splitlines() if "prompt from cache" in line]
    assert found and int(found[0].split(":")[1].split()[0]) > 500




def test_an_unreadable_cache_is_an_empty_one(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(tmp_path)
    cache.store("k", TOKENS, b"x")

    def refuse(self: Path) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)  # (file permissions do not stop root)
    assert cache.lookup("k", TOKENS) is None  # no error: the cache is an extra
