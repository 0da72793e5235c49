"""A small Hugging Face Hub double for tests: stdlib only, threaded, bound to 127.0.0.1.

It implements what llmrun (through huggingface_hub) uses, the way the real Hub answers:

* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}`` (rev = ``main`` or a 40-hex commit) with
  ``ETag``/``X-Linked-Etag`` (quoted sha256 for LFS files, git blob sha1 for plain files),
  ``X-Linked-Size``, ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges: bytes``;
  ``Range: bytes=N-`` / ``N-M`` / ``-S`` answered 206 + ``Content-Range``, unsatisfiable 416.
  The file is served directly (200), not through a 302 to a CDN as the real Hub does for LFS.
* ``GET /api/models/{org}/{name}[/revision/{rev}]`` (model_info; ``?blobs=true`` adds sizes,
  ``?expand=...`` filters), ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]``
  (``recursive``, ``expand``), ``POST /api/models/{org}/{name}/paths-info/{rev}``.
* Errors carry the headers ``huggingface_hub.utils.hf_raise_for_status`` classifies by:
  unknown repo 401 ``X-Error-Code: RepoNotFound``; unknown file 404 ``EntryNotFound`` (with
  ``X-Repo-Commit``); unknown revision 404 ``RevisionNotFound``; gated 401/403 ``GatedRepo``.

Git object ids (blob, tree, commit) are computed exactly as git would for a repo whose single
commit holds the current files (LFS files as pointer files), authored like ``olah_hub.OlahHub``
does, so the double's commit and oids equal olah's for the same files.

Faults (``hub.faults`` / ``Faults``) change only the body of a file GET, except ``status_for``,
``require_token`` and ``hold_for`` which apply to every request. They can be changed at any
time; each request reads them when it starts.

Hostile listings: ``add_file(..., unsafe_name=True)`` stores a name the Hub could never hold
(``../../evil.gguf``, ``sub/..\\..\\x.gguf``, ``/tmp/x.gguf``) verbatim; it is listed as one
entry at the root of the tree, in model_info's siblings and by paths-info, as a hostile
Hub-compatible server would answer.

Standalone: ``python tests/hubdouble.py --repo ORG/NAME --file PATH [--file PATH] [--port N]``
prints the URL on stdout and serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fnmatch
import hashlib
import io
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["DEFAULT_LFS_PATTERNS", "Faults", "HubDouble", "RequestRecord", "ResponseRecord"]

CHUNK = 64 * 1024
ZERO_COMMIT_DATE = "2024-01-01T00:00:00.000Z"
_GIT_DATE = "1704067200 +0000"  # 2024-01-01T00:00:00Z, same as olah_hub
_GIT_IDENT = "llmrun tests <tests@llmrun.invalid>"
_COMMIT_TITLE = "Upload files"
_HEX40 = frozenset("0123456789abcdef")

# Subset of the default .gitattributes the Hub creates for a new repo (same as olah_hub).
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.gguf", "*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.h5",
    "*.msgpack", "*.npy", "*.npz", "*.pkl", "*.pickle", "*.model", "*.tflite", "*.zip",
    "*.gz", "*.tar", "*.tgz", "*.xz", "*.zst", "*.7z", "*.parquet", "*.arrow",
)  # fmt: skip
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024


def default_is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= _LFS_SIZE_THRESHOLD or any(
        fnmatch.fnmatch(name, p) for p in DEFAULT_LFS_PATTERNS
    )


# --------------------------------------------------------------------------------------------
# Faults and records
# --------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Fault switches. ``*_times``: how many responses the fault is applied to (``None`` = all);
    it counts down only when the fault actually changes a response.

    Body faults (file GET only; HEAD and API calls are never affected):
      drop_after:   send N body bytes of this response, then close the connection (FIN; with
                    ``drop_reset`` an abortive close, RST). Counted by ``drop_times``.
      short_body:   same on the wire (full Content-Length announced, N bytes sent, closed),
                    counted separately by ``short_times`` (default: every time).
      ignore_range: answer a Range GET with 200 and the whole body (no Accept-Ranges).
      flip_byte_at: XOR 0xFF the byte at this absolute file offset (same length).
      stall_after:  after N body bytes, send nothing for ``stall_seconds`` (connection kept
                    open), then carry on. Ends early when the server stops.
      throttle_bps: pace the body at about this many bytes per second.
    Request faults (every request):
      hold_for:     substring of the path (URL-decoded, no query; may start with a method like
                    ``status_for`` keys): a matching request is held, unanswered, until
                    ``hub.release()`` (or ``reset_faults()`` / ``stop()``). ``hub.wait_held(t)``
                    waits until one is held. With ``hold_after=N`` the hold applies to a file
                    GET's body instead: headers and N body bytes are sent first (0 = right
                    after the headers). Counted by ``hold_times``.
      status_for:   {substring: status}; a request whose path (URL-decoded, no query) contains
                    the substring gets that status with the Hub's error headers (401
                    RepoNotFound, 403 GatedRepo, 404 EntryNotFound/RepoNotFound, 5xx plain).
                    A key may start with a method, e.g. ``"GET /resolve/"``.
      require_token: without ``Authorization: Bearer <token>`` -> 401 RepoNotFound (private
                    repo); with another token -> 401 "Invalid credentials in Authorization
                    header" (no error code, as the Hub answers a bad token).
    """

    drop_after: int | None = None
    drop_times: int | None = None
    drop_reset: bool = False
    short_body: int | None = None
    short_times: int | None = None
    ignore_range: bool = False
    flip_byte_at: int | None = None
    flip_times: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 5.0
    stall_times: int | None = None
    throttle_bps: int | None = None
    hold_for: str | None = None
    hold_after: int | None = None
    hold_times: int | None = None
    status_for: dict[str, int] = field(default_factory=dict)
    status_times: int | None = None
    require_token: str | None = None


FAULT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Faults))


class RequestRecord(NamedTuple):
    method: str
    path: str  # raw request target, query string included
    headers: dict[str, str]  # header names lower-cased


class ResponseRecord(NamedTuple):
    method: str
    path: str
    status: int
    body_bytes: int  # body bytes actually written (0 for HEAD)


# --------------------------------------------------------------------------------------------
# Repo model
# --------------------------------------------------------------------------------------------

_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int, int, int], dict[str, str]] = {}


def _git_oid(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _hash_source(source: Path, size: int, want_git: bool) -> dict[str, str]:
    """sha256 (and git blob sha1 when asked) of a file, cached by (path, inode, size, mtime)."""
    st = source.stat()
    key = (str(source.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None and (not want_git or "git" in cached):
        return cached
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode()) if want_git else None
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            if git is not None:
                git.update(chunk)
    result = {"sha256": sha.hexdigest()}
    if git is not None:
        result["git"] = git.hexdigest()
    with _hash_lock:
        _hash_cache[key] = result
    return result


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int
    sha256: str
    lfs: bool
    blob_oid: str  # git oid of what git stores: the pointer (LFS) or the content
    pointer_size: int | None
    data: bytes | None
    source: Path | None
    unsafe: bool = False  # a hostile name, listed verbatim at the root (add_file unsafe_name)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_oid

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.source is not None
        return open(self.source, "rb")


@dataclass(frozen=True)
class _Snapshot:
    commit: str
    files: dict[str, _Entry]
    dir_oids: dict[str, str]  # "" is the root tree
    last_commit: dict[str, str]  # path (file or dir) -> commit that last changed it


@dataclass
class _Repo:
    repo_id: str
    gated: bool | str = False
    gated_tokens: frozenset[str] = frozenset()
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, _Entry] = field(default_factory=dict)
    history: dict[str, _Snapshot] = field(default_factory=dict)
    head: _Snapshot | None = None


def _build_trees(files: dict[str, _Entry]) -> dict[str, str]:
    """Git tree oids for every directory ("" = root), as git computes them."""
    children: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    for path, entry in files.items():
        if entry.unsafe:  # one root entry named by the whole hostile string
            children[""][path] = (False, path)
            continue
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent, name = "/".join(parts[: i - 1]), parts[i - 1]
            children.setdefault("/".join(parts[:i]), {})
            children.setdefault(parent, {})[name] = (True, "/".join(parts[:i]))
        children.setdefault("/".join(parts[:-1]), {})[parts[-1]] = (False, path)
    oids: dict[str, str] = {}

    def tree(d: str) -> str:
        items = []
        for name, (is_dir, full) in children[d].items():
            sort_key = name + "/" if is_dir else name
            if is_dir:
                items.append(
                    (sort_key, b"40000 " + name.encode() + b"\0" + bytes.fromhex(tree(full)))
                )
            else:
                oid = bytes.fromhex(files[full].blob_oid)
                items.append((sort_key, b"100644 " + name.encode() + b"\0" + oid))
        items.sort(key=lambda kv: kv[0].encode())
        oids[d] = _git_oid("tree", b"".join(v for _, v in items))
        return oids[d]

    tree("")
    return oids


def _commit_oid(tree_oid: str) -> str:
    body = (
        f"tree {tree_oid}\nauthor {_GIT_IDENT} {_GIT_DATE}\ncommitter {_GIT_IDENT} {_GIT_DATE}\n"
        f"\n{_COMMIT_TITLE}\n"
    )
    return _git_oid("commit", body.encode())


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


class _StopTransfer(Exception):
    pass


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, None to ignore the header, or "416"."""
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None
    spec = value[len("bytes=") :].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            if not last.isdigit():
                return None
            suffix = int(last)
            if suffix == 0 or size == 0:
                return "416"
            return max(size - suffix, 0), size - 1
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if last and end < start:
        return None
    if start >= size:
        return "416"
    return start, min(end, size - 1)


def _key_matches(key: str, method: str, decoded_path: str) -> bool:
    """A ``status_for`` / ``hold_for`` key: "SUBSTRING" or "METHOD SUBSTRING"."""
    want_method, sub = "", key
    first, sep, after = key.partition(" ")
    if sep and first.upper() in ("GET", "HEAD", "POST"):
        want_method, sub = first.upper(), after
    if want_method and want_method != method:
        return False
    return sub in decoded_path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if (
            isinstance(exc, (ConnectionError, TimeoutError, _StopTransfer))
            or self.hub._stopping.is_set()
        ):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubDouble/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    server: _Server
    _decoded_path = ""

    def _record(self) -> RequestRecord:
        headers = {k.lower(): v for k, v in self.headers.items()}
        return RequestRecord(self.command, self.path, headers)

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)
        self.server.hub._track_thread(threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.hub._track(self.connection, add=False)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, _StopTransfer):
            self.close_connection = True
        except OSError:
            if not self.server.hub._stopping.is_set():
                raise

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hub.verbose:
            sys.stderr.write(f"hubdouble: {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- responses ---------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes = b"",
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", self._request_id)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        written = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            written = len(body)
        self.server.hub._record_response(self.command, self.path, status, written)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, {}, json.dumps(obj).encode())

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        api: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        headers.update(extra or {})
        if api:
            self._send(status, headers, json.dumps({"error": message}).encode())
        else:
            self._send(status, headers, message.encode(), "text/plain; charset=utf-8")

    def _forced_status(self, status: int, repo_id: str | None, *, api: bool, resolve: bool) -> None:
        repo = repo_id or "unknown/unknown"
        if status == 401:
            self._error(401, "RepoNotFound", "Invalid username or password.", api=api)
        elif status == 403:
            self._error(
                403,
                "GatedRepo",
                f"Access to model {repo} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo} to ask for access.",
                api=api,
            )
        elif status == 404 and resolve:
            extra = {}
            commit = self.server.hub._head_commit(repo)
            if commit is not None:
                extra["X-Repo-Commit"] = commit
            self._error(404, "EntryNotFound", "Entry not found", api=False, extra=extra)
        elif status == 404:
            self._error(404, "RepoNotFound", "Repository not found", api=api)
        elif status == 429:
            self._error(429, None, "Too Many Requests", api=api, extra={"Retry-After": "1"})
        else:
            phrase = self.responses.get(status, ("Error",))[0]
            self._error(status, None, phrase, api=api)

    # -- routing -----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        self._request_id = f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"
        body = b""
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        hub._record_request(method, self.path, self._record().headers)
        faults = hub.faults
        split = urlsplit(self.path)
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        decoded_path = "/" + "/".join(segs)
        query = parse_qs(split.query, keep_blank_values=True)

        api = len(segs) >= 4 and segs[0] == "api" and segs[1] == "models"
        resolve = not api and len(segs) >= 5 and segs[2] == "resolve"
        repo_id = f"{segs[2]}/{segs[3]}" if api else f"{segs[0]}/{segs[1]}" if resolve else None

        self._decoded_path = decoded_path

        # Held requests, forced statuses, then authentication.
        hold = faults.hold_for
        if (
            hold is not None
            and faults.hold_after is None
            and _key_matches(hold, method, decoded_path)
            and hub._take(faults, "hold_times")
        ):
            hub._hold(self._record())
        for key, status in list(faults.status_for.items()):
            if _key_matches(key, method, decoded_path) and hub._take(faults, "status_times"):
                self._forced_status(status, repo_id, api=api, resolve=resolve)
                return
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if faults.require_token is not None and token != faults.require_token:
            if token is None:
                self._error(401, "RepoNotFound", "Invalid username or password.", api=api)
            else:
                self._error(401, None, "Invalid credentials in Authorization header", api=api)
            return

        if not (api or resolve):
            self._error(
                404, "RepoNotFound", "Sorry, we can't find the page you are looking for.", api=True
            )
            return
        assert repo_id is not None
        repo = hub._repo(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found", api=api)
            return

        if resolve:
            if method not in ("GET", "HEAD"):
                self._error(405, None, "Method Not Allowed", api=False)
                return
            self._resolve(method, repo, segs[3], "/".join(segs[4:]), token, faults)
            return

        rest = segs[4:]
        while rest and rest[-1] == "":
            rest = rest[:-1]
        if method in ("GET", "HEAD") and not rest:
            self._model_info(repo, "main", query)
        elif method in ("GET", "HEAD") and len(rest) == 2 and rest[0] == "revision":
            self._model_info(repo, rest[1], query)
        elif method in ("GET", "HEAD") and len(rest) >= 2 and rest[0] == "tree":
            path = "/".join(rest[2:]).strip("/")
            self._tree(repo, rest[1], path, query)
        elif method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            self._paths_info(repo, rest[1], body)
        else:
            self._error(
                404, "RepoNotFound", "Sorry, we can't find the page you are looking for.", api=True
            )

    def _snapshot(self, repo: _Repo, revision: str, *, api: bool) -> _Snapshot | None:
        snap = self.server.hub._resolve_revision(repo, revision)
        if snap is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", api=api)
        return snap

    # -- API ---------------------------------------------------------------------------------

    def _model_info(self, repo: _Repo, revision: str, query: dict[str, list[str]]) -> None:
        snap = self._snapshot(repo, revision, api=True)
        if snap is None:
            return
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for e in snap.files.values():
            sib: dict[str, Any] = {"rfilename": e.path}
            if blobs:
                sib["blobId"] = e.blob_oid
                sib["size"] = e.size
                if e.lfs:
                    sib["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(sib)
        org = repo.repo_id.split("/")[0]
        has_gguf = any(p.endswith(".gguf") for p in snap.files)
        info: dict[str, Any] = {
            "_id": hashlib.sha256(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": org,
            "sha": snap.commit,
            "lastModified": ZERO_COMMIT_DATE,
            "private": False,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if has_gguf else [],
            "siblings": siblings,
            "spaces": [],
            "createdAt": ZERO_COMMIT_DATE,
            "usedStorage": sum(e.size for e in snap.files.values()),
        }
        info.update(copy.deepcopy(repo.info))
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        self._json(info)

    def _entry_json(self, snap: _Snapshot, e: _Entry, expand: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": e.blob_oid, "size": e.size, "path": e.path}
        if e.lfs:
            item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
        if expand:
            item["lastCommit"] = self._last_commit(snap, e.path)
            item["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"status": "safe", "virusNames": None},
                "pickleImportScan": {"status": "unscanned", "pickleImports": None},
            }
        return item

    def _dir_json(self, snap: _Snapshot, path: str, expand: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "type": "directory",
            "oid": snap.dir_oids[path],
            "size": 0,
            "path": path,
        }
        if expand:
            item["lastCommit"] = self._last_commit(snap, path)
        return item

    def _last_commit(self, snap: _Snapshot, path: str) -> dict[str, str]:
        return {
            "id": snap.last_commit.get(path, snap.commit),
            "title": _COMMIT_TITLE,
            "date": ZERO_COMMIT_DATE,
        }

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict[str, list[str]]) -> None:
        snap = self._snapshot(repo, revision, api=True)
        if snap is None:
            return
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[-1].lower() in ("1", "true")
        if path and path not in snap.dir_oids:
            self._error(404, "EntryNotFound", f'{path} does not exist on "{revision}"', api=True)
            return
        out: list[dict[str, Any]] = []

        def walk(d: str) -> None:
            prefix = d + "/" if d else ""
            names: dict[str, bool] = {}
            for p, e in snap.files.items():
                if e.unsafe:
                    if not d:
                        names[p] = False  # listed verbatim, once, at the root
                    continue
                if p.startswith(prefix):
                    head, sep, _ = p[len(prefix) :].partition("/")
                    names[head] = bool(sep) or names.get(head, False)
            for name in sorted(names, key=lambda n: (n + "/" if names[n] else n).encode()):
                full = prefix + name
                if names[name]:
                    out.append(self._dir_json(snap, full, expand))
                    if recursive:
                        walk(full)
                else:
                    out.append(self._entry_json(snap, snap.files[full], expand))

        walk(path)
        self._json(out)

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> None:
        snap = self._snapshot(repo, revision, api=True)
        if snap is None:
            return
        ctype = (self.headers.get("Content-Type") or "").lower()
        paths: list[str]
        if "json" in ctype:
            payload = json.loads(body or b"{}")
            paths = list(payload.get("paths", []))
            expand = bool(payload.get("expand", False))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        out: list[dict[str, Any]] = []
        for p in paths:
            if p in snap.files and snap.files[p].unsafe:
                out.append(self._entry_json(snap, snap.files[p], expand))
                continue
            p = p.strip("/")
            if p in snap.files and not snap.files[p].unsafe:
                out.append(self._entry_json(snap, snap.files[p], expand))
            elif p and p in snap.dir_oids:
                out.append(self._dir_json(snap, p, expand))
        self._json(out)

    # -- files -------------------------------------------------------------------------------

    def _resolve(
        self, method: str, repo: _Repo, revision: str, path: str, token: str | None, faults: Faults
    ) -> None:
        if repo.gated and token not in repo.gated_tokens:
            if token is None:
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                    api=False,
                )
            else:
                self._forced_status(403, repo.repo_id, api=False, resolve=True)
            return
        snap = self._snapshot(repo, revision, api=False)
        if snap is None:
            return
        entry = snap.files.get(path)
        if entry is None:
            self._error(
                404, "EntryNotFound", "Entry not found", api=False,
                extra={"X-Repo-Commit": snap.commit},
            )  # fmt: skip
            return
        self._serve_file(method, snap, entry, faults)

    def _serve_file(self, method: str, snap: _Snapshot, entry: _Entry, faults: Faults) -> None:
        hub = self.server.hub
        size = entry.size
        name = entry.path.rsplit("/", 1)[-1]
        headers = {
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": snap.commit,
            "Content-Disposition": (
                f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
            ),
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(size)
        status, start, end = 200, 0, size - 1
        range_header = self.headers.get("Range")
        ignore_range = method == "GET" and faults.ignore_range
        if not ignore_range:
            headers["Accept-Ranges"] = "bytes"
        if method == "GET" and range_header and not ignore_range:
            parsed = _parse_range(range_header, size)
            if parsed == "416":
                headers["Content-Range"] = f"bytes */{size}"
                self._send(416, headers, b"", "text/plain; charset=utf-8")
                return
            if isinstance(parsed, tuple):
                status, (start, end) = 206, parsed
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("X-Request-Id", self._request_id)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            hub._record_response(method, self.path, status, 0)
            return

        # Decide which body faults apply to this response.
        limit, close_after, reset = length, False, False
        drop, short = faults.drop_after, faults.short_body
        if drop is not None and drop < limit and hub._take(faults, "drop_times"):
            limit, close_after, reset = max(drop, 0), True, faults.drop_reset
        if short is not None and short < limit and hub._take(faults, "short_times"):
            limit, close_after, reset = max(short, 0), True, False
        flip: int | None = None
        fb = faults.flip_byte_at
        if fb is not None and start <= fb < start + limit and hub._take(faults, "flip_times"):
            flip = fb - start
        hold_at: int | None = None
        hold, hold_after = faults.hold_for, faults.hold_after
        if (
            hold is not None
            and hold_after is not None
            and hold_after < limit
            and _key_matches(hold, method, self._decoded_path)
            and hub._take(faults, "hold_times")
        ):
            hold_at = max(hold_after, 0)
        stall_at: int | None = None
        stall = faults.stall_after
        if stall is not None and stall < limit and hub._take(faults, "stall_times"):
            stall_at = max(stall, 0)
        bps = faults.throttle_bps if faults.throttle_bps and faults.throttle_bps > 0 else None
        step = CHUNK if bps is None else max(256, min(CHUNK, bps // 20))

        sent = 0
        stop = hub._stopping
        pace_t0, pace_base = time.monotonic(), 0
        try:
            with entry.open() as src:
                src.seek(start)
                while sent < limit:
                    if stop.is_set():
                        raise _StopTransfer
                    if hold_at is not None and sent == hold_at:
                        self.wfile.flush()
                        hub._hold(self._record())
                        hold_at = None
                        pace_t0, pace_base = time.monotonic(), sent
                    if stall_at is not None and sent == stall_at:
                        stop.wait(faults.stall_seconds)
                        if stop.is_set():
                            raise _StopTransfer
                        stall_at = None
                        pace_t0, pace_base = time.monotonic(), sent
                    n = min(step, limit - sent)
                    if stall_at is not None:
                        n = min(n, stall_at - sent)
                    if hold_at is not None:
                        n = min(n, hold_at - sent)
                    buf = src.read(n)
                    if not buf:
                        close_after = True  # file shorter than announced (changed on disk)
                        break
                    if flip is not None and sent <= flip < sent + len(buf):
                        b = bytearray(buf)
                        b[flip - sent] ^= 0xFF
                        buf = bytes(b)
                    self.wfile.write(buf)
                    sent += len(buf)
                    if bps is not None:
                        delay = pace_t0 + (sent - pace_base) / bps - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            raise _StopTransfer
            self.wfile.flush()
        except (_StopTransfer, ConnectionError, TimeoutError):
            self.close_connection = True
            close_after, reset = True, True
        finally:
            hub._record_response(method, self.path, status, sent)
            if close_after:
                self.close_connection = True
                if reset:
                    with contextlib.suppress(OSError):
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        self.connection.close()


# --------------------------------------------------------------------------------------------
# Public object
# --------------------------------------------------------------------------------------------


class HubDouble:
    """A Hub double on 127.0.0.1. Use as a context manager (or ``start()``/``stop()``).

    ``hub.url`` is the endpoint to pass as ``HF_ENDPOINT`` / ``endpoint=``.
    """

    def __init__(self, port: int = 0, *, verbose: bool = False) -> None:
        self._port = port
        self.verbose = verbose
        self.url = ""
        self.port = 0
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._requests: list[RequestRecord] = []
        self._responses: list[ResponseRecord] = []
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._held = threading.Event()  # set when a request is held; cleared by release()
        self._release = threading.Event()  # the current holds wait on this one
        self._held_requests: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.faults = Faults()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HubDouble:
        if self._server is not None:
            return self
        self._stopping.clear()
        with self._lock:
            self._release = threading.Event()
            self._held.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.hub = self
        self._server = server
        self.port = int(server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="hubdouble",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes stalls and throttles
        with self._lock:
            self._release.set()  # and held requests
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        deadline = time.monotonic() + 2.0
        with self._lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- repos -------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        *,
        gated: bool | str = False,
        gated_tokens: tuple[str, ...] | list[str] = (),
        info: dict[str, Any] | None = None,
    ) -> None:
        """Create (or update) a repo. ``gated`` ("auto"/"manual"/True) makes file downloads
        answer 401 GatedRepo without a token and 403 GatedRepo with a token not in
        ``gated_tokens``; model_info/tree stay readable, as on the Hub. ``info`` is merged into
        the model_info JSON (e.g. ``{"gguf": {...}, "cardData": {...}}``)."""
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo_id must be ORG/NAME, got {repo_id!r}")
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = self._repos[repo_id] = _Repo(repo_id)
                self._commit(repo, changed=())
            repo.gated = "manual" if gated is True else gated
            repo.gated_tokens = frozenset(gated_tokens)
            if info is not None:
                repo.info = dict(info)

    def add_file(
        self,
        repo_id: str,
        path: str,
        data: bytes | None = None,
        source: Path | str | None = None,
        *,
        lfs: bool | None = None,
        unsafe_name: bool = False,
    ) -> str:
        """Add or replace a file; returns the repo's new commit. Exactly one of ``data`` /
        ``source`` (a file served from disk, never read into memory; its sha256 is computed
        once and cached). ``lfs`` defaults to the Hub's .gitattributes rule (``*.gguf`` etc. or
        >= 10 MiB): LFS files have ETag = sha256, plain ones the git blob sha1.

        ``path`` must be a clean relative path (no ``.``/``..``/empty segment) unless
        ``unsafe_name=True``: then it is kept verbatim (leading ``/``, ``..``, backslashes) and
        listed as one entry at the root, for tests of clients that must reject such names."""
        if (data is None) == (source is None):
            raise ValueError("pass exactly one of data= or source=")
        if unsafe_name:
            if not path or "\0" in path:
                raise ValueError(f"bad path in repo: {path!r}")
        else:
            path = path.strip("/")
            if not path or any(p in ("", ".", "..") for p in path.split("/")):
                raise ValueError(f"bad path in repo: {path!r}")
        src = Path(source) if source is not None else None
        size = len(data) if data is not None else src.stat().st_size  # type: ignore[union-attr]
        is_lfs = default_is_lfs(path, size) if lfs is None else lfs
        if data is not None:
            sha256 = hashlib.sha256(data).hexdigest()
            content_oid = None if is_lfs else _git_oid("blob", data)
        else:
            assert src is not None
            hashes = _hash_source(src, size, want_git=not is_lfs)
            sha256, content_oid = hashes["sha256"], hashes.get("git")
        if is_lfs:
            pointer = lfs_pointer(sha256, size)
            blob_oid, pointer_size = _git_oid("blob", pointer), len(pointer)
        else:
            assert content_oid is not None
            blob_oid, pointer_size = content_oid, None
        entry = _Entry(path, size, sha256, is_lfs, blob_oid, pointer_size, data, src, unsafe_name)
        with self._lock:
            if repo_id not in self._repos:
                self.add_repo(repo_id)
            repo = self._repos[repo_id]
            for existing, other in repo.files.items():
                if unsafe_name or other.unsafe:
                    continue
                if existing.startswith(path + "/") or path.startswith(existing + "/"):
                    raise ValueError(f"{path!r} conflicts with {existing!r} in {repo_id}")
            repo.files[path] = entry
            return self._commit(repo, changed=(path,))

    def remove_file(self, repo_id: str, path: str) -> str:
        with self._lock:
            repo = self._repos[repo_id]
            if path not in repo.files or not repo.files[path].unsafe:
                path = path.strip("/")
            del repo.files[path]
            return self._commit(repo, changed=(path,))

    def commit(self, repo_id: str) -> str:
        """Current commit of ``main``."""
        with self._lock:
            head = self._repos[repo_id].head
            assert head is not None
            return head.commit

    def sha256(self, repo_id: str, path: str) -> str:
        with self._lock:
            return self._repos[repo_id].files[path].sha256

    def file_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def _commit(self, repo: _Repo, changed: tuple[str, ...]) -> str:
        files = dict(sorted(repo.files.items()))
        dir_oids = _build_trees(files)
        commit = _commit_oid(dir_oids[""])
        prev = repo.head
        last = dict(prev.last_commit) if prev is not None else {}
        for path in changed:
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                last["/".join(parts[:i])] = commit
        repo.head = _Snapshot(commit, files, dir_oids, last)
        repo.history[commit] = repo.head
        return commit

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _head_commit(self, repo_id: str) -> str | None:
        with self._lock:
            repo = self._repos.get(repo_id)
            return repo.head.commit if repo is not None and repo.head is not None else None

    def _resolve_revision(self, repo: _Repo, revision: str) -> _Snapshot | None:
        with self._lock:
            if revision == "main":
                return repo.head
            if len(revision) == 40 and set(revision) <= _HEX40:
                return repo.history.get(revision)
            return None

    # -- faults ------------------------------------------------------------------------------

    def reset_faults(self) -> None:
        """Clear every fault; requests held now are released."""
        self.faults = Faults()
        self.release()

    def wait_held(self, timeout: float) -> RequestRecord | None:
        """Wait until a request is held by ``hold_for`` (since the last ``release()``); return
        it, or None after ``timeout`` seconds."""
        if not self._held.wait(timeout):
            return None
        with self._lock:
            return self._held_requests[-1]

    @property
    def held_requests(self) -> list[RequestRecord]:
        """Every request held so far (released or not), oldest first."""
        with self._lock:
            return list(self._held_requests)

    def release(self) -> None:
        """Let every request held now go on. Later matching requests are held again, as long
        as ``hold_for`` is set and ``hold_times`` allows; ``wait_held`` waits for the next."""
        with self._lock:
            release, self._release = self._release, threading.Event()
            self._held.clear()
        release.set()

    def _hold(self, record: RequestRecord) -> None:
        """Block the calling handler thread until release() or stop()."""
        with self._lock:
            release = self._release
            self._held_requests.append(record)
            self._held.set()
        release.wait()
        if self._stopping.is_set():
            raise _StopTransfer

    def set_faults(self, **changes: Any) -> None:
        for k, v in changes.items():
            if k not in FAULT_FIELDS:
                raise AttributeError(f"unknown fault {k!r}")
            setattr(self.faults, k, v)

    def _take(self, faults: Faults, counter: str) -> bool:
        """Consume one use of a fault; False when its count is exhausted."""
        with self._lock:
            left = getattr(faults, counter)
            if left is None:
                return True
            if left <= 0:
                return False
            setattr(faults, counter, left - 1)
            return True

    # -- records -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def responses(self) -> list[ResponseRecord]:
        with self._lock:
            return list(self._responses)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._responses.clear()

    def requests_for(self, substring: str, method: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if substring in unquote(r.path) and (method is None or r.method == method)
        ]

    def _record_request(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append(RequestRecord(method, path, headers))

    def _record_response(self, method: str, path: str, status: int, body_bytes: int) -> None:
        with self._lock:
            self._responses.append(ResponseRecord(method, path, status, body_bytes))

    def _track_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)
        if add and self._stopping.is_set():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _fault_property(name: str) -> property:
    def get(self: HubDouble) -> Any:
        return getattr(self.faults, name)

    def set_(self: HubDouble, value: Any) -> None:
        setattr(self.faults, name, value)

    return property(get, set_, doc=f"Shortcut for ``hub.faults.{name}``.")


for _name in FAULT_FIELDS:
    setattr(HubDouble, _name, _fault_property(_name))


# --------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------


def _iter_files(values: list[str]) -> Iterator[tuple[str, Path]]:
    for v in values:
        local, sep, in_repo = v.partition("=")
        p = Path(local)
        yield (in_repo if sep else p.name), p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve files as a Hugging Face Hub repo on loopback.")
    ap.add_argument("--repo", required=True, help="ORG/NAME")
    ap.add_argument(
        "--file", action="append", required=True, help="PATH or PATH=NAME_IN_REPO (repeatable)"
    )
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--throttle-bps", type=int, default=None)
    ap.add_argument("--require-token", default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    hub = HubDouble(port=args.port, verbose=args.verbose)
    for name, path in _iter_files(args.file):
        hub.add_file(args.repo, name, source=path)
    hub.faults.throttle_bps = args.throttle_bps
    hub.faults.require_token = args.require_token
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with hub:
        print(hub.url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
