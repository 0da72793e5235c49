"""`llmrun prune`: remove partial downloads nobody is writing and blobs nothing points to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import common, output


def _candidates() -> list[Path]:
    """Orphans in the repos llmrun pulled: our partial files whose pull is not running,
    and blobs that no snapshot and no manifest refers to."""
    from filelock import FileLock, Timeout

    from ..download import PART_SUFFIX
    from ..store import hub_cache_dir, repo_dir

    store = common.store()
    manifests = list(store.all())
    referenced = {f.sha256 for m in manifests for f in m.files}
    found: list[Path] = []
    # our partial files in any repo (a first pull that never finished has no record)
    for part in sorted(hub_cache_dir().glob(f"models--*/blobs/*{PART_SUFFIX}")):
        key = part.name[: -len(PART_SUFFIX)]
        lock = hub_cache_dir() / ".locks" / part.parent.parent.name / f"{key}.lock"
        try:
            with FileLock(lock, timeout=0):
                found.append(part)  # nobody holds the lock: that pull is not running
        except Timeout:
            continue
    # unreferenced blobs only in repos llmrun pulled; other repos belong to other tools
    for repo in sorted({m.repo for m in manifests if m.repo}):
        root = repo_dir(repo)
        if not (root / "blobs").is_dir():
            continue
        linked = {Path(os.path.realpath(p)).name for p in (root / "snapshots").rglob("*")
                  if p.is_symlink()}
        found += [b for b in (root / "blobs").iterdir() if not b.name.endswith(PART_SUFFIX)
                  and b.name not in linked and b.name not in referenced]
    found += [p for p in store.blobs.glob("sha256-*.gguf") if p.name[7:-5] not in referenced]
    return found


def prune_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go")] = False,
) -> None:
    """Remove orphaned partial downloads and unreferenced blobs of pulled repos."""
    from ..inuse import exclusive, holders

    freed = 0
    for path in _candidates():
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
