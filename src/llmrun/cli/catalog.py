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
    fits: Annotated[bool, typer.Option(
        "--fits", help="which models fit this machine: llmrun's memory estimate at the "
        "context run would use, from each GGUF header (read from the Hub, a few MB, when not "
        "pulled), RAM and GPU memory, and `llmrun bench` figures where measured")] = False,
) -> None:
    """Show the models llmrun knows by name."""
    if refresh or accept or accept_all:
        _refresh(accept or [], accept_all)
    rows = _rows(term, fits)
    if term and not rows:
        from ..errors import NotFound

        raise NotFound(f"no model in the registry matches {term!r}",
                       hint="`llmrun catalog` lists them all; any GGUF on the Hub works as "
                            "hf.co/ORG/REPO")
    if as_json:
        output.write_json(rows)
        return
    yn = {True: "yes", False: "no", None: "?"}
    if not fits:
        output.table(["NAME", "PARAMS", "CONTEXT", "QUANT", "SIZE", "LICENSE", "PULLED",
                      "FITS RAM"],
                     [[r["name"], r["params"], _context(r["context_length"]), r["quant"],
                       output.human_size(r["size"]), r["license"], yn[r["pulled"]],
                       yn[r["fits"]]] for r in rows], right={1, 2, 4})
        return
    gpu = any(r["fits_vram"] is not None for r in rows)
    head = ["NAME", "PARAMS", "QUANT", "SIZE", "CONTEXT", "NEEDS", "FITS RAM",
            *(["FITS VRAM"] if gpu else []), "TG T/S"]
    output.table(head, [
        [r["name"], r["params"], r["quant"], output.human_size(r["size"]), _context(r["ctx"]),
         output.human_size(r["needs"]) if r["needs"] else "?", yn[r["fits"]],
         *([yn[r["fits_vram"]]] if gpu else []),
         f"{r['tg_tokens_per_s']:.1f}" if r["tg_tokens_per_s"] else "-"] for r in rows],
        right={1, 3, 4, 5, len(head) - 1})
    unknown = [r["name"] for r in rows if r["needs"] is None]
    if unknown:
        output.info(f"{len(unknown)} model(s) without a GGUF header to read (offline, or no "
                    "exact file size in the registry): their FITS is from the weights alone")
    output.info(f"judged against {output.human_size(rows[0]['ram_available'])} of RAM "
                "available now; NEEDS is weights + KV cache at CONTEXT (llmrun's estimate)"
                if rows and rows[0]["ram_available"] else "RAM available: unknown")


def _rows(term: str | None, online: bool) -> list[dict[str, Any]]:
    from .. import fits as fitting
    from ..memory import available_memory

    available = available_memory()
    vram = fitting.gpu_memory() if online else None
    store, settings = common.store(), common.settings()
    headers = fitting.Headers(settings, store)
    pulled = set(store.names())
    rows: list[dict[str, Any]] = []
    for name, e in sorted(common.registry().models.items(), key=lambda kv: kv[1].param_count):
        text = f"{name} {e.family} {e.title}".lower()
        if term and term.lower() not in text:
            continue
        q = e.default_quant
        info, source = headers.get(name, e, q, online=online)
        fit = fitting.assess(e, q, info, available=available, vram=vram, source=source)
        row: dict[str, Any] = {
            "name": name, "title": e.title, "params": e.params, "quant": q,
            "size": e.quants[q].size, "context_length": e.context_length,
            "license": e.license, "pulled": name in pulled, "fits": fit.fits_ram,
            "quants": list(e.quants), "repo": e.repo}
        if online:
            bench = fitting.measured(settings, name)
            row |= {"ctx": fit.ctx, "needs": fit.need, "fits_vram": fit.fits_vram,
                    "header": fit.header or None, "ram_available": available,
                    "vram_free": vram,
                    "tg_tokens_per_s": next((v for k, v in bench.items()
                                             if k.startswith("tg")), None),
                    "pp_tokens_per_s": next((v for k, v in bench.items()
                                             if k.startswith("pp")), None)}
        rows.append(row)
    return rows


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
