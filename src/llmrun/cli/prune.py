"""`llmrun prune`: remove partial downloads nobody is writing and blobs nothing points to."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output


def prune_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go")] = False,
) -> None:
    """Remove orphaned partial downloads and unreferenced blobs of pulled repos."""
    from ..inuse import exclusive, holders

    freed = 0
    for path in common.store().orphans():
        size = path.stat().st_size
        with exclusive([path]) as busy:
            if busy:  # e.g. removed with `rm --force` while a server still has it loaded
                pids = ", ".join(map(str, holders(path))) or "?"
                output.info(f"keeping {path}: loaded by a running llmrun process (pid {pids})")
                continue
            output.info(f"{'would remove' if dry_run else 'removing'} {path} "
                        f"({output.human_size(size)})")
            if not dry_run:
                path.unlink(missing_ok=True)
        freed += size
    output.info(f"{'would free' if dry_run else 'freed'} {output.human_size(freed)}")
