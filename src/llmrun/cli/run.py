"""`llmrun run MODEL [PROMPT]`: answer once; for shell scripts and pipes."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..errors import UsageError
from . import complete, gen, output

MAX_STDIN = 64 * 1024 * 1024


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _read_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    data = sys.stdin.buffer.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        raise UsageError(f"input on stdin is larger than {MAX_STDIN // 2**20} MiB")
    return data.decode("utf-8", "replace")


def run_cmd(
    model: Annotated[str, typer.Argument(
        help="registry name, hf.co/ORG/REPO[:QUANT], or .gguf", autocompletion=complete.any_model)],
    prompt: Annotated[str | None, typer.Argument(help="the prompt; stdin comes first")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="system prompt")] = None,
    each_line: Annotated[bool, typer.Option(
        "--each-line", help="every stdin line is its own prompt; the model loads once")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="one JSON object: text, reasoning, finish reason, usage, timings")] = False,
    temperature: gen.Temperature = None, top_p: gen.TopP = None, top_k: gen.TopK = None,
    min_p: gen.MinP = None, repeat_penalty: gen.RepeatPenalty = None, seed: gen.Seed = None,
    max_tokens: gen.MaxTokens = None, stop: gen.Stop = None, ctx: gen.CtxC = None,
    gpu_layers: gen.GpuLayers = None, threads: gen.Threads = None, raw: gen.Raw = False,
    fmt: gen.Format = None, schema: gen.Schema = None, verbose: gen.Verbose = False,
    no_pull: gen.NoPull = False, endpoint: gen.Endpoint = None, api_key: gen.ApiKey = None,
    think: gen.Think = None, no_think: gen.NoThink = False,
    show_thinking: gen.ShowThinking = None, think_budget: gen.ThinkBudget = None,
    no_cache: gen.NoCache = False, image: gen.Images = None,
    allow_image_urls: gen.AllowImageUrls = False,
) -> None:
    """Answer one prompt (argument and/or piped stdin) on stdout, streamed. A reasoning
    model's trace never goes to stdout: it is on stderr (--show-thinking) and in --json.
    With no prompt on a terminal, it opens a chat (as `ollama run` does)."""
    if prompt is None and not each_line and _stdin_is_terminal():
        if as_json or raw or fmt or schema or image:
            raise UsageError("no prompt: give one as an argument or on stdin",
                             hint=f"without --json, --raw, --format, --schema or --image, "
                                  f"`llmrun run {model}` opens a chat (/image adds images)")
        from .chat import chat_cmd

        chat_cmd(model, system=system, temperature=temperature, top_p=top_p, top_k=top_k,
                 min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens,
                 stop=stop, ctx=ctx, gpu_layers=gpu_layers, threads=threads, verbose=verbose,
                 no_pull=no_pull, endpoint=endpoint, api_key=api_key, think=think,
                 no_think=no_think, show_thinking=show_thinking, think_budget=think_budget,
                 no_cache=no_cache)
        return
    stdin = _read_stdin()
    if each_line:
        prompts = [line for line in stdin.splitlines() if line.strip()]
        if not prompts:
            raise UsageError("--each-line needs prompts on stdin, one per line")
        if prompt:
            prompts = [f"{p}\n\n{prompt}" for p in prompts]
    else:
        text = "\n\n".join(p for p in (stdin.strip("\n"), prompt) if p)
        if not text.strip():
            raise UsageError("no prompt: give one as an argument or on stdin")
        prompts = [text]
    flags = gen.Flags(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                      repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens,
                      stop=stop, ctx=ctx, gpu_layers=gpu_layers, threads=threads, raw=raw,
                      fmt=fmt, schema=schema, verbose=verbose, no_pull=no_pull,
                      endpoint=endpoint, api_key=api_key, think=think, no_think=no_think,
                      show_thinking=show_thinking, think_budget=think_budget, no_cache=no_cache)
    images = gen.read_images(image, allow_image_urls)  # checked before any model is loaded
    session = gen.open_session(model, flags, system=system, vision=bool(images) or False)
    for i, p in enumerate(prompts):
        trace = gen.TraceSink(show_thinking if as_json is False or show_thinking else False)
        if as_json:
            result = gen.answer(session, p, None, trace, images)
            output.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
        else:
            if i:
                output.write("\n")
            result = gen.answer(session, p, gen.StdoutSink(), trace, images)
        output.write("", flush=True)
        if verbose:
            gen.print_timings(result)
        remember = getattr(session, "remember_prefix", None)
        if remember is not None:  # a local model: keep the prompt's reusable prefix on disk
            remember()
