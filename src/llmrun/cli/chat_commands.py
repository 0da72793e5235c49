"""Slash commands inside `llmrun chat`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from . import output

if TYPE_CHECKING:
    from ..images import Image
    from .gen import AnySession as Session

HELP = """\
/help              this help
/bye, /exit        leave (also Ctrl-D)
/clear             forget the conversation (keeps the system prompt)
/system TEXT       set the system prompt
/image PATH        an image (PNG, JPEG, WebP) for your next message (vision models)
/set PARAM VALUE   temperature, top-p, top-k, min-p, repeat-penalty, seed, max-tokens
/show              model, context, parameters, template source
/save FILE         save the conversation as JSON
/load FILE         load a conversation saved with /save
/stats             timings of the last reply
/thinking show|hide   show a reasoning model's trace (dimmed) or hide it
\"\"\"                start or end a multi-line message"""

@dataclass
class View:
    """How replies are shown (not what the model sees)."""

    show_thinking: bool | None = None  # None: when stderr is a terminal
    images: list[Image] = field(default_factory=list)  # /image: for the next message


_PARAMS = {"temperature": float, "top-p": float, "top-k": int, "min-p": float,
           "repeat-penalty": float, "seed": int, "max-tokens": int}


def handle(session: Session, line: str, last: Path, view: View | None = None) -> str | None:
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/bye", "/exit", "/quit"):
        return "exit"
    if cmd in ("/help", "/?"):
        output.info(HELP)
    elif cmd == "/clear":
        session.clear()
        output.info("conversation cleared")
    elif cmd == "/system":
        session.system = arg or None
        output.info("system prompt " + ("set" if arg else "cleared"))
    elif cmd == "/image":
        _image(session, arg, view)
    elif cmd == "/set":
        _set(session, arg)
    elif cmd == "/show":
        _show(session)
    elif cmd == "/save":
        if not arg:
            raise UsageError("usage: /save FILE")
        session.save(Path(arg).expanduser())
        output.info(f"saved {len(session.messages)} message(s) to {arg}")
    elif cmd == "/load":
        if not arg:
            raise UsageError("usage: /load FILE")
        session.load(Path(arg).expanduser())
        output.info(f"loaded {len(session.messages)} message(s)")
    elif cmd == "/thinking":
        if arg not in ("show", "hide"):
            raise UsageError("usage: /thinking show|hide")
        if view is not None:
            view.show_thinking = arg == "show"
        output.info(f"reasoning traces {'shown' if arg == 'show' else 'hidden'}")
    elif cmd == "/stats":
        output.info(f"{len(session.messages)} message(s) in this conversation")
        if session.last is not None:
            from .gen import print_timings

            print_timings(session.last)
    else:
        raise UsageError(f"unknown command {cmd}", hint="/help lists the commands")
    return None


def _image(session: Session, arg: str, view: View | None) -> None:
    from ..images import read_file

    path = arg.strip().strip("'\"")  # as a terminal pastes a dropped file
    if not path:
        raise UsageError("usage: /image PATH")
    model = getattr(session, "model", None)  # a local model; a server decides for itself
    if model is not None and model.projector is None:
        raise UsageError(f"{model.name} has no vision projector",
                         hint="use a vision model, e.g. `llmrun chat gemma3:4b`")
    image = read_file(Path(path).expanduser())
    if view is not None:
        view.images.append(image)
        output.info(f"image {path} ({image.width}x{image.height}) goes with your next message"
                    + (f" ({len(view.images)} images)" if len(view.images) > 1 else ""))


def _set(session: Session, arg: str) -> None:
    name, _, value = arg.partition(" ")
    kind = _PARAMS.get(name.strip().lstrip("-"))
    if kind is None:
        raise UsageError(f"unknown parameter {name!r}", hint="one of: " + ", ".join(_PARAMS))
    try:
        parsed = kind(value.strip())
    except ValueError:
        raise UsageError(f"{name} needs a {kind.__name__}, got {value.strip()!r}") from None
    setattr(session.sampling, name.strip().lstrip("-").replace("-", "_"), parsed)
    output.info(f"{name} = {parsed}")


def _show(session: Session) -> None:
    from ..client import RemoteSession

    if isinstance(session, RemoteSession):
        output.info(f"model:       {session.model_name} at {session.endpoint}\n"
                    f"messages:    {len(session.messages)}\nsystem:      {session.system or '-'}")
        return
    m = session.model
    used = session.context_used()
    s = session.sampling
    output.info(
        f"model:       {m.name} ({m.info.architecture}, {m.info.file_type})\n"
        f"file:        {m.path}\n"
        f"context:     {used} of {m.n_ctx} tokens used\n"
        f"template:    {m.template[1]}\n"
        f"system:      {session.system or '-'}\n"
        f"parameters:  temperature={s.temperature} top_p={s.top_p} top_k={s.top_k} "
        f"min_p={s.min_p} repeat_penalty={s.repeat_penalty} seed={s.seed} "
        f"max_tokens={s.max_tokens}\n"
        f"threads:     {m.threads}, gpu layers: {m.gpu_layers}")
