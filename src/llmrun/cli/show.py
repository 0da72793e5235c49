"""`llmrun show NAME`: what a model is, read from its GGUF header (no weights loaded)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, complete, output


def show_cmd(
    model: Annotated[str, typer.Argument(
        help="pulled name, registry name, or .gguf path", autocompletion=complete.any_model)],
    template: Annotated[bool, typer.Option("--template", help="print the chat template")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Show architecture, parameters, context, quant, template, license, path and size."""
    from .. import gguf_file

    path, name, entry = common.ensure_local(model, no_pull=True)
    info = gguf_file.read_info(path)
    manifest = common.store().get(name)
    imported = manifest.chat_template if manifest is not None else None
    tmpl = imported or info.chat_template
    tmpl_source = "imported with the model" if imported else "GGUF metadata" if tmpl else (
        f"registry format {entry.chat_format}" if entry and entry.chat_format else "none")
    if template:
        if tmpl is None and entry and entry.chat_format:
            from ..templates import BUILTIN_TEMPLATES

            tmpl = BUILTIN_TEMPLATES[entry.chat_format]
        if tmpl is None:
            from ..errors import NotFound

            raise NotFound(f"{name} has no chat template", hint="use `llmrun run --raw`")
        output.write(tmpl.rstrip("\n") + "\n")
        return
    data = {
        "name": name, "architecture": info.architecture, "parameters": info.parameter_count,
        "context_length": info.context_length, "quantization": info.file_type,
        "chat_template": tmpl_source, "license": info.license or (entry.license if entry
                                                                   else None),
        "path": str(path), "size": info.file_size,
        "description": entry.description if entry else None,
    }
    if as_json:
        output.write_json(data)
        return
    params = info.parameter_count
    rows = [
        ["name", name], ["architecture", str(info.architecture)],
        ["parameters", f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"],
        ["context length", str(info.context_length)], ["quantization", str(info.file_type)],
        ["chat template", tmpl_source], ["license", str(data["license"])],
        ["path", str(path)], ["size", output.human_size(info.file_size)],
    ]
    output.write("".join(f"{k:<16}{v}\n" for k, v in rows))
