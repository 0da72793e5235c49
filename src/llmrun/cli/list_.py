"""`llmrun list` (alias `ls`): what is pulled."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output


def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="stable JSON on stdout")] = False,
) -> None:
    """List pulled models: name, quant, size, modified."""
    manifests = list(common.store().all())
    if as_json:
        output.write_json([{
            "name": m.name, "quant": m.quant, "size": m.size, "modified": m.pulled_at,
            "source": m.source, "repo": m.repo, "revision": m.revision,
            "path": str(m.model_path), "files": [f.path for f in m.files],
        } for m in manifests])
        return
    rows = [[m.name, m.quant or "-", output.human_size(m.size), m.pulled_at.replace("T", " ")[:16]]
            for m in manifests]
    if not rows and output.stdout_is_tty():
        output.info("no models pulled yet; try `llmrun pull gemma3:270m-base`")
        return
    output.table(["NAME", "QUANT", "SIZE", "MODIFIED"], rows, right={2})
