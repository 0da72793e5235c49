"""The only module that imports huggingface_hub: endpoint, token, metadata, listings, URLs,
offline mode and error translation. Transfers themselves are in download.py (resumable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import huggingface_hub
from huggingface_hub import constants, errors, get_session, hf_hub_url
from huggingface_hub.utils import (  # type: ignore[attr-defined]
    build_hf_headers,
    hf_raise_for_status,
)

from . import __version__
from .download import Http, RetryableStatus
from .errors import AuthError, LlmrunError, NetworkError, NotFound
from .registry import FILE_RE


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None


def is_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    return str(constants.ENDPOINT)


def headers() -> dict[str, str]:
    """Request headers with the user's token (HF_TOKEN or `hf auth login`); never logged."""
    return dict(build_hf_headers(library_name="llmrun", library_version=__version__))


try:  # huggingface_hub >= 2 uses httpx2, 1.x uses httpx
    import httpx2 as _http  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _http  # type: ignore[no-redef, unused-ignore]

TRANSIENT: tuple[type[BaseException], ...] = (_http.TransportError,)


def http(stall_timeout: float) -> Http:
    """The Hub's own HTTP session (proxies, endpoint, user agent) set up for resumable GETs."""
    t = _http.Timeout(connect=min(stall_timeout, 30.0), read=stall_timeout,
                      write=stall_timeout, pool=stall_timeout)
    return Http(client=get_session(), headers=headers(), raise_for_status=raise_for_status,
                transient=TRANSIENT, timeout=t)


def url(repo: str, path: str, revision: str) -> str:
    return str(hf_hub_url(repo, path, revision=revision, endpoint=endpoint()))


def translate(exc: BaseException, what: str) -> LlmrunError:
    """Turn a huggingface_hub / HTTP error into llmrun's typed error (one place)."""
    if isinstance(exc, errors.GatedRepoError):
        return AuthError(f"{what} is gated: access must be requested on the Hub",
                         hint="accept the license on its Hub page, then set HF_TOKEN")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return NotFound(f"{what} was not found on the Hub (or it is private)",
                        hint="check the name; for a private repo set HF_TOKEN")
    if isinstance(exc, (errors.EntryNotFoundError, errors.RevisionNotFoundError)):
        return NotFound(f"{what} was not found on the Hub")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return NetworkError(f"{what} is not pulled and HF_HUB_OFFLINE is set",
                            hint="unset HF_HUB_OFFLINE to download it")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return AuthError(f"{what}: access denied by the Hub (HTTP {status})",
                             hint="set HF_TOKEN to a token that can read it")
        return NetworkError(f"{what}: the Hub answered HTTP {status}", hint="re-run to retry")
    if isinstance(exc, TRANSIENT):
        return NetworkError(f"{what}: network error ({type(exc).__name__})",
                            hint=f"check your connection to {endpoint()}; re-run to retry")
    return NetworkError(f"{what}: {exc}")


def raise_for_status(response: Any, what: str) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        raise RetryableStatus(f"HTTP {response.status_code}")
    try:
        hf_raise_for_status(response)
    except Exception as exc:
        raise translate(exc, what) from None


def _api() -> Any:
    return huggingface_hub.HfApi(endpoint=endpoint(), library_name="llmrun",
                                 library_version=__version__)


def resolve_commit(repo: str, revision: str | None) -> str:
    try:
        info = _api().model_info(repo, revision=revision or "main")
    except Exception as exc:
        raise translate(exc, f"hf.co/{repo}") from None
    return str(info.sha)


def list_files(repo: str, revision: str) -> list[RemoteFile]:
    """All files of the repo with size and LFS sha256; names that could escape the cache are
    dropped here, before anything uses them (T12)."""
    try:
        entries = list(_api().list_repo_tree(repo, recursive=True, expand=True,
                                             revision=revision))
    except Exception as exc:
        raise translate(exc, f"hf.co/{repo}") from None
    out = []
    for e in entries:
        path = getattr(e, "path", "")
        if getattr(e, "size", None) is None or not FILE_RE.match(path) or ".." in path:
            continue
        lfs = getattr(e, "lfs", None)
        out.append(RemoteFile(path, e.size, getattr(lfs, "sha256", None) if lfs else None))
    return out


def file_info(repo: str, path: str, revision: str) -> tuple[str, RemoteFile]:
    """HEAD one file: (commit, RemoteFile with the LFS sha256 as etag)."""
    try:
        meta = huggingface_hub.get_hf_file_metadata(
            url(repo, path, revision), library_name="llmrun", library_version=__version__,
            endpoint=endpoint())
    except Exception as exc:
        raise translate(exc, f"hf.co/{repo}/{path}") from None
    etag = (meta.etag or "").strip('"')
    sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    return str(meta.commit_hash or revision), RemoteFile(path, meta.size, sha)


def paths_info(repo: str, paths: list[str], revision: str) -> dict[str, RemoteFile]:
    """Size and LFS sha256 of some files at ``revision`` (one request); a path the Hub does not
    have is left out."""
    try:
        entries = _api().get_paths_info(repo, paths, revision=revision)
    except Exception as exc:
        raise translate(exc, f"hf.co/{repo}") from None
    out = {}
    for e in entries:
        path, size = getattr(e, "path", ""), getattr(e, "size", None)
        if path in paths and size is not None:
            lfs = getattr(e, "lfs", None)
            out[path] = RemoteFile(path, size, getattr(lfs, "sha256", None) if lfs else None)
    return out


def download_small(repo: str, path: str, revision: str, max_bytes: int) -> tuple[str, str]:
    """Fetch a small file (the published registry) into the Hugging Face cache, the way any Hub
    file is cached; returns (commit, local path). The commit is resolved first, so a network
    failure is an error here, never a silent fall-back to an older cached copy (which is what
    hf_hub_download does when its HEAD fails), and a file announced larger than ``max_bytes``
    is refused before its body is asked for."""
    from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

    commit, remote = file_info(repo, path, revision)
    if remote.size is not None and remote.size > max_bytes:
        raise LlmrunError(f"hf.co/{repo}/{path} is {remote.size} bytes, more than the "
                          f"{max_bytes} a registry may have; nothing was downloaded")
    try:
        with disable_progress_bars():
            local = huggingface_hub.hf_hub_download(
                repo, path, revision=commit, endpoint=endpoint(), library_name="llmrun",
                library_version=__version__)
    except Exception as exc:
        raise translate(exc, f"hf.co/{repo}/{path}") from None
    return commit, str(local)


def cache_dir() -> str:
    return str(constants.HF_HUB_CACHE)


def token_source() -> str | None:
    """Where the user's Hub token comes from ("HF_TOKEN", "token file"), or None; never the
    token itself."""
    import os

    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN"
    if huggingface_hub.get_token():
        return "token file"
    return None


def ping(timeout: float) -> tuple[bool, str]:
    """Whether the Hub endpoint answers HTTP within ``timeout`` seconds (any status counts),
    and a short reason."""
    if is_offline():
        return False, "offline mode (HF_HUB_OFFLINE)"
    try:
        response = get_session().head(endpoint(), timeout=timeout, follow_redirects=False)
    except Exception as exc:  # DNS, refused, timeout, TLS: all "unreachable"
        return False, (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return True, f"HTTP {response.status_code}"
