"""`llmrun catalog [TERM]`: the curated registry."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import common, output


def catalog_cmd(
    term: Annotated[str | None, typer.Argument(help="filter by name, family or title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Show the models llmrun knows by name."""
    import psutil

    ram = psutil.virtual_memory().total
    pulled = {m.name for m in common.store().all()}
    rows: list[dict[str, Any]] = []
    for name, e in sorted(common.registry().models.items(), key=lambda kv: kv[1].param_count):
        text = f"{name} {e.family} {e.title}".lower()
        if term and term.lower() not in text:
            continue
        size = e.quants[e.default_quant].size
        rows.append({"name": name, "title": e.title, "params": e.params,
                     "quant": e.default_quant, "size": size,
                     "context_length": e.context_length, "license": e.license,
                     "pulled": name in pulled, "fits": None if size is None else size * 1.2 < ram,
                     "quants": list(e.quants), "repo": e.repo})
    if term and not rows:
        from ..errors import NotFound

        raise NotFound(f"no model in the registry matches {term!r}",
                       hint="`llmrun catalog` lists them all; any GGUF on the Hub works as "
                            "hf.co/ORG/REPO")
    if as_json:
        output.write_json(rows)
        return
    yn = {True: "yes", False: "no", None: "?"}
    output.table(["NAME", "PARAMS", "CONTEXT", "QUANT", "SIZE", "LICENSE", "PULLED", "FITS RAM"],
                 [[r["name"], r["params"], _context(r["context_length"]), r["quant"],
                   output.human_size(r["size"]), r["license"], yn[r["pulled"]], yn[r["fits"]]]
                  for r in rows], right={1, 2, 4})


def _context(tokens: int | None) -> str:
    """128K for 131072: the way model cards write a context length."""
    if tokens is None:
        return "?"
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)
