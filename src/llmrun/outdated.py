"""`llmrun outdated`: for each pulled model, whether a newer version is available, and why.

Two sources of news:
- the registry (shipped < refreshed < user file) may name other bytes for a registry model
  than the ones on disk: another repo, a pinned commit, other files or another sha256. Known
  offline.
- for a registry entry that pins nothing, and for an hf.co/ reference, the Hub: the commit of
  ``main`` and, when it moved, the LFS sha256 of the pulled files there (a new commit that
  leaves the model's files alone is no update).

`llmrun pull NAME` applies an update (pull.py); the same checks decide there whether it must.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import LlmrunError, NetworkError

if TYPE_CHECKING:
    from .hub import RemoteFile
    from .registry import Entry, Registry
    from .store import Manifest

State = Literal["current", "outdated", "removed", "unknown"]


@dataclass(frozen=True)
class Status:
    name: str
    local: str  # what is on disk: its commit (short)
    available: str  # what there is now: a commit, a sha256 or a repo; "" when nothing newer
    state: State
    why: str

    @property
    def update(self) -> str | None:
        """The command that applies the update."""
        return f"llmrun pull {self.name}" if self.state == "outdated" else None


def short(rev: str | None) -> str:
    return rev[:12] if rev else "-"


def pinned(entry: Entry, quant: str) -> bool:
    """Whether the entry fixes the quant's bytes: a commit, or a sha256 for every file."""
    return entry.revision is not None or all(f.sha256 for f in entry.quants[quant].files)


def registry_change(m: Manifest, entry: Entry, quant: str) -> tuple[str, str] | None:
    """How the registry entry names other bytes than the pulled ones: (why, what is
    available), or None when it names these."""
    if (m.repo or "").lower() != entry.repo.lower():
        return "the registry moved it to another repo", f"hf.co/{entry.repo}"
    if entry.revision is not None and entry.revision != m.revision:
        return "the registry pins another commit", short(entry.revision)
    want = entry.quants.get(quant)
    if want is None:
        return f"the registry no longer lists {quant}", ""
    have = {f.path: f.sha256 for f in m.model_files}
    if {f.path for f in want.files} != set(have):
        return "the registry lists other files", want.files[0].path
    for f in want.files:
        if f.sha256 and f.sha256 != have[f.path]:
            return f"the registry pins another sha256 for {f.path}", f"sha256:{f.sha256[:12]}"
    proj, held = entry.mmproj, m.mmproj
    if proj is not None and held is not None and (
            proj.path != held.path or (proj.sha256 and proj.sha256 != held.sha256)):
        return "the registry names another vision projector", proj.path
    if proj is not None and held is None and not m.mmproj_skipped:
        return "the registry adds a vision projector", proj.path
    return None


class Checker:
    """Checks pulled models; asks the Hub at most once per repo."""

    def __init__(self, registry: Registry, *, offline: bool) -> None:
        self.registry, self.offline = registry, offline
        self._heads: dict[str, str | LlmrunError] = {}

    def check(self, m: Manifest) -> Status:
        try:
            return self._check(m)
        except LlmrunError as exc:
            return Status(m.name, short(m.revision), "", "unknown",
                          f"could not check: {exc.message}")

    def _check(self, m: Manifest) -> Status:
        from .refs import RegistryRef, parse

        local = short(m.revision)
        if m.kind == "registry":
            ref = parse(m.name, self.registry)
            if not isinstance(ref, RegistryRef):
                raise LlmrunError(f"{m.name} is no longer a registry name")
            change = registry_change(m, ref.entry, ref.quant)
            if change is not None:
                return Status(m.name, local, change[1], "outdated", change[0])
            if pinned(ref.entry, ref.quant):
                return Status(m.name, local, "", "current", "the registry pins these files")
        assert m.repo is not None
        return self._against_main(m, m.repo)

    def _head(self, repo: str) -> str:
        from . import hub

        if repo not in self._heads:
            try:
                if self.offline:
                    raise NetworkError("HF_HUB_OFFLINE is set")
                self._heads[repo] = hub.resolve_commit(repo, None)
            except LlmrunError as exc:
                self._heads[repo] = exc
        head = self._heads[repo]
        if isinstance(head, LlmrunError):
            raise head
        return head

    def _against_main(self, m: Manifest, repo: str) -> Status:
        from . import hub

        local, commit = short(m.revision), self._head(repo)
        if commit == m.revision:
            return Status(m.name, local, "", "current", "same commit as main")
        remote = hub.paths_info(repo, [f.path for f in m.files], commit)
        gone = [f.path for f in m.files if f.path not in remote]
        if gone:
            return Status(m.name, local, short(commit), "removed",
                          f"{gone[0]} is no longer in hf.co/{repo} at main")
        if all(_same(f.sha256, f.size, remote[f.path]) for f in m.files):
            return Status(m.name, local, "", "current", "main moved; these files did not")
        return Status(m.name, local, short(commit), "outdated", "main has new files")


def _same(sha256: str, size: int, remote: RemoteFile) -> bool:
    if remote.sha256 is not None:
        return remote.sha256 == sha256
    return remote.size == size  # not in LFS: no sha256 to compare (GGUFs always are)


def check_all(manifests: list[Manifest], registry: Registry, *, offline: bool) -> list[Status]:
    """One status per pulled model (imports are not pulled: left out), in name order."""
    checker = Checker(registry, offline=offline)
    return [checker.check(m) for m in sorted(manifests, key=lambda m: m.name)
            if m.kind != "import" and m.repo is not None]
