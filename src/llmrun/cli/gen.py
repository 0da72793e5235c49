"""Generation flags shared by `run` and `chat`, and the code that turns them into a session."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from . import common, output
from .output import OutputClosed

if TYPE_CHECKING:
    from ..client import RemoteSession
    from ..datatypes import Result, Sampling
    from ..engine import Model
    from ..images import Image
    from ..registry import Entry
    from ..reply import Think as Think_
    from ..session import Session

    AnySession = Session | RemoteSession

Temperature = Annotated[float | None, typer.Option(
    "--temperature", "--temp", min=0.0, max=2.0,
    help="0 = greedy (deterministic); at most 2, as in OpenAI's API and `llmrun serve`")]
TopP = Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0)]
TopK = Annotated[int | None, typer.Option("--top-k", min=0, max=1000)]
MinP = Annotated[float | None, typer.Option("--min-p", min=0.0, max=1.0)]
RepeatPenalty = Annotated[float | None, typer.Option("--repeat-penalty", min=0.01, max=5.0)]
Seed = Annotated[int | None, typer.Option("--seed", min=0)]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", "-n", min=1,
                                               help="stop after N tokens")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")]
Ctx = Annotated[int | None, typer.Option("--ctx", "--ctx-size", min=16,
                                         help="context size in tokens")]
# where -c is free (chat has -c for --continue), llama.cpp's short form too
CtxC = Annotated[int | None, typer.Option("--ctx", "--ctx-size", "-c", min=16,
                                          help="context size in tokens")]
GpuLayers = Annotated[int | None, typer.Option(
    "--gpu-layers", "-ngl", min=-1,
    help="layers to offload to the GPU; -1 = all (default when the build supports offload)")]
Threads = Annotated[int | None, typer.Option("--threads", "-t", min=1,
                                             help="default: physical cores")]
Raw = Annotated[bool, typer.Option("--raw", help="plain completion, no chat template")]
Format = Annotated[str | None, typer.Option("--format", help="'json': output is valid JSON")]
Schema = Annotated[str | None, typer.Option(
    "--schema", "--json-schema",
    help="JSON schema (file path or inline JSON) the output must match")]
Think = Annotated[str | None, typer.Option(
    "--think", metavar="on|off|low|medium|high", help="reasoning models: thinking on or off "
    "(Qwen3, ...) or its effort (gpt-oss); default: the model's own")]
NoThink = Annotated[bool, typer.Option("--no-think", help="the same as --think off")]
ShowThinking = Annotated[bool | None, typer.Option(
    "--show-thinking/--hide-thinking", help="the reasoning trace on stderr (never on stdout); "
    "default: shown, dimmed, when stderr is a terminal")]
NoCache = Annotated[bool, typer.Option(
    "--no-cache", help="neither use nor keep prompt prefixes on disk (LLMRUN_PREFIX_CACHE=0 "
    "for good)")]
ThinkBudget = Annotated[int | None, typer.Option(
    "--think-budget", min=0, help="at most N tokens of reasoning, then the model must answer")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="timings on stderr")]
NoPull = Annotated[bool, typer.Option("--no-pull", help="fail instead of pulling")]
Endpoint = Annotated[str | None, typer.Option(
    "--endpoint", help="an OpenAI-compatible server (e.g. http://gpu-box:8000) to use instead "
    "of a local model [env LLMRUN_ENDPOINT, else OPENAI_BASE_URL]")]
Images = Annotated[list[str] | None, typer.Option(
    "--image", "-i", metavar="FILE", help="an image for a vision model (PNG, JPEG or WebP; "
    "repeatable), before the prompt's text")]
AllowImageUrls = Annotated[bool, typer.Option(
    "--allow-image-urls", help="let --image be an http(s) URL, fetched by llmrun (10 s, "
    "20 MiB at most)")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", help="Bearer token for --endpoint [env LLMRUN_API_KEY; OPENAI_API_KEY goes "
    "only to OPENAI_BASE_URL or api.openai.com]")]


@dataclass(kw_only=True)
class Flags:
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repeat_penalty: float | None
    seed: int | None
    max_tokens: int | None
    stop: list[str] | None
    ctx: int | None
    gpu_layers: int | None
    threads: int | None
    raw: bool
    fmt: str | None
    schema: str | None
    verbose: bool
    no_pull: bool
    endpoint: str | None = None
    api_key: str | None = None
    think: str | None = None
    no_think: bool = False
    show_thinking: bool | None = None
    think_budget: int | None = None
    no_cache: bool = False


_THINK: dict[str, Think_] = {
    "on": True, "true": True, "yes": True, "off": False, "false": False, "no": False,
    "low": "low", "medium": "medium", "high": "high"}


def _think(f: Flags) -> Think_:
    """--think/--no-think as None (the model's default), True, False or an effort level."""
    if f.no_think:
        if f.think is not None and _THINK.get(f.think.lower()) is not False:
            raise UsageError("--no-think and --think contradict each other")
        return False
    if f.think is None:
        return None
    value = _THINK.get(f.think.lower())
    if value is None:
        raise UsageError(f"unknown --think {f.think!r}", hint="use on, off, low, medium or high")
    return value


def _schema(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read schema file {value}: {exc.strerror}") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UsageError("--schema must be a JSON object")
    return schema


BASE_MODEL_LIMIT = 256  # tokens: a base model runs on until the context is full otherwise
def _overrides(f: Flags) -> dict[str, Any]:
    """The sampling values the user set on the command line (and only those)."""
    from ..datatypes import SAMPLING_KEYS

    return {k: getattr(f, k) for k in SAMPLING_KEYS if getattr(f, k) is not None}


def _sampling(f: Flags) -> Sampling:
    """The flags over the built-ins; a local model's registry defaults are layered under the
    flags later (_with_defaults). Checks --format and reads --schema, before a pull or a load."""
    from ..datatypes import layer_sampling

    if f.fmt not in (None, "json"):
        raise UsageError(f"unknown --format {f.fmt!r}", hint="the only format is 'json'")
    sampling = layer_sampling(_overrides(f), {})
    # llama-cpp-python's default seed is fixed: without --seed, draw one so that sampled
    # answers differ between runs, as users expect
    sampling.seed = f.seed if f.seed is not None else secrets.randbelow(2**31)
    sampling.max_tokens, sampling.stop = f.max_tokens, list(f.stop or [])
    sampling.json_schema, sampling.json_any = _schema(f.schema), f.fmt == "json"
    return sampling


def _with_defaults(sampling: Sampling, f: Flags, defaults: Mapping[str, Any]) -> Sampling:
    """``sampling`` with the registry's defaults under the flags (datatypes.layer_sampling)."""
    from dataclasses import replace

    from ..datatypes import SAMPLING_KEYS, layer_sampling

    layered = layer_sampling(_overrides(f), defaults)
    return replace(sampling, **{k: getattr(layered, k) for k in SAMPLING_KEYS})


def read_images(names: list[str] | None, allow_urls: bool) -> list[Image]:
    """--image values, each read and checked (images.py) before any model is loaded."""
    from ..images import load

    return [load(name, allow_urls=allow_urls) for name in names or []]


def open_session(model: str, f: Flags, *, system: str | None,
                 trim: bool = False, vision: bool | None = None) -> AnySession:
    """``vision``: True when images will be sent (the model must have a projector); None:
    the projector is loaded when the model has one (chat); False: never (run, text only)."""
    from ..session import Session
    from ..settings import remote

    think = _think(f)
    target = remote(common.settings(), f.endpoint, f.api_key)
    if target is not None:
        from ..client import RemoteSession

        if target.source == "OPENAI_BASE_URL":  # not llmrun's own setting: never silent
            output.notice(f"sending to {target.url} (OPENAI_BASE_URL); `LLMRUN_ENDPOINT= "
                          f"llmrun ...` runs the model here")
        overrides = _overrides(f)  # only what the user set: the server's and the model's
        if f.seed is not None:  # own defaults stand for the rest
            overrides["seed"] = f.seed
        return RemoteSession(target.url, model, _sampling(f), target.api_key,
                             system=system, raw=f.raw, trim=trim, overrides=overrides,
                             warn=output.warn, think=think)
    if f.raw and system:
        raise UsageError("--system has no effect with --raw (no chat template is used)")
    if f.raw and vision:
        raise UsageError("--image needs the chat template: drop --raw")
    sampling = _sampling(f)  # validate flags before a pull or a load
    path, name, entry = common.ensure_local(model, no_pull=f.no_pull)
    if entry is not None:
        sampling = _with_defaults(sampling, f, entry.defaults.model_dump())
    mmproj = _projector(name, entry, required=bool(vision)) if vision is not False else None
    loaded = load_model(path, name, entry, ctx=f.ctx, gpu_layers=f.gpu_layers,
                        threads=f.threads, verbose=f.verbose, mmproj=mmproj)
    if entry is not None and not entry.instruct:  # the registry knows it is a base model
        if not f.raw:
            output.warn(f"{name} is a base model (not instruction-tuned): it continues text "
                        f"rather than answering; `llmrun run {name} --raw \"TEXT\"` is plain "
                        "completion")
        if f.max_tokens is None:
            sampling.max_tokens = BASE_MODEL_LIMIT
            output.notice(f"{name} is a base model and does not stop by itself: at most "
                          f"{BASE_MODEL_LIMIT} tokens per answer (-n N to change)")
    session = Session(loaded, sampling, system=system, raw=f.raw, trim=trim, think=think,
                      budget=f.think_budget, reasoning=entry.reasoning if entry else None)
    if not f.no_cache:
        _attach_prefix_cache(session, path, name)
    if not f.raw and (think is not None or f.think_budget is not None):
        try:
            session.reply_format()  # a --think the model cannot do fails before any prompt
        except BaseException:
            loaded.close()
            raise
    return session


def _projector(name: str, entry: Entry | None, *, required: bool) -> Path | None:
    """The pulled model's vision projector; with ``required``, one line (exit 2) when it has
    none, before the model is loaded."""
    manifest = common.store().get(name)
    found = common.store().checked_mmproj(manifest) if manifest is not None else None
    if found is None and required:
        if entry is not None and entry.mmproj is not None:
            raise UsageError(f"{name} has no vision projector pulled (pulled with --no-mmproj)",
                             hint=f"llmrun pull {name}")
        raise UsageError(f"{name} has no vision projector",
                         hint="use a vision model, e.g. `llmrun run gemma3:4b --image FILE "
                              "\"Describe it\"`")
    return found


def _attach_prefix_cache(session: Session, path: Path, name: str) -> None:
    """The on-disk prefix cache (prefix_cache.py), keyed by the model file's sha256: the one
    recorded at pull when there is one, else computed once per version of the file."""
    from ..prefix_cache import PrefixCache, file_sha256
    from ..settings import size_bytes

    s = common.settings()
    limit = size_bytes(s.prefix_cache)  # (a bad LLMRUN_PREFIX_CACHE stops here, exit 2)
    if limit <= 0:
        return
    manifest = common.store().get(name)
    shas = [f.sha256 for f in manifest.files] if manifest is not None else []
    if shas and all(len(x) == 64 and x != "0" * 64 for x in shas):
        session.model_sha = ":".join(shas)
    else:
        try:
            session.model_sha = file_sha256(path, s.state_dir / "file-sha256.json")
        except OSError:
            return
    session.prefix_cache = PrefixCache(s.home / "cache" / "prefix", limit)


def load_model(path: Path, name: str, entry: Entry | None, *, ctx: int | None,
               gpu_layers: int | None, threads: int | None, verbose: bool,
               mmproj: Path | None = None) -> Model:
    """Load a local model with the flags over LLMRUN_* settings; warnings and notices on
    stderr (run, chat, bench)."""
    from ..datatypes import LoadOptions
    from ..engine import Model

    s = common.settings()
    opts = LoadOptions(n_ctx=ctx or s.ctx, n_gpu_layers=gpu_layers if gpu_layers is not None
                       else s.gpu_layers, n_threads=threads or s.threads,
                       flash_attn=s.flash_attn, extra_buffers=s.cpu_extra_buffers,
                       state_dir=str(s.state_dir), ctx_default=entry.ctx if entry else None)
    manifest = common.store().get(name)
    loaded = Model(path, opts, chat_format=entry.chat_format if entry else None,
                   debug=s.debug, name=name,  # -v is the timing block; the log is debug's
                   chat_template=manifest.chat_template if manifest is not None else None,
                   mmproj=mmproj)
    if loaded.notice:
        output.notice(loaded.notice)
    warn_if_no_offload(opts.n_gpu_layers, loaded.offload_supported)
    if verbose:
        output.info(f"model: {path}\ncontext: {loaded.n_ctx} tokens, threads: {loaded.threads}, "
                    f"gpu layers: {loaded.gpu_layers} (offload supported: "
                    f"{'yes' if loaded.offload_supported else 'no'})")
    if loaded.ctx_capped:
        output.warn(f"context size capped at {loaded.n_ctx}, the context {name} was trained on")
    if loaded.memory_warning:
        output.warn(loaded.memory_warning)
    return loaded


class StdoutSink:
    """Writes a streamed answer so that it ends in exactly one newline: leading blank lines are
    dropped and trailing newlines are held back until more text follows."""

    def __init__(self) -> None:
        self.started = False
        self.pending = ""

    def write(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip("\n")
            if not piece:
                return
            self.started = True
        body = piece.rstrip("\n")
        if body:
            output.write(self.pending + body, flush=True)
            self.pending = piece[len(body):]
        else:
            self.pending += piece

    def close(self) -> None:
        output.write("\n", flush=True)


class TraceSink:
    """The reasoning trace on stderr, dimmed on a terminal; never on stdout."""

    def __init__(self, show: bool | None) -> None:
        self.show = output.stderr_is_tty() if show is None else show
        self.dim = output.stderr_is_tty() and output.color_allowed()
        self.open = False

    def write(self, text: str) -> None:
        if not self.show or not text:
            return
        if not self.open:
            self.open = True
            text = text.lstrip("\n")
        output.trace(text, dim=self.dim)

    def close(self) -> None:
        """End the trace's line before the answer starts."""
        if self.open:
            output.trace("\n", dim=False)
            self.open = False


def answer(session: AnySession, prompt: str, sink: StdoutSink | None,
           trace: TraceSink | None = None, images: list[Image] | None = None) -> Result:
    """One prompt → one answer (written to the sink as it streams; the trace to ``trace``)."""
    if not session.raw:
        session.clear()
    turn = session.ask(prompt, images) if images else session.ask(prompt)
    try:
        for delta in turn.deltas:
            if trace is not None and delta.reasoning:
                trace.write(delta.reasoning)
            if delta.content:
                if trace is not None:
                    trace.close()
                if sink is not None:
                    sink.write(delta.content)
        if trace is not None:
            trace.close()
    except OutputClosed:
        raise
    except KeyboardInterrupt:  # the partial answer ends its line, so the shell's prompt
        if sink is not None and sink.started:  # starts on a line of its own
            with contextlib.suppress(OutputClosed):
                sink.close()
        raise
    except BaseException:
        if sink is not None and sink.started:
            sink.close()  # finish the partial line before the error goes to stderr
        raise
    if sink is not None:
        sink.close()
    s = session.sampling
    if (s.json_schema is not None or s.json_any) and turn.result.finish_reason == "length":
        output.warn("the answer hit the token limit before its JSON was complete; "
                    "raise --max-tokens")
    return turn.result


def print_timings(r: Result) -> None:
    def rate(n: int, s: float) -> str:
        return f"{n / s:.2f} tokens/s" if s > 0 and r.usage_known else "-"

    prompt = f"{r.prompt_tokens} token(s) ({r.prompt_evaluated} evaluated)" if r.usage_known \
        else "unknown (the server did not say)"
    output.info(
        f"load duration:        {r.load_s:.3f}s\n"
        f"prompt eval count:    {prompt}\n"
        f"prompt eval duration: {r.prompt_s:.3f}s\n"
        f"prompt eval rate:     {rate(r.prompt_evaluated, r.prompt_s)}\n"
        + (f"prompt from cache:    {r.prompt_from_disk} token(s) (on disk, from an "
           "earlier run)\n" if r.prompt_from_disk else "")
        + f"eval count:           "
        f"{f'{r.completion_tokens} token(s)' if r.usage_known else 'unknown'}\n"
        f"eval duration:        {r.gen_s:.3f}s\n"
        f"eval rate:            {rate(r.completion_tokens, r.gen_s)}")


def warn_if_no_offload(gpu_layers: int | None, offload_supported: bool) -> None:
    """Layers asked for on a GPU that this build cannot use: one warning (run, chat, embed)."""
    if gpu_layers not in (None, 0) and not offload_supported:
        output.warn("this llama-cpp-python build has no GPU support: running on the CPU "
                    "(see docs/gpu.md to build it with CUDA, Metal or Vulkan)")
