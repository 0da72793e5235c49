"""`llmrun rm NAME…`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UsageError
from . import common, complete, output


def rm_cmd(
    names: Annotated[list[str], typer.Argument(
        help="pulled or imported model names", autocompletion=complete.pulled_model)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go")] = False,
    force: Annotated[bool, typer.Option("--force", help="remove even while a running llmrun "
                                        "has the model loaded")] = False,
) -> None:
    """Remove pulled models and free their disk space (files shared with others stay)."""
    manifests = []
    for name in names:
        manifest = common.resolver().pulled(name)
        if manifest is None:
            from ..errors import ModelNotPulled

            raise ModelNotPulled(f"model {name!r} is not pulled", hint="see `llmrun list`")
        if not force:
            common.store().ensure_unused(manifest)  # before anything is asked or deleted
        manifests.append(manifest)
    total = sum(m.size for m in manifests)
    if not yes and not dry_run:
        if not sys.stdin.isatty():
            raise UsageError("refusing to delete without confirmation", hint="pass -y")
        listing = ", ".join(m.name for m in manifests)
        if not typer.confirm(f"Delete {listing} ({output.human_size(total)})?"):
            output.info("nothing removed")
            return
    for m in manifests:
        output.info(f"{'would remove' if dry_run else 'removing'} {m.name} "
                    f"({output.human_size(m.size)})")
    if dry_run:
        return
    freed = sum(common.store().remove(m.name, force=force) for m in manifests)
    output.info(f"freed {output.human_size(freed)}")
