"""`llmrun chat MODEL`: an interactive conversation (or one message per stdin line)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import LlmrunError, UsageError
from ..exit_codes import ExitCode
from . import chat_commands, common, complete, gen, output

if TYPE_CHECKING:
    from .gen import AnySession as Session

PROMPT = ">>> "


def chat_cmd(
    model: Annotated[str, typer.Argument(
        help="registry name, hf.co/ORG/REPO[:QUANT], or .gguf", autocompletion=complete.any_model)],
    system: Annotated[str | None, typer.Option("--system", "-s", help="system prompt")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="render replies as Markdown "
                                           "(terminal only)")] = False,
    resume: Annotated[bool, typer.Option("--continue", "-c",
                                         help="resume the last conversation")] = False,
    temperature: gen.Temperature = None, top_p: gen.TopP = None, top_k: gen.TopK = None,
    min_p: gen.MinP = None, repeat_penalty: gen.RepeatPenalty = None, seed: gen.Seed = None,
    max_tokens: gen.MaxTokens = None, stop: gen.Stop = None, ctx: gen.Ctx = None,
    gpu_layers: gen.GpuLayers = None, threads: gen.Threads = None, verbose: gen.Verbose = False,
    no_pull: gen.NoPull = False, endpoint: gen.Endpoint = None, api_key: gen.ApiKey = None,
    think: gen.Think = None, no_think: gen.NoThink = False,
    show_thinking: gen.ShowThinking = None, think_budget: gen.ThinkBudget = None,
    no_cache: gen.NoCache = False,
) -> None:
    """Chat with a model. Type /help for commands; Ctrl-C stops a reply, Ctrl-D exits. A
    reasoning model's trace is shown dimmed on stderr (/thinking hide|show) and never
    becomes part of the conversation the model sees again."""
    flags = gen.Flags(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                      repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens,
                      stop=stop, ctx=ctx, gpu_layers=gpu_layers, threads=threads, raw=False,
                      fmt=None, schema=None, verbose=verbose, no_pull=no_pull,
                      endpoint=endpoint, api_key=api_key, think=think, no_think=no_think,
                      show_thinking=show_thinking, think_budget=think_budget, no_cache=no_cache)
    session = gen.open_session(model, flags, system=system, trim=True)
    local = getattr(session, "model", None)
    if local is not None:
        from ..errors import TemplateError

        try:
            local.template  # noqa: B018 - fail now, before the first message, if none
        except TemplateError as exc:
            if exc.message != "model has no chat template":
                raise
            raise TemplateError(f"{model} has no chat template, which chat needs",
                                hint=f"plain completion needs none: llmrun run {model} --raw "
                                     '"TEXT"') from None
    view = chat_commands.View(show_thinking)
    last = common.settings().home / "chats" / "last.json"
    if resume and last.is_file():
        session.load(last)
        output.info(f"resumed {len(session.messages)} message(s) from {last}")
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            _interactive(session, markdown and output.stdout_is_tty(), last, verbose, view,
                         local.name if local is not None else model)
        else:
            _scripted(session, last, verbose, view)
    finally:
        session.abort()  # never tear the model down under a running read-ahead
        remember = getattr(session, "remember_prefix", None)
        if remember is not None:  # the conversation's state, for `chat --continue`
            remember()


def _reply(session: Session, text: str, markdown: bool, verbose: bool,
           view: chat_commands.View) -> None:
    images, view.images = view.images, []  # /image: they go with this message
    turn = session.ask(text, images) if images else session.ask(text)
    if turn.dropped:
        output.warn(f"context full: dropped the {turn.dropped} oldest exchange(s)")
    trace = gen.TraceSink(view.show_thinking)
    if markdown:
        from rich.console import Console
        from rich.live import Live
        from rich.markdown import Markdown

        for delta in turn.deltas:  # the trace streams dimmed; the answer renders below it
            trace.write(delta.reasoning)
            if delta.content or delta.tool_calls:
                break
        trace.close()
        with Live(console=Console(), refresh_per_second=8) as live:
            live.update(Markdown(turn.result.text))
            for _ in turn:
                live.update(Markdown(turn.result.text))
    else:
        sink = gen.StdoutSink()
        try:
            for delta in turn.deltas:
                trace.write(delta.reasoning)
                if delta.content:
                    trace.close()
                    sink.write(delta.content)
        finally:
            trace.close()
            sink.close()
    if verbose:
        gen.print_timings(turn.result)


def _scripted(session: Session, last: Path, verbose: bool, view: chat_commands.View) -> None:
    """stdin is not a terminal: one user message per line, replies separated by blank lines."""
    first = True
    session.prepare()
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if chat_commands.handle(session, text, last, view) == "exit":
                return
            session.prepare()
            continue
        if not first:
            output.write("\n")
        first = False
        _reply(session, text, False, verbose, view)
        session.save(_ensure(last))
        session.prepare()  # evaluate the next prompt's opening while the next line comes


def _ensure(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _interactive(session: Session, markdown: bool, last: Path, verbose: bool,
                 view: chat_commands.View, name: str) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    history = _ensure(common.settings().home / "chat_history")
    prompt: PromptSession[str] = PromptSession(history=FileHistory(str(history)))
    # a local model reads ahead into the message as it is typed
    prompt.default_buffer.on_text_changed += lambda buffer: session.offer(buffer.text)
    output.info(f"chatting with {name}; /help for commands, Ctrl-D to quit")
    interrupted = False
    while True:
        session.prepare()  # the model reads ahead while the user types
        try:
            text = prompt.prompt(PROMPT)
            session.settle()  # the read-ahead thread gives the model back (Ctrl-C: stops it)
        except KeyboardInterrupt:
            session.abort()
            if interrupted:
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            interrupted = True
            output.info("(Ctrl-C again or /bye to exit)")
            continue
        except EOFError:
            return
        interrupted = False
        if text.strip() == '"""':
            text = _multiline(prompt)
        text = text.strip()
        if not text:
            continue
        if text.startswith("/"):
            try:
                if chat_commands.handle(session, text, last, view) == "exit":
                    return
            except LlmrunError as exc:
                output.error(exc.message, exc.hint)
            continue
        try:
            _reply(session, text, markdown, verbose, view)
        except KeyboardInterrupt:
            output.write("\n")
            output.info("(reply stopped)")
        except LlmrunError as exc:
            output.error(exc.message, exc.hint)
        session.save(_ensure(last))


def _multiline(prompt: object) -> str:
    """Lines until a closing \"\"\". Ctrl-C drops the block; Ctrl-D sends what was typed."""
    lines: list[str] = []
    while True:
        try:
            line = prompt.prompt("... ")  # type: ignore[attr-defined]
        except KeyboardInterrupt:
            output.info("(message discarded)")
            return ""
        except EOFError:
            return "\n".join(lines)
        if line.strip() == '"""':
            return "\n".join(lines)
        lines.append(line)


__all__ = ["UsageError", "chat_cmd"]
