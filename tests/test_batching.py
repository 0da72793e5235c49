"""`serve --parallel N`: requests of one model decoded together (engine/batch.py), through the
official openai client against the real model. Order, not time, proves the batching: streams
that run together all start before any of them ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import GEMMA, Cli, copy_store, make_env
from test_serve import Server

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,", "Roses are red,"]


@pytest.fixture(scope="module")
def batch_root(pulled_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_store(pulled_root, tmp_path_factory.mktemp("batch") / "root")


@pytest.fixture(scope="module")
def batch_server(batch_root: Path) -> Iterator[Server]:
    srv = Server(batch_root, "--ctx", "512", "--parallel", "4", "--queue", "8")
    yield srv
    srv.stop()


async def _stream(client: Any, prompt: str, max_tokens: int, log: list[tuple[str, str]],
                  **extra: Any) -> tuple[str, str | None, int]:
    text, finish, pieces = "", None, 0
    stream = await client.completions.create(model=GEMMA, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, stream=True, **extra)
    async for chunk in stream:
        if chunk.choices:
            if not pieces:
                log.append(("first", prompt))
            pieces += 1
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    log.append(("end", prompt))
    return text, finish, pieces


def _client(url: str) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_streams_run_together(batch_server: Server) -> None:
    log: list[tuple[str, str]] = []

    async def main() -> list[Any]:
        async with _client(batch_server.url) as client:
            return await asyncio.gather(*(_stream(client, p, 48, log) for p in PROMPTS))

    results = asyncio.run(main())
    assert all(finish == "length" and text for text, finish, _ in results)
    firsts = [i for i, (what, _) in enumerate(log) if what == "first"]
    ends = [i for i, (what, _) in enumerate(log) if what == "end"]
    assert max(firsts) < min(ends), log  # all four were generating at once


def test_one_at_a_time_it_answers_as_a_single_request_does(batch_root: Path) -> None:
    """A fresh server: a slot that already holds a prompt computed in a batch of four keeps
    that KV (prefix reuse), whose numerics differ slightly from a lone decode."""
    from openai import OpenAI

    parallel = Server(copy_store(batch_root, batch_root.parent / "fresh"), "--ctx", "512",
                      "--parallel", "4")
    batched = OpenAI(base_url=parallel.url + "/v1", api_key="x", max_retries=0)
    single = Server(copy_store(batch_root, batch_root.parent / "single"), "--ctx", "512")
    try:
        alone = OpenAI(base_url=single.url + "/v1", api_key="x", max_retries=0)
        for prompt in PROMPTS:
            args: dict[str, Any] = {"model": GEMMA, "prompt": prompt, "max_tokens": 32,
                                    "temperature": 0}
            assert (batched.completions.create(**args).choices[0].text
                    == alone.completions.create(**args).choices[0].text), prompt
    finally:
        single.stop()
        parallel.stop()


def test_a_late_request_starts_while_long_streams_run(batch_server: Server) -> None:
    log: list[tuple[str, str]] = []

    async def main() -> None:
        async with _client(batch_server.url) as client:
            long = [asyncio.create_task(_stream(client, p, 200, log)) for p in PROMPTS[:3]]
            while sum(what == "first" for what, _ in log) < 3:
                await asyncio.sleep(0.01)  # (polling our own log, not waiting for time)
            await _stream(client, "Late:", 8, log)
            await asyncio.gather(*long)

    asyncio.run(main())
    late_first = log.index(("first", "Late:"))
    assert all(log.index(("end", p)) > late_first for p in PROMPTS[:3]), log


def test_a_conversation_going_on_starts_from_its_cache_beside_running_streams(
        batch_server: Server) -> None:
    """Prefix reuse per slot: a prompt that continues an earlier one, sent while other
    streams run, evaluates only what is new; usage.prompt_tokens_details.cached_tokens
    (OpenAI's field) says how many prompt tokens came from the cache."""
    story = ("Here is a long story about a cat and a dog who lived together in a small house "
             "by the sea, and what they did each day of the week.")

    async def main() -> tuple[Any, Any]:
        async with _client(batch_server.url) as client:
            first = await client.completions.create(model=GEMMA, prompt=story, max_tokens=8,
                                                    temperature=0)
            running = []
            for prompt in PROMPTS[:2]:  # two streams, each with a token out: both decoding
                stream = await client.completions.create(
                    model=GEMMA, prompt=prompt, max_tokens=200, temperature=0, stream=True)
                await stream.__anext__()
                running.append(stream)
            try:
                again = await client.completions.create(
                    model=GEMMA, prompt=story + first.choices[0].text + " Then", max_tokens=4,
                    temperature=0)
            finally:
                for stream in running:
                    await stream.close()
            return first, again

    first, again = asyncio.run(main())
    assert first.usage.prompt_tokens > 20
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens - 1 <= cached < again.usage.prompt_tokens


def test_cancelling_one_stream_leaves_the_others_whole(batch_server: Server) -> None:
    log: list[tuple[str, str]] = []
    mark = len(batch_server.lines)

    async def cut(client: Any) -> None:
        stream = await client.completions.create(model=GEMMA, prompt="Cut me", max_tokens=300,
                                                 temperature=0, stream=True)
        async for _ in stream:
            break
        await stream.close()  # the client goes away after one chunk

    async def main() -> list[Any]:
        async with _client(batch_server.url) as client:
            kept = [_stream(client, p, 40, log) for p in PROMPTS[:2]]
            out = await asyncio.gather(cut(client), *kept)
            return list(out[1:])

    for text, finish, pieces in asyncio.run(main()):
        assert finish == "length" and text and pieces >= 1
    assert batch_server.wait_for(r"cancelled \(client disconnected\)", after=mark)


def test_a_grammar_beside_free_streams(batch_server: Server) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"]}
    log: list[tuple[str, str]] = []

    async def constrained(client: Any) -> str:
        reply = await client.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "Capital of France as JSON"}],
            max_tokens=60, temperature=0, response_format={
                "type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
        return str(reply.choices[0].message.content)

    async def main() -> list[Any]:
        async with _client(batch_server.url) as client:
            return list(await asyncio.gather(constrained(client),
                                             *(_stream(client, p, 32, log) for p in PROMPTS[:2])))

    answer, *free = asyncio.run(main())
    assert set(json.loads(answer)) == {"city"}
    assert all(finish == "length" for _, finish, _ in free)


def test_a_schema_llama_cpp_rejects_fails_alone(batch_server: Server) -> None:
    """A grammar that cannot be built is that request's 400; the slot it would have taken
    stays free and the model's process keeps serving (it once crashed at the next step)."""
    import psutil

    def children() -> list[int]:
        return [c.pid for c in psutil.Process(batch_server.proc.pid).children(recursive=True)
                if "llmrun.server.child" in " ".join(c.cmdline())]

    mark = len(batch_server.lines)
    ok = httpx.post(batch_server.url + "/v1/completions", json={
        "model": GEMMA, "prompt": "Hi", "max_tokens": 2, "temperature": 0}, timeout=120)
    assert ok.status_code == 200
    before = children()
    for _ in range(5):  # more than the slots: none may be left taken
        bad = httpx.post(batch_server.url + "/v1/chat/completions", json={
            "model": GEMMA, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "nonsense"}}}}, timeout=120)
        assert bad.status_code == 400, bad.text
    log: list[tuple[str, str]] = []

    async def main() -> list[Any]:
        async with _client(batch_server.url) as client:
            return list(await asyncio.gather(*(_stream(client, p, 8, log) for p in PROMPTS)))

    assert all(finish == "length" for _, finish, _ in asyncio.run(main()))
    assert children() == before
    assert not any("Traceback" in line or "died" in line for line in batch_server.lines[mark:])


def test_ps_counts_the_running_streams(batch_server: Server, batch_root: Path) -> None:
    cli = Cli(make_env(batch_root), batch_root)
    seen: list[int] = []
    log: list[tuple[str, str]] = []

    async def main() -> None:
        async with _client(batch_server.url) as client:
            tasks = [asyncio.create_task(_stream(client, p, 150, log)) for p in PROMPTS[:3]]
            while sum(what == "first" for what, _ in log) < 3:
                await asyncio.sleep(0.01)
            proc = await asyncio.to_thread(cli, "ps", "--endpoint", batch_server.url, "--json")
            seen.extend(m["running"] for m in json.loads(proc.stdout))
            await asyncio.gather(*tasks)

    asyncio.run(main())
    assert seen == [3]


@pytest.mark.slow  # loads a model: its native probe is another process
def test_parallel_sequences_that_cannot_fit_are_refused(tmp_path: object,
                                                        monkeypatch: object) -> None:
    """`serve --parallel N` reserves N contexts of KV cache: refused with one clear error
    when memory cannot hold them."""
    from pathlib import Path

    import pytest

    from llmrun import memory, tiny_model
    from llmrun.datatypes import LoadOptions
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine
    from llmrun.errors import ModelError

    path = Path(str(tmp_path)) / "tiny.gguf"
    tiny_model.write(path, ["F16"], shape=tiny_model.Shape(ctx=1024))
    model = Model(path, LoadOptions(n_ctx=1024, n_gpu_layers=0))
    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    try:
        need = memory.kv_cache_bytes(model.info, 1024 * 8)
        mp.setattr(memory, "available_memory", lambda: need - 1)
        with pytest.raises(ModelError, match="8 parallel sequences of 1024 tokens need"):
            BatchEngine(model, 8)
        mp.setattr(memory, "available_memory", lambda: need)
        BatchEngine(model, 8).close()
    finally:
        model.close()


def test_greedy_takes_the_token_the_sampler_chain_takes(gemma_file: Path) -> None:
    """A greedy request without a grammar or penalty skips the sampler chain (it copies every
    logit first) and takes the argmax: the same token as llama.cpp's greedy chain, step by
    step, over 64 tokens of the real model, and the same answer."""
    import llama_cpp

    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine

    model = Model(gemma_file, LoadOptions(n_ctx=512))
    engine = BatchEngine(model, 2)
    try:
        answers: dict[str, str] = {}
        for rid, greedy in (("fast", True), ("chain", False)):
            engine.start(rid, model.tokenize("Once upon a time", templated=False),
                         Sampling(temperature=0.0, max_tokens=64))
            seq = next(s for s in engine.seqs if s.rid == rid)
            assert seq.greedy  # what start() chose for these settings
            seq.greedy = greedy
            steps = 0
            pieces: list[str] = []

            def keep(_rid: str, event: dict[str, Any], into: list[str] = pieces) -> None:
                into.append(str(event.get("piece", "")))

            while engine.active:
                engine.step(keep)
                if engine.active:  # the argmax agrees with the chain at every step
                    index = -1  # one stream: the batch's last output is its token's
                    chain = engine._sampler(Sampling(temperature=0.0))
                    try:
                        assert int(engine._logits(index).argmax()) == int(
                            llama_cpp.llama_sampler_sample(chain.sampler, engine.ctx, index))
                    finally:
                        chain.close()
                    steps += 1
            assert steps >= 60
            answers[rid] = "".join(pieces)
        assert answers["fast"] == answers["chain"] and answers["fast"]
    finally:
        engine.close()
        model.close()


def test_a_prompt_that_ends_in_a_step_has_it_to_itself(gemma_file: Path) -> None:
    """A request joining running streams gets its first token from a step of its own prompt
    (the streams' tokens would cost it their time too); the streams wait that one step and
    never two in a row; a prompt longer than a step's chunk is read beside the streams and
    has a step to itself only for its last chunk."""
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import PREFILL_CHUNK, BatchEngine

    model = Model(gemma_file, LoadOptions(n_ctx=1024))
    engine = BatchEngine(model, 4)
    endless = Sampling(temperature=0.0, max_tokens=900)

    def counts() -> dict[str, int]:
        return {s.rid: s.result.completion_tokens for s in engine.seqs if s.rid is not None}

    def step() -> dict[str, int]:
        """Tokens each request got from one step."""
        before = counts()
        engine.step(lambda _rid, _event: None)
        return {rid: n - before.get(rid, 0) for rid, n in counts().items()}

    try:
        for rid, prompt in (("a", PROMPTS[0]), ("b", PROMPTS[1])):
            engine.start(rid, model.tokenize(prompt, templated=False), endless)
        assert step() == {"a": 1, "b": 1}  # nothing streamed yet: both prompts together
        assert step() == {"a": 1, "b": 1}

        engine.start("c", model.tokenize(PROMPTS[2], templated=False), endless)
        assert step() == {"a": 0, "b": 0, "c": 1}  # c's prompt alone: its first token
        engine.start("d", model.tokenize(PROMPTS[3], templated=False), endless)
        # d came right after c's step, which left the streams waiting: they go first now
        assert step() == {"a": 1, "b": 1, "c": 1, "d": 1}
        assert step() == {"a": 1, "b": 1, "c": 1, "d": 1}

        engine.cancel("d")
        assert step() == {"a": 1, "b": 1, "c": 1}
        long = model.tokenize(" ".join(["word"] * (3 * PREFILL_CHUNK)), templated=False)
        engine.start("long", long, endless)
        seen = []
        while counts()["long"] == 0:
            seen.append(step())
        assert all(s == {"a": 1, "b": 1, "c": 1, "long": 0} for s in seen[:-1])
        assert seen[-1] == {"a": 0, "b": 0, "c": 0, "long": 1}
        assert len(seen) >= 3  # read in chunks beside the streams first
    finally:
        engine.close()
        model.close()


def _busy(engine: Any) -> list[int]:
    return sorted(s.seq for s in engine.seqs if s.rid is not None)


def test_when_one_in_the_middle_ends_the_last_moves_into_its_place(gemma_file: Path) -> None:
    """llama.cpp decodes only consecutive sequence ids in one pass (engine/batch.py): when the
    middle one of three streams ends, the last moves into its slot with a copy of its cache
    and goes on as it would have (its next logits match those of the same step unmoved),
    and the slot it left keeps its tokens for a request that starts the same way."""
    import numpy as np

    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine

    model = Model(gemma_file, LoadOptions(n_ctx=512))
    logits: dict[bool, Any] = {}
    try:
        for compact in (True, False):
            engine = BatchEngine(model, 4)
            engine.compact = compact
            try:
                for rid, prompt in zip("abc", PROMPTS, strict=False):
                    engine.start(rid, model.tokenize(prompt, templated=False),
                                 Sampling(temperature=0.0, max_tokens=100))
                for _ in range(4):
                    engine.step(lambda _rid, _event: None)
                assert _busy(engine) == [0, 1, 2]
                moving = next(s for s in engine.seqs if s.rid == "c")
                engine.cancel("b")
                engine.step(lambda _rid, _event: None)  # b ends, c moves, a and c decode
                logits[compact] = np.array(engine._logits(1))  # the batch: a, then c
                if compact:
                    assert _busy(engine) == [0, 1] and moving.seq == 1
                    left = engine.seqs[2]
                    assert left.rid is None and left.cached == moving.cached[:-1]
                else:
                    assert _busy(engine) == [0, 2]
            finally:
                engine.close()
    finally:
        model.close()
    moved, unmoved = logits[True], logits[False]
    assert int(moved.argmax()) == int(unmoved.argmax())
    assert np.corrcoef(moved, unmoved)[0, 1] > 0.999  # the same cache, not an empty one


def test_a_prefix_cached_away_from_the_running_slots_is_copied_beside_them(
        gemma_file: Path) -> None:
    """A conversation whose earlier turn is cached in a slot apart from the busy ones gets a
    slot beside them with a copy of that cache: it evaluates only its new tokens, and the
    busy ids stay consecutive."""
    import numpy as np

    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine

    model = Model(gemma_file, LoadOptions(n_ctx=512))
    engine = BatchEngine(model, 5)
    done: dict[str, str] = {}

    def keep(rid: str, event: dict[str, Any]) -> None:
        if "done" in event:
            done[rid] = event["done"]["text"]

    try:
        first = model.tokenize("Here is a long story about a cat and a dog who lived together "
                               "in a small house by the sea, and what they did each day.",
                               templated=False)
        assert len(first) > 20
        engine.start("x", first, Sampling(temperature=0.0, max_tokens=4))
        while engine.active:
            engine.step(keep)
        assert engine.seqs[0].cached[:len(first)] == first
        held = list(engine.seqs[0].cached)
        for rid, prompt in zip("abc", PROMPTS[1:], strict=False):  # empty slots first
            engine.start(rid, model.tokenize(prompt, templated=False),
                         Sampling(temperature=0.0, max_tokens=100))
        assert _busy(engine) == [1, 2, 3]
        engine.cancel("a")  # at the run's edge: nothing moves
        engine.step(lambda _rid, _event: None)
        assert _busy(engine) == [2, 3]

        follow = held + model.tokenize(" The end.", templated=False)[1:]
        engine.start("y", follow, Sampling(temperature=0.0, max_tokens=4))
        y = next(s for s in engine.seqs if s.rid == "y")
        assert y.seq in (1, 4) and _busy(engine) in ([1, 2, 3], [2, 3, 4])
        assert y.result.prompt_evaluated == len(follow) - len(held)
        assert engine.seqs[0].cached == held  # the original stays for its own return
        engine.step(lambda _rid, _event: None)  # y's new tokens, alone (it joins streams)
        assert y.result.completion_tokens == 1
        copied = np.array(engine._logits(-1))
    finally:
        engine.close()
    alone = BatchEngine(model, 1)
    try:  # the same prompt from an empty cache: the copy held what its first turn left
        alone.start("z", follow, Sampling(temperature=0.0, max_tokens=4))
        alone.step(lambda _rid, _event: None)
        fresh = np.array(alone._logits(-1))
    finally:
        alone.close()
        model.close()
    assert int(copied.argmax()) == int(fresh.argmax())
    assert np.corrcoef(copied, fresh)[0, 1] > 0.999


def test_the_models_own_context_is_small_when_a_batch_engine_generates(
        gemma_file: Path) -> None:
    """serve generates through a BatchEngine's context: the model's own context then holds
    nothing and is made small (child.py's OWN_CTX), while a request still gets --ctx."""
    from llmrun import memory
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine
    from llmrun.server.child import OWN_CTX

    model = Model(gemma_file, LoadOptions(n_ctx=4096), own_ctx=OWN_CTX)
    engine = BatchEngine(model, 1)
    done: list[dict[str, Any]] = []
    try:
        assert model.n_ctx == 4096 and model.llama.n_ctx() == OWN_CTX
        assert memory.kv_cache_bytes(model.info, 4096) > 8 * memory.kv_cache_bytes(
            model.info, OWN_CTX)  # what a served model no longer holds twice
        prompt = model.tokenize(" ".join(["word"] * 600), templated=False)
        assert len(prompt) > 2 * OWN_CTX
        engine.start("long", prompt, Sampling(temperature=0.0, max_tokens=4))
        while engine.active:
            engine.step(lambda _rid, event: done.append(event) if "done" in event else None)
        assert done[0]["done"]["finish_reason"] == "length"
        assert done[0]["done"]["completion_tokens"] == 4
    finally:
        engine.close()
        model.close()


def test_under_churn_slots_stay_one_run_and_each_cache_holds_its_tokens(
        gemma_file: Path) -> None:
    """Random starts (some going on from an earlier answer), cancellations and ends for 150
    steps: every batch decoded holds consecutive sequence ids (one pass), and after every
    step llama.cpp's cache of every slot ends exactly where the engine's record of its tokens
    does (moves and copies included)."""
    import random

    import llama_cpp

    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine

    rng = random.Random(3)
    model = Model(gemma_file, LoadOptions(n_ctx=512))
    engine = BatchEngine(model, 4)
    memory = llama_cpp.llama_get_memory(engine.ctx)
    answered: list[list[int]] = []  # prompts and answers, for a request to go on from
    ended = 0
    decoded: set[int] = set()  # the sequence ids in the step's batch
    put = engine._put

    def record(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        decoded.add(seq)
        put(i, token, pos, seq, logits)

    engine._put = record  # type: ignore[method-assign]

    def keep(rid: str, event: dict[str, Any]) -> None:
        nonlocal ended
        assert "error" not in event, event  # (a decode llama.cpp refused)
        if "done" in event:
            ended += 1

    try:
        for step in range(150):
            free = [s for s in engine.seqs if s.rid is None]
            if free and rng.random() < 0.4:
                if answered and rng.random() < 0.5:  # a conversation goes on
                    tokens = rng.choice(answered) + model.tokenize(" And", templated=False)[1:]
                else:
                    tokens = model.tokenize(rng.choice(PROMPTS) * rng.randint(1, 4),
                                            templated=False)
                engine.start(f"r{step}", tokens, Sampling(
                    temperature=rng.choice([0.0, 0.8]), max_tokens=rng.randint(1, 30)))
            busy = [s for s in engine.seqs if s.rid is not None]
            if busy and rng.random() < 0.1:
                engine.cancel(str(rng.choice(busy).rid))
            decoded.clear()
            engine.step(keep)
            for s in engine.seqs:
                if s.rid is None and s.cached and len(s.cached) < 400:
                    answered.append(list(s.cached))
            ids = sorted(decoded)
            assert not ids or ids == list(range(ids[0], ids[0] + len(ids))), (step, ids)
            for s in engine.seqs:
                got = int(llama_cpp.llama_memory_seq_pos_max(memory, s.seq))
                assert got == len(s.cached) - 1, (step, s.seq, got, len(s.cached))
        assert ended > 20
    finally:
        engine.close()
        model.close()
