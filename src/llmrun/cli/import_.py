"""`llmrun import FILE.gguf --name NAME`: register a local GGUF under a name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidReference, NotFound, UsageError
from . import common, output


def import_cmd(
    file: Annotated[Path, typer.Argument(help="a .gguf file")],
    name: Annotated[str, typer.Option("--name", help="the name to use it by")],
    link: Annotated[bool, typer.Option("--link", help="use the file where it is instead of "
                                       "copying it (it must then stay unchanged)")] = False,
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
    store = common.store()
    if store.get(name) is not None:
        raise UsageError(f"{name!r} already exists", hint=f"`llmrun rm -y {name}` first")
    manifest = store.import_file(file, name=name, quant=info.file_type, size=info.file_size,
                                 link=link)
    local = manifest.files[0].local
    output.info(f"imported {name} ({output.human_size(info.file_size)}, "
                f"{'linked' if link else 'copied'}): {local}")
