"""`llmrun cache ls|rm|prune`: the prompt prefixes kept on disk (prefix_cache.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from . import common, output

if TYPE_CHECKING:
    from ..prefix_cache import PrefixCache

cache_app = typer.Typer(help="Prompt prefixes kept on disk so that the next run evaluates "
                             "only what is new (LLMRUN_PREFIX_CACHE sets their room).",
                        no_args_is_help=True)


def _cache() -> PrefixCache:
    from ..prefix_cache import PrefixCache
    from ..settings import size_bytes

    s = common.settings()
    return PrefixCache(s.home / "cache" / "prefix", size_bytes(s.prefix_cache))


@cache_app.command("ls")
def ls_cmd(as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False
           ) -> None:
    """List the kept prefixes: tokens, size, last used."""
    entries = _cache().entries()
    if as_json:
        output.write_json(entries)
        return
    now = time.time()
    output.table(["KEY", "TOKENS", "SIZE", "LAST USED"],
                 [[e["key"][:12], str(e["tokens"] or "?"), output.human_size(e["size"]),
                   f"{(now - e['used']) / 60:.0f} min ago"] for e in entries], right={1, 2})


@cache_app.command("rm")
def rm_cmd() -> None:
    """Remove every kept prefix."""
    cache = _cache()
    removed = cache.prune(limit=0)
    output.info(f"removed {len([p for p in removed if not p.name.startswith('.tmp-')])} "
                f"cached prefix(es)")


@cache_app.command("prune")
def prune_cmd() -> None:
    """Remove the least recently used prefixes until the cache fits LLMRUN_PREFIX_CACHE."""
    cache = _cache()
    removed = cache.prune()
    kept = sum(e["size"] for e in cache.entries())
    output.info(f"removed {len(removed)} file(s); {output.human_size(kept)} kept")
