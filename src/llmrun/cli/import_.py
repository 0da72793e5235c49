"""`llmrun import FILE.gguf --name NAME`: register a local GGUF under a name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidReference, NotFound, UsageError
from . import common, output


def import_cmd(
    file: Annotated[Path, typer.Argument(help="a .gguf file")],
    name: Annotated[str, typer.Option("--name", help="the name to use it by")],
    link: Annotated[bool, typer.Option("--link", help="use the file where it is instead of "
                                       "copying it (it must then stay unchanged)")] = False,
    chat_template: Annotated[Path | None, typer.Option(
        "--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the "
        "GGUF's (llama.cpp's --chat-template-file); checked by rendering it")] = None,
) -> None:
    """Import a local GGUF (validated) under NAME. It is copied into llmrun's store unless
    --link; `llmrun verify` notices if a linked file changes."""
    from .. import gguf_file
    from ..registry import NAME_RE

    name = name.lower()
    if not NAME_RE.match(name):
        raise InvalidReference(f"invalid name {name!r}", hint="use letters, digits, . _ - and :")
    if common.registry().get(name) is not None:
        raise UsageError(f"{name!r} is a registry name", hint="choose another name")
    if not file.exists():
        raise NotFound(f"no such file: {file}")
    info = gguf_file.read_info(file, hint="the file is not a usable GGUF model")
    template = _checked_template(chat_template, info) if chat_template is not None else None
    store = common.store()
    if store.get(name) is not None:
        raise UsageError(f"{name!r} already exists", hint=f"`llmrun rm -y {name}` first")
    manifest = store.import_file(file, name=name, quant=info.file_type, size=info.file_size,
                                 link=link, chat_template=template)
    local = manifest.files[0].local
    output.info(f"imported {name} ({output.human_size(info.file_size)}, "
                f"{'linked' if link else 'copied'}): {local}")


def _checked_template(path: Path, info: Any) -> str:
    """The template's text, once it has rendered a short conversation in the sandbox (a
    template that cannot render is refused here, not at the first chat)."""
    from ..errors import TemplateError
    from ..templates import MAX_TEMPLATE_CHARS, render

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read chat template {path}: {exc}") from None
    if len(text) > MAX_TEMPLATE_CHARS or not text.strip():
        raise UsageError(f"{path} is not a usable chat template (empty or over "
                         f"{MAX_TEMPLATE_CHARS:,} characters)")
    probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
             {"role": "user", "content": "How are you?"}]
    try:
        render(text, probe, bos_token=info.bos_token or "", eos_token=info.eos_token or "",
               source=str(path))
    except TemplateError as exc:
        raise UsageError(f"the chat template {path} does not render: {exc.message}") from None
    return text
