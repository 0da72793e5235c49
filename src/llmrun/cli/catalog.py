"""`llmrun catalog [TERM]`: the curated registry."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import common, output


def catalog_cmd(
    term: Annotated[str | None, typer.Argument(help="filter by name, family or title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="fetch the registry published on the Hub (LLMRUN_REGISTRY_REPO) "
        "first; changes to pulled or pinned models are held back")] = False,
    accept: Annotated[list[str] | None, typer.Option(
        "--accept", metavar="NAME", help="with --refresh: take this held-back change "
        "(repeatable)")] = None,
    accept_all: Annotated[bool, typer.Option(
        "--accept-all", help="with --refresh: take every held-back change")] = False,
) -> None:
    """Show the models llmrun knows by name."""
    if refresh or accept or accept_all:
        _refresh(accept or [], accept_all)
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


def _refresh(accept: list[str], accept_all: bool) -> None:
    """Fetch and apply the published registry; the summary goes to stderr."""
    from ..registry_update import refresh
    from .context import current

    done = refresh(common.settings(), common.store(), common.registry(), accept=accept,
                   accept_all=accept_all)
    current().forget_registry()
    d = done.decision
    output.info(f"registry {done.source}{' (cached copy: HF_HUB_OFFLINE)' * done.from_cache}: "
                f"{len(d.added)} added, {len(d.changed)} changed, {len(d.held)} held back, "
                f"{len(d.refused)} refused")
    for label, names in (("added", d.added), ("changed", d.changed), ("removed", d.removed),
                         ("kept (pulled, no longer published)", d.kept)):
        if names:
            output.info(f"  {label}: {', '.join(sorted(names))}")
    for name, why in sorted(d.refused.items()):
        output.warn(f"refused {name}: it {why}")
    for name, why in sorted(d.held.items()):
        output.warn(f"held back {name} ({why}): it keeps its current entry; "
                    f"`llmrun catalog --refresh --accept {name}` takes the change")
