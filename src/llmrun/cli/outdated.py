"""`llmrun outdated`: which pulled models have a newer version, and the command that gets it."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output


def outdated_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Check each pulled model against the registry and the Hub (exit 4 if none could be
    checked); `llmrun pull NAME` updates one, keeping the old files until the new ones verify."""
    from ..hub import is_offline
    from ..outdated import check_all

    rows = check_all(list(common.store().all()), common.registry(), offline=is_offline())
    if as_json:
        output.write_json([{"name": r.name, "local": r.local, "available": r.available or None,
                            "status": r.state, "why": r.why, "update": r.update}
                           for r in rows])
    else:
        output.table(["NAME", "LOCAL", "AVAILABLE", "WHY"],
                     [[r.name, r.local, r.available or "-",
                       r.why if r.state == "current" else f"{r.state}: {r.why}"]
                      for r in rows])
    if not rows:
        output.info("no pulled models")
        return
    stale = [r.name for r in rows if r.state == "outdated"]
    if stale:
        output.info(f"update with: llmrun pull {' '.join(stale)}")
    elif all(r.state == "current" for r in rows):
        output.info(f"all {len(rows)} pulled models are up to date")
    if all(r.state == "unknown" for r in rows):
        from ..errors import NetworkError

        raise NetworkError(f"no pulled model could be checked ({rows[0].why})",
                           hint="re-run `llmrun outdated` once the Hub can be reached")
