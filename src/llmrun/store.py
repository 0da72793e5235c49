"""What is pulled, and where. Weights live in the Hugging Face cache layout; llmrun's own
records (one JSON manifest per pulled name) live under ``$LLMRUN_HOME/state``.

The store never writes a model file in place: blobs appear by atomic rename, manifests by
atomic replace, so a killed process leaves either the old state or the new one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from .download import PART_SUFFIX
from .errors import CorruptModel, InUse, ModelNotPulled

if TYPE_CHECKING:
    from .refs import Ref


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved the way huggingface_hub and llama.cpp do."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def blob_lock(repo_dirname: str, key: str) -> Path:
    """The lock of one blob: the path huggingface_hub locks too, so `hf download` and `llmrun
    pull` of the same file serialise. ``repo_dirname`` is the cache's ``models--ORG--REPO``."""
    return hub_cache_dir() / ".locks" / repo_dirname / f"{key}.lock"


def repo_dir(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


@dataclass
class StoredFile:
    path: str  # file name inside the repo
    local: str  # absolute path llama.cpp opens (a snapshot symlink or a blob)
    size: int
    sha256: str
    role: str = "model"  # "mmproj": the vision projector pulled with the model


@dataclass
class Manifest:
    name: str  # what the user typed, canonical (registry name or hf.co/ORG/REPO:QUANT)
    kind: str  # registry | hub | import
    repo: str | None
    revision: str | None
    quant: str | None
    files: list[StoredFile]
    source: str  # hub | package | import
    pulled_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    chat_template: str | None = None  # given at import (`--chat-template`), over the GGUF's
    mmproj_skipped: bool = False  # pulled with --no-mmproj although it has a projector

    @property
    def size(self) -> int:
        """The model's bytes (its projector, if any, is apart: ``mmproj``)."""
        return sum(f.size for f in self.model_files)

    @property
    def model_files(self) -> list[StoredFile]:
        """The model's own files (its parts), without the projector."""
        return [f for f in self.files if f.role != "mmproj"]

    @property
    def mmproj(self) -> StoredFile | None:
        """The vision projector pulled with the model, if any (listed after the model's
        parts in ``files``, so rm, verify, prune and updates treat it like any file)."""
        return next((f for f in self.files if f.role == "mmproj"), None)

    @property
    def model_path(self) -> Path:
        """The file to hand llama.cpp: the first (or only) part."""
        return Path(self.model_files[0].local)

    @property
    def mmproj_path(self) -> Path | None:
        found = self.mmproj
        return Path(found.local) if found is not None else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        files = [StoredFile(**f) for f in data.pop("files")]
        return cls(files=files, **data)


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def link_snapshot(repo: str, revision: str, path: str, blob: Path) -> Path:
    """Point snapshots/<revision>/<path> at the blob (relative symlink, replaced atomically)."""
    target = repo_dir(repo) / "snapshots" / revision / path
    target.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(blob, target.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(rel, tmp)
    except OSError:  # no symlinks (some Windows setups): copy, as huggingface_hub does
        import shutil

        shutil.copyfile(blob, tmp)
    os.replace(tmp, target)
    return target


def write_ref(repo: str, ref: str, revision: str) -> None:
    atomic_write_text(repo_dir(repo) / "refs" / ref, revision)


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.manifests = home / "state" / "manifests"
        self.blobs = home / "blobs"  # imported files (copies)

    def _manifest_path(self, name: str) -> Path:
        return self.manifests / (quote(name, safe="") + ".json")

    def save(self, manifest: Manifest) -> None:
        atomic_write_text(self._manifest_path(manifest.name),
                          json.dumps(asdict(manifest), indent=2) + "\n")

    def get(self, name: str) -> Manifest | None:
        path = self._manifest_path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise CorruptModel(f"llmrun's record for {name!r} is unreadable: {exc}",
                               hint=f"delete {path} and pull again") from None
        return Manifest.from_json(data)

    def require(self, name: str) -> Manifest:
        manifest = self.get(name)
        if manifest is None:
            raise ModelNotPulled(f"model {name!r} is not pulled", hint=f"llmrun pull {name}")
        return manifest

    def names(self) -> list[str]:
        """The pulled models' names, from the record files' names alone (cheap: for shell
        completion)."""
        if not self.manifests.is_dir():
            return []
        return sorted(unquote(p.stem) for p in self.manifests.glob("*.json"))

    def all(self) -> Iterator[Manifest]:
        if not self.manifests.is_dir():
            return
        for path in sorted(self.manifests.glob("*.json")):
            manifest = self.get(unquote(path.stem))
            if manifest is not None:
                yield manifest

    def find(self, ref: Ref) -> Manifest | None:
        """The complete pulled copy of a registry or Hub reference, if there is one."""
        from .refs import HubRef, RegistryRef

        found: Manifest | None = None
        if isinstance(ref, RegistryRef):
            found = self.get(ref.display)
        elif isinstance(ref, HubRef):
            want = (ref.quant or "").lower()
            found = next((m for m in self.all() if m.kind == "hub" and m.repo
                          and m.repo.lower() == ref.repo.lower()
                          and (not want or (m.quant or "").lower() == want)), None)
        if found is not None and all(Path(f.local).exists() for f in found.files):
            return found
        return None

    def checked_path(self, manifest: Manifest) -> Path:
        """The model file, refusing one that now resolves outside the store (a symlink
        planted in the cache), without opening it (T13). Linked imports live elsewhere."""
        return self._checked(manifest, manifest.model_path)

    def checked_mmproj(self, manifest: Manifest) -> Path | None:
        """The vision projector pulled with the model (None: it has none), checked the same
        way as the model file."""
        path = manifest.mmproj_path
        return None if path is None else self._checked(manifest, path)

    def _checked(self, manifest: Manifest, path: Path) -> Path:
        if manifest.source != "link":
            real = path.resolve()
            if not (_inside(real, hub_cache_dir()) or _inside(real, self.blobs)):
                raise CorruptModel(f"{path} resolves outside the model store ({real})",
                                   hint=f"run `llmrun pull --force {manifest.name}`")
        return path

    def remove(self, name: str, *, force: bool = False) -> int:
        """Forget a model; delete its files unless another pulled model shares them.
        Refuses (InUse) while a running llmrun process has the model loaded, unless ``force``:
        then that process keeps its open copy until it unloads it. Returns bytes freed."""
        from . import inuse

        manifest = self.require(name)
        with inuse.exclusive([] if force else _files(manifest)) as busy:
            _refuse_busy(manifest, busy)
            return self._remove(name, manifest)

    def import_file(self, file: Path, *, name: str, quant: str | None, size: int, link: bool,
                    chat_template: str | None = None) -> Manifest:
        """Record a local GGUF under ``name``: copied into the store's blobs (by sha256), or
        linked where it is. The file must have been validated already."""
        import shutil

        digest = sha256_file(file)
        local = file.resolve()
        if not link:
            self.blobs.mkdir(parents=True, exist_ok=True)
            local = self.blobs / f"sha256-{digest}.gguf"
            if not local.exists():
                tmp = local.with_name(local.name + ".tmp")
                shutil.copyfile(file, tmp)
                os.replace(tmp, local)
        manifest = Manifest(name, "import", None, None, quant,
                            [StoredFile(file.name, str(local), size, digest)],
                            "link" if link else "import", chat_template=chat_template)
        self.save(manifest)
        return manifest

    def orphans(self) -> list[Path]:
        """What `prune` may remove: llmrun's partial downloads whose pull is not running, and
        blobs that no snapshot and no record refers to, in the repos llmrun pulled (other
        repos belong to other tools) and in its own import store."""
        from filelock import FileLock, Timeout

        manifests = list(self.all())
        referenced = {f.sha256 for m in manifests for f in m.files}
        found: list[Path] = []
        # partial files in any repo (a first pull that never finished has no record)
        for part in sorted(hub_cache_dir().glob(f"models--*/blobs/*{PART_SUFFIX}")):
            lock = blob_lock(part.parent.parent.name, part.name[: -len(PART_SUFFIX)])
            try:
                with FileLock(lock, timeout=0):
                    found.append(part)  # nobody holds the lock: that pull is not running
            except Timeout:
                continue
        for repo in sorted({m.repo for m in manifests if m.repo}):
            root = repo_dir(repo)
            if not (root / "blobs").is_dir():
                continue
            linked = {Path(os.path.realpath(p)).name for p in (root / "snapshots").rglob("*")
                      if p.is_symlink()}
            found += [b for b in (root / "blobs").iterdir() if not b.name.endswith(PART_SUFFIX)
                      and b.name not in linked and b.name not in referenced]
        found += [p for p in self.blobs.glob("sha256-*.gguf") if p.name[7:-5] not in referenced]
        return found

    def retire(self, old: Manifest) -> list[Path]:
        """After an update saved a new record over ``old`` (same name): remove the old files nothing
        uses any more, as `rm` would (snapshot links first, then blobs no record and no other
        snapshot points to). A blob a running llmrun process has loaded is left alone, and
        returned: with its link gone it is an orphan that `prune` removes once it is free."""
        from . import inuse

        records = list(self.all())
        used_links = {f.local for m in records for f in m.files}
        used_blobs = {Path(f.local).resolve() for m in records for f in m.files}
        kept: list[Path] = []
        for f in old.files:
            if f.local in used_links:  # the new record (or another) links it still
                continue
            local = Path(f.local)
            blob = local.resolve()
            if local.is_symlink():
                local.unlink(missing_ok=True)
                _prune_empty_dirs(local.parent, stop=hub_cache_dir())
            if blob in used_blobs or _linked_elsewhere(blob) or not blob.is_file() or not (
                    _inside(blob, hub_cache_dir()) or _inside(blob, self.blobs)):
                continue
            with inuse.exclusive([blob]) as busy:
                if busy:
                    kept.append(blob)
                else:
                    blob.unlink()
        return kept

    def ensure_unused(self, manifest: Manifest) -> None:
        """Raise InUse while a running llmrun process has the model loaded."""
        from . import inuse

        with inuse.exclusive(_files(manifest)) as busy:
            _refuse_busy(manifest, busy)

    def _remove(self, name: str, manifest: Manifest) -> int:
        self._manifest_path(name).unlink()
        still_used = {Path(f.local).resolve() for m in self.all() for f in m.files}
        freed = 0
        for f in manifest.files:
            local = Path(f.local)
            blob = local.resolve()
            if local.is_symlink():
                local.unlink(missing_ok=True)
            if blob in still_used or _linked_elsewhere(blob):
                continue  # another model, or a snapshot of `hf download`, still uses it
            if blob.is_file() and (_inside(blob, hub_cache_dir()) or _inside(blob, self.blobs)):
                freed += blob.stat().st_size
                blob.unlink()
            _prune_empty_dirs(local.parent, stop=hub_cache_dir())
        if manifest.repo and not any(m.repo == manifest.repo for m in self.all()):
            _remove_repo_if_unused(manifest.repo)
        return freed


def _files(manifest: Manifest) -> list[Path]:
    return [Path(f.local).resolve() for f in manifest.files]


def _refuse_busy(manifest: Manifest, busy: list[Path]) -> None:
    from . import inuse

    if busy:
        pids = sorted({pid for path in busy for pid in inuse.holders(path)})
        by = f" (pid {', '.join(map(str, pids))})" if pids else ""
        raise InUse(f"{manifest.name} is loaded by a running llmrun process{by}",
                    hint="stop that chat, run or serve first, or pass --force "
                         "(it keeps working until it unloads the model)")


def _linked_elsewhere(blob: Path) -> bool:
    """Whether any snapshot of the blob's repo still points at it."""
    snapshots = blob.parent.parent / "snapshots"
    return snapshots.is_dir() and any(
        p.is_symlink() and p.resolve() == blob for p in snapshots.rglob("*"))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _prune_empty_dirs(start: Path, stop: Path) -> None:
    current = start
    while _inside(current, stop) and current.resolve() != stop.resolve():
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def _remove_repo_if_unused(repo: str) -> None:
    """Drop the repo's cache folder when no blob is left in it (refs alone are not a model)."""
    root = repo_dir(repo)
    blobs = root / "blobs"
    if blobs.is_dir() and any(not p.name.endswith(PART_SUFFIX) for p in blobs.iterdir()):
        return
    import shutil

    shutil.rmtree(root, ignore_errors=True)
