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
    for repo in sorted({m.repo for m in manifests if m.repo}):
        root = repo_dir(repo)
        blobs = root / "blobs"
        if not blobs.is_dir():
            continue
        linked = {Path(os.path.realpath(p)).name for p in (root / "snapshots").rglob("*")
                  if p.is_symlink()}
        for blob in blobs.iterdir():
            if blob.name.endswith(PART_SUFFIX):
                key = blob.name[: -len(PART_SUFFIX)]
                lock = hub_cache_dir() / ".locks" / root.name / f"{key}.lock"
                try:
                    with FileLock(lock, timeout=0):
                        found.append(blob)  # nobody holds the lock: the pull is not running
                except Timeout:
                    continue
            elif blob.name not in linked and blob.name not in referenced:
                found.append(blob)
    found += [p for p in store.blobs.glob("sha256-*.gguf") if p.name[7:-5] not in referenced]
    return found


def prune_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go")] = False,
) -> None:
    """Remove orphaned partial downloads and unreferenced blobs of pulled repos."""
    freed = 0
    for path in _candidates():
        size = path.stat().st_size
        output.info(f"{'would remove' if dry_run else 'removing'} {path} "
                    f"({output.human_size(size)})")
        if not dry_run:
            path.unlink(missing_ok=True)
        freed += size
    output.info(f"{'would free' if dry_run else 'freed'} {output.human_size(freed)}")
