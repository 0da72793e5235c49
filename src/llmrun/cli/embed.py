"""`llmrun embed MODEL [TEXT]`: vectors for one text, or for each line of stdin (one load, the
lines batched together), as JSON lines or raw float32."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from . import common, gen, output

if TYPE_CHECKING:
    from pathlib import Path

    from ..embeddings import EmbedFacts
    from ..engine.embed import Embedder

MAX_STDIN = 64 * 1024 * 1024
CHUNK = 1024  # texts embedded (and written) at a time; batches form within a chunk

Task = Annotated[str | None, typer.Option(
    "--task", metavar="query|document", help="put the registry's prefix for this task before "
    "each text (nomic-embed-text: 'search_query: ' ...)")]
Normalize = Annotated[bool | None, typer.Option(
    "--normalize/--no-normalize", help="L2-normalize the vectors [default: on, unless the "
    "registry says the model's vectors are used as they are]")]
Dims = Annotated[int | None, typer.Option(
    "--dims", min=1, help="cut vectors to N dimensions (a Matryoshka size the registry lists "
    "for the model), then normalize")]
Format = Annotated[str, typer.Option(
    "--format", metavar="json|raw", help="json: one {\"index\", \"embedding\"} line per text; "
    "raw: float32 little-endian rows, no header (numpy.frombuffer(data, '<f4'))")]
Truncate = Annotated[bool, typer.Option(
    "--truncate", help="cut a text longer than the context to fit, instead of failing")]
Ctx = Annotated[int | None, typer.Option(
    "--ctx", min=16, help="longest text in tokens [default: up to 2048, within what the model "
    "was trained on]")]


def _stdin_lines() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no text: give one as an argument, or pipe texts on stdin, one per line")
    data = sys.stdin.buffer.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        raise UsageError(f"input on stdin is larger than {MAX_STDIN // 2**20} MiB")
    lines = [line.removesuffix("\r") for line in data.decode("utf-8", "replace").split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise UsageError("no text on stdin: one text per line")
    for i, line in enumerate(lines):
        if not line:
            raise UsageError(f"line {i + 1} of stdin is empty: every line is one text",
                             hint="drop empty lines first: grep -v '^$' FILE | llmrun embed ...")
    return lines


def _load(path: Path, name: str, facts: EmbedFacts, *, ctx: int | None,
          gpu_layers: int | None, threads: int | None, verbose: bool) -> Embedder:
    from ..datatypes import LoadOptions
    from ..engine.embed import Embedder

    s = common.settings()
    opts = LoadOptions(n_ctx=ctx or s.ctx, n_gpu_layers=gpu_layers if gpu_layers is not None
                       else s.gpu_layers, n_threads=threads or s.threads,
                       flash_attn=s.flash_attn, extra_buffers=s.cpu_extra_buffers,
                       state_dir=str(s.state_dir))
    embedder = Embedder(path, opts, facts=facts, debug=s.debug, name=name)
    for line in (embedder.notice, embedder.note):
        if line:
            output.notice(line)
    if embedder.memory_warning:
        output.warn(embedder.memory_warning)
    if embedder.ctx_capped:
        output.warn(f"context capped at {embedder.n_ctx}, the context {name} was trained on")
    gen.warn_if_no_offload(opts.n_gpu_layers, embedder.offload_supported)
    if verbose:
        output.info(f"model: {path}\npooling: {embedder.pooling}, dimensions: {embedder.dim}, "
                    f"context: {embedder.n_ctx} tokens, threads: {embedder.threads}, gpu layers: "
                    f"{embedder.gpu_layers}")
    return embedder


def _write_raw(data: bytes) -> None:
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise output.OutputClosed() from None


def embed_cmd(
    model: Annotated[str, typer.Argument(help="registry name, hf.co/ORG/REPO[:QUANT], or .gguf")],
    text: Annotated[str | None, typer.Argument(
        help="the text; without it, each line of stdin is one text")] = None,
    task: Task = None, normalize: Normalize = None, dims: Dims = None, fmt: Format = "json",
    truncate: Truncate = False, ctx: Ctx = None, gpu_layers: gen.GpuLayers = None,
    threads: gen.Threads = None, no_pull: gen.NoPull = False, verbose: gen.Verbose = False,
) -> None:
    """Embed texts: one vector per text, in input order, on stdout. Any model can embed (a
    generative one by mean pooling); embedding models (nomic-embed-text, bge) are made for it."""
    from ..embeddings import TASKS, EmbedFacts, check_dims, finish, json_line, raw_bytes

    if fmt not in ("json", "raw"):
        raise UsageError(f"unknown --format {fmt!r}", hint="use --format json or --format raw")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown --task {task!r}", hint="use --task query or --task document")
    if fmt == "raw" and output.stdout_is_tty():
        raise UsageError("--format raw writes binary float32 rows: send stdout to a file or a "
                         "pipe")
    if text is not None and not text:
        raise UsageError("the text is empty")
    texts = [text] if text is not None else _stdin_lines()
    path, name, entry = common.ensure_local(model, no_pull=no_pull)
    facts = EmbedFacts.of(entry)
    check_dims(dims, None, facts, name)  # what can be refused before the load
    if task is not None and not facts.has_prompts:
        output.notice(f"no task prefixes are known for {name}: its texts are embedded as given")
    elif task is None and facts.has_prompts:
        output.notice(f"{name} expects a task prefix: pass --task query or --task document")
    prefix = facts.prefix(task)
    embedder = _load(path, name, facts, ctx=ctx, gpu_layers=gpu_layers, threads=threads,
                     verbose=verbose)
    try:
        cut = check_dims(dims, embedder.dim, facts, name)
        norm = facts.normalizes(normalize)
        start, tokens = time.perf_counter(), 0
        for first in range(0, len(texts), CHUNK):
            got = embedder.embed([prefix + t for t in texts[first : first + CHUNK]],
                                 truncate=truncate)
            vectors = finish(got.vectors, normalize=norm, dims=cut)
            tokens += got.tokens
            if fmt == "raw":
                _write_raw(raw_bytes(vectors))
            else:
                output.write("".join(json_line(first + i, v) for i, v in enumerate(vectors)),
                             flush=True)
        took = time.perf_counter() - start
    finally:
        embedder.close()
    if verbose:
        output.info(f"load duration:  {embedder.load_s:.3f}s\ntexts:          {len(texts)}\n"
                    f"tokens:         {tokens}\nembed duration: {took:.3f}s\n"
                    f"embed rate:     {tokens / took if took > 0 else 0:.2f} tokens/s")
