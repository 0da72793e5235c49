"""The Hub double (tests/hubdouble.py) and olah (tests/olah_hub.py) speak the Hub protocol.

Checked with huggingface_hub itself, always with explicit ``endpoint=`` / ``cache_dir=`` /
``token=`` (``huggingface_hub.constants`` reads HF_ENDPOINT and HF_HOME at import time), or in a
subprocess with an isolated environment.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from hubdouble import Faults, HubDouble
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from olah_hub import OlahHub

REPO = "llmrun-test/tiny"
MODEL = random.Random(1234).randbytes(300_000)
README = b"---\nlicense: apache-2.0\n---\n# tiny\n"
EXTRA = b"abc"
FILES: dict[str, bytes] = {"model.gguf": MODEL, "README.md": README, "sub/extra.gguf": EXTRA}
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
README_GIT_OID = hashlib.sha1(b"blob %d\0" % len(README) + README).hexdigest()
TESTS_DIR = Path(__file__).resolve().parent


def _api(url: str, token: str | bool = False) -> HfApi:
    return HfApi(endpoint=url, token=token)


def _meta(url: str, filename: str, repo: str = REPO, revision: str = "main", token=False):
    return get_hf_file_metadata(
        hf_hub_url(repo, filename, revision=revision, endpoint=url), token=token, endpoint=url
    )


def _download(url: str, cache: Path, filename: str = "model.gguf", repo: str = REPO, **kw):
    return hf_hub_download(repo, filename, endpoint=url, cache_dir=cache, token=False, **kw)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


@pytest.fixture
def hub():
    with HubDouble() as h:
        for path, data in FILES.items():
            h.add_file(REPO, path, data)
        yield h


@pytest.fixture(scope="module")
def olah(tmp_path_factory: pytest.TempPathFactory):
    with OlahHub(tmp_path_factory.mktemp("olah"), {REPO: FILES}) as o:
        yield o


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_model_info(hub: HubDouble) -> None:
    commit = hub.commit(REPO)
    info = _api(hub.url).model_info(REPO)
    assert info.id == REPO
    assert info.sha == commit and len(commit) == 40
    assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)
    assert (info.private, info.gated, info.disabled) == (False, False, False)
    assert info.downloads == 0 and info.likes == 0 and "gguf" in info.tags
    assert info.last_modified is not None and info.created_at is not None

    # files_metadata=True (?blobs=true) carries sizes and LFS info, as on the Hub.
    full = _api(hub.url).model_info(REPO, revision=commit, files_metadata=True)
    by_name = {s.rfilename: s for s in full.siblings}
    assert by_name["model.gguf"].size == len(MODEL)
    assert by_name["model.gguf"].lfs.sha256 == MODEL_SHA
    assert by_name["README.md"].lfs is None and by_name["README.md"].blob_id == README_GIT_OID

    with pytest.raises(RevisionNotFoundError):
        _api(hub.url).model_info(REPO, revision="f" * 40)


def test_list_repo_tree_expand(hub: HubDouble) -> None:
    commit = hub.commit(REPO)
    entries = list(_api(hub.url).list_repo_tree(REPO, recursive=True, expand=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert set(files) == set(FILES) and folders == {"sub"}
    assert files["model.gguf"].size == len(MODEL)
    assert files["model.gguf"].lfs.sha256 == MODEL_SHA
    assert files["model.gguf"].lfs.size == len(MODEL)
    assert files["model.gguf"].lfs.pointer_size == len(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{MODEL_SHA}\nsize {len(MODEL)}\n"
    )
    assert files["README.md"].lfs is None and files["README.md"].blob_id == README_GIT_OID
    # lastCommit is the commit that last touched the file: the fixture added files one by one.
    assert files["sub/extra.gguf"].last_commit.oid == commit
    first = files["model.gguf"].last_commit.oid
    assert first != commit
    assert _api(hub.url).model_info(REPO, revision=first).siblings[0].rfilename == "model.gguf"
    assert files["model.gguf"].security.safe is True

    top = [e.path for e in _api(hub.url).list_repo_tree(REPO)]
    assert sorted(top) == ["README.md", "model.gguf", "sub"]
    assert [e.path for e in _api(hub.url).list_repo_tree(REPO, "sub")] == ["sub/extra.gguf"]
    with pytest.raises(RemoteEntryNotFoundError):
        list(_api(hub.url).list_repo_tree(REPO, "nope"))


def test_get_paths_info(hub: HubDouble) -> None:
    infos = _api(hub.url).get_paths_info(REPO, ["model.gguf", "sub", "missing.gguf"])
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "model.gguf"),
        ("RepoFolder", "sub"),
    ]
    assert infos[0].lfs.sha256 == MODEL_SHA and infos[0].size == len(MODEL)


def test_file_metadata(hub: HubDouble) -> None:
    meta = _meta(hub.url, "model.gguf")
    assert meta.etag == MODEL_SHA
    assert meta.commit_hash == hub.commit(REPO)
    assert meta.size == len(MODEL)
    assert meta.xet_file_data is None
    # A plain (non-LFS) file: etag is the git blob sha1, like on the Hub.
    assert _meta(hub.url, "README.md").etag == README_GIT_OID
    # The same answers for the pinned commit.
    assert _meta(hub.url, "model.gguf", revision=hub.commit(REPO)).etag == MODEL_SHA
    head = httpx2.head(hub.file_url(REPO, "model.gguf"))
    assert head.headers["etag"] == f'"{MODEL_SHA}"'
    assert head.headers["x-linked-etag"] == f'"{MODEL_SHA}"'
    assert head.headers["x-linked-size"] == str(len(MODEL))
    assert head.headers["accept-ranges"] == "bytes"


def test_hf_hub_download_cache_layout(hub: HubDouble, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = Path(_download(hub.url, cache))
    commit = hub.commit(REPO)
    repo_dir = cache / "models--llmrun-test--tiny"
    assert path == repo_dir / "snapshots" / commit / "model.gguf"
    assert path.is_symlink() and path.resolve() == (repo_dir / "blobs" / MODEL_SHA).resolve()
    assert path.read_bytes() == MODEL
    assert (repo_dir / "refs" / "main").read_text() == commit

    hub.clear_requests()
    assert Path(_download(hub.url, cache)) == path  # cached: one HEAD, no GET
    assert [r.method for r in hub.requests] == ["HEAD"]


def test_hf_endpoint_env_in_subprocess(hub: HubDouble, tmp_path: Path) -> None:
    code = (
        "from huggingface_hub import hf_hub_download;"
        f"print(hf_hub_download({REPO!r}, 'model.gguf'))"
    )
    env = _clean_env(tmp_path, HF_ENDPOINT=hub.url)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_relative_to(tmp_path / "hf-cache")
    assert path.read_bytes() == MODEL
    assert hub.requests_for("/resolve/main/model.gguf", "GET")


# ---------------------------------------------------------------------------------------------
# Range and body faults
# ---------------------------------------------------------------------------------------------


def test_range_requests(hub: HubDouble) -> None:
    url = hub.file_url(REPO, "model.gguf")
    size = len(MODEL)
    r = httpx2.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    assert r.content == MODEL[1000:]
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, MODEL[10:20])
    r = httpx2.get(url, headers={"Range": "bytes=-5"})
    assert (r.status_code, r.content) == (206, MODEL[-5:])
    r = httpx2.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"


def test_ignore_range(hub: HubDouble) -> None:
    hub.ignore_range = True
    r = httpx2.get(hub.file_url(REPO, "model.gguf"), headers={"Range": "bytes=1000-"})
    assert r.status_code == 200 and r.content == MODEL
    assert "content-range" not in r.headers and "accept-ranges" not in r.headers
    # HEAD is not a body GET: unaffected.
    assert httpx2.head(hub.file_url(REPO, "model.gguf")).headers["accept-ranges"] == "bytes"


def _read_until_error(url: str, **kw) -> tuple[bytes, Exception | None]:
    got = bytearray()
    try:
        with httpx2.stream("GET", url, **kw) as r:
            for chunk in r.iter_raw():
                got += chunk
    except (httpx2.TransportError, httpx2.StreamError) as e:
        return bytes(got), e
    return bytes(got), None


def test_drop_after_truncates(hub: HubDouble) -> None:
    hub.faults = Faults(drop_after=70_000, drop_times=1)
    url = hub.file_url(REPO, "model.gguf")
    got, err = _read_until_error(url)
    assert isinstance(err, httpx2.RemoteProtocolError)
    assert got == MODEL[:70_000]
    assert hub.faults.drop_times == 0
    got, err = _read_until_error(url)  # drop_times exhausted: normal again
    assert err is None and got == MODEL
    # the double records a response after its last write, which the client may read first
    deadline = time.monotonic() + 5
    while len(gets := [r for r in hub.responses if r.method == "GET"]) < 2:
        assert time.monotonic() < deadline, gets
        time.sleep(0.01)
    assert [r.body_bytes for r in gets] == [70_000, len(MODEL)]


def test_short_body_every_time(hub: HubDouble) -> None:
    hub.short_body = 1234
    for _ in range(2):
        got, err = _read_until_error(hub.file_url(REPO, "model.gguf"))
        assert err is not None and got == MODEL[:1234]


def test_hf_hub_download_after_drop(hub: HubDouble, tmp_path: Path) -> None:
    # huggingface_hub 2.4 reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and only counts
    # complete pieces as downloaded: a drop inside the first 10 MiB restarts from byte 0
    # without Range; a later drop resumes with Range from the last complete piece.
    hub.faults = Faults(drop_after=100_000, drop_times=1)
    assert Path(_download(hub.url, tmp_path / "c1")).read_bytes() == MODEL
    gets = hub.requests_for("/resolve/main/model.gguf", "GET")
    assert len(gets) == 2 and not any("range" in g.headers for g in gets)

    big = random.Random(7).randbytes(DOWNLOAD_CHUNK_SIZE + 1_000_000)
    hub.add_file(REPO, "big.gguf", big)
    hub.clear_requests()
    hub.faults = Faults(drop_after=DOWNLOAD_CHUNK_SIZE + 500_000, drop_times=1)
    assert Path(_download(hub.url, tmp_path / "c2", "big.gguf")).read_bytes() == big
    gets = hub.requests_for("/resolve/main/big.gguf", "GET")
    assert len(gets) == 2 and "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={DOWNLOAD_CHUNK_SIZE}-"
    assert [r.status for r in hub.responses if r.method == "GET"] == [200, 206]


def test_flip_byte_at(hub: HubDouble, tmp_path: Path) -> None:
    hub.flip_byte_at = 123_456
    body = httpx2.get(hub.file_url(REPO, "model.gguf")).content
    assert len(body) == len(MODEL)
    assert [i for i, (a, b) in enumerate(zip(body, MODEL, strict=True)) if a != b] == [123_456]
    # A range not covering the offset is clean; one covering it is corrupted at the same byte.
    part = httpx2.get(hub.file_url(REPO, "model.gguf"), headers={"Range": "bytes=123000-"})
    assert part.content[456] == MODEL[123_456] ^ 0xFF
    # huggingface_hub does not verify the sha256 of what it downloads: the corrupt blob is
    # stored under the advertised sha256. Whoever needs integrity must check it.
    path = Path(_download(hub.url, tmp_path / "cache"))
    assert path.resolve().name == MODEL_SHA
    assert hashlib.sha256(path.read_bytes()).hexdigest() != MODEL_SHA


def test_stall_then_resume_and_stop_while_stalling(hub: HubDouble) -> None:
    url = hub.file_url(REPO, "model.gguf")
    hub.faults = Faults(stall_after=5000, stall_seconds=0.3)
    t0 = time.monotonic()
    got, err = _read_until_error(url)
    assert err is None and got == MODEL and time.monotonic() - t0 >= 0.3

    hub.faults = Faults(stall_after=5000, stall_seconds=60)
    got, err = _read_until_error(url, timeout=httpx2.Timeout(5, read=0.3))
    assert isinstance(err, httpx2.ReadTimeout) and got == MODEL[:5000]
    # A second client stalls too; the server must still stop promptly.
    t = threading.Thread(target=_read_until_error, args=(url,), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while len(hub.requests_for("model.gguf", "GET")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    hub.stop()
    assert time.monotonic() - t0 < 2.0
    t.join(timeout=5)
    assert not t.is_alive()


def test_throttle_and_stop_mid_transfer(hub: HubDouble) -> None:
    url = hub.file_url(REPO, "model.gguf")
    hub.throttle_bps = 1_000_000
    t0 = time.monotonic()
    assert httpx2.get(url).content == MODEL
    assert time.monotonic() - t0 >= 0.25  # 300 kB at 1 MB/s

    hub.throttle_bps = 20_000
    result: list[tuple[bytes, Exception | None]] = []
    t = threading.Thread(target=lambda: result.append(_read_until_error(url)), daemon=True)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    hub.stop()
    assert time.monotonic() - t0 < 2.0
    t.join(timeout=5)
    got, err = result[0]
    assert err is not None and 0 < len(got) < len(MODEL)
    assert got == MODEL[: len(got)]


def test_hold_request_until_released(hub: HubDouble) -> None:
    hub.faults = Faults(hold_for="GET /api/models/", hold_times=1)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(_api(hub.url).model_info(REPO)),
                         daemon=True)
    t.start()
    held = hub.wait_held(10)
    assert held is not None and held.method == "GET"
    assert held.path.startswith(f"/api/models/{REPO}")
    assert hub.held_requests == [held] and hub.faults.hold_times == 0
    assert _meta(hub.url, "model.gguf").etag == MODEL_SHA  # other requests are not held
    assert t.is_alive() and result == []  # ... while the held one is still unanswered
    hub.release()
    t.join(timeout=10)
    assert not t.is_alive() and result[0].sha == hub.commit(REPO)  # type: ignore[attr-defined]
    assert hub.wait_held(0.05) is None  # hold_times exhausted: nothing held since release
    _api(hub.url).model_info(REPO)
    assert len(hub.held_requests) == 1


def test_hold_is_released_by_stop(hub: HubDouble) -> None:
    hub.hold_for = "/resolve/"
    errors: list[Exception | None] = []
    t = threading.Thread(
        target=lambda: errors.append(_read_until_error(hub.file_url(REPO, "model.gguf"))[1]),
        daemon=True,
    )
    t.start()
    assert hub.wait_held(10) is not None
    t0 = time.monotonic()
    hub.stop()
    assert time.monotonic() - t0 < 2.0
    t.join(timeout=5)
    assert not t.is_alive() and errors[0] is not None  # closed without an answer


def test_hold_after_body_bytes(hub: HubDouble) -> None:
    hub.faults = Faults(hold_for="model.gguf", hold_after=1000, hold_times=1)
    got = bytearray()
    headers_seen = threading.Event()
    status: list[int] = []

    def read() -> None:
        with httpx2.stream("GET", hub.file_url(REPO, "model.gguf")) as r:
            status.append(r.status_code)
            headers_seen.set()
            for chunk in r.iter_raw():
                got.extend(chunk)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    held = hub.wait_held(10)
    assert held is not None and held.path.endswith("/model.gguf")
    assert headers_seen.wait(10) and status == [200]  # headers went out before the hold
    deadline = time.monotonic() + 10
    while len(got) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(got) == MODEL[:1000]
    assert t.is_alive()
    hub.release()
    t.join(timeout=10)
    assert bytes(got) == MODEL
    # HEAD and API calls never match a body hold; a second GET is not held (hold_times).
    hub.hold_for, hub.hold_after, hub.hold_times = "model.gguf", 0, None
    assert _meta(hub.url, "model.gguf").etag == MODEL_SHA
    hub.hold_for = None
    assert httpx2.get(hub.file_url(REPO, "model.gguf")).content == MODEL
    assert len(hub.held_requests) == 1


def test_unsafe_names_listed_verbatim(hub: HubDouble) -> None:
    hostile = ["../../evil.gguf", "sub/..\\..\\x.gguf", "/tmp/abs.gguf"]
    with pytest.raises(ValueError, match="bad path"):
        hub.add_file(REPO, hostile[0], EXTRA)
    before = hub.commit(REPO)
    for name in hostile:
        hub.add_file(REPO, name, EXTRA, unsafe_name=True)
    assert hub.commit(REPO) != before
    tree = {e.path for e in _api(hub.url).list_repo_tree(REPO, recursive=True)}
    assert tree == {*FILES, "sub", *hostile}
    top = {e.path for e in _api(hub.url).list_repo_tree(REPO)}
    assert top == {"README.md", "model.gguf", "sub", *hostile}  # at the root, once
    assert [e.path for e in _api(hub.url).list_repo_tree(REPO, "sub")] == ["sub/extra.gguf"]
    siblings = {s.rfilename for s in _api(hub.url).model_info(REPO).siblings}
    assert siblings == {*FILES, *hostile}
    infos = _api(hub.url).get_paths_info(REPO, hostile)
    assert [i.path for i in infos] == hostile
    assert infos[0].lfs.sha256 == hashlib.sha256(EXTRA).hexdigest()
    for name in hostile:
        hub.remove_file(REPO, name)
    assert hub.commit(REPO) == before


# ---------------------------------------------------------------------------------------------
# Errors, as huggingface_hub 2.4 classifies them
# ---------------------------------------------------------------------------------------------


def test_unknown_repo_is_repository_not_found(hub: HubDouble, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as e:
        _api(hub.url).model_info("llmrun-test/nope")
    assert e.type is RepositoryNotFoundError and e.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as e:
        _download(hub.url, tmp_path / "c", repo="llmrun-test/nope")
    assert e.type is RepositoryNotFoundError and e.value.response.status_code == 401


def test_unknown_file_is_entry_not_found(hub: HubDouble, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(RemoteEntryNotFoundError) as e:
        _download(hub.url, cache, filename="missing.gguf")
    assert e.value.response.status_code == 404
    # X-Repo-Commit on the 404 lets huggingface_hub cache the non-existence.
    no_exist = cache / "models--llmrun-test--tiny" / ".no_exist" / hub.commit(REPO)
    assert (no_exist / "missing.gguf").exists()


def test_forced_statuses(hub: HubDouble) -> None:
    hub.status_for = {"/resolve/main/model.gguf": 403}
    with pytest.raises(GatedRepoError) as e:
        _meta(hub.url, "model.gguf")
    assert e.value.response.status_code == 403
    assert _meta(hub.url, "README.md").etag == README_GIT_OID  # other paths unaffected

    hub.status_for = {"/resolve/": 401}
    with pytest.raises(RepositoryNotFoundError) as e:
        _meta(hub.url, "model.gguf")
    assert e.type is RepositoryNotFoundError

    hub.status_for = {"/resolve/": 404}
    with pytest.raises(RemoteEntryNotFoundError):
        _meta(hub.url, "model.gguf")

    hub.faults = Faults(status_for={"HEAD /resolve/": 503}, status_times=1)
    with pytest.raises(HfHubHTTPError) as e:
        _meta(hub.url, "model.gguf")
    assert e.value.response.status_code == 503 and e.type is HfHubHTTPError
    assert _meta(hub.url, "model.gguf").etag == MODEL_SHA  # status_times exhausted


def test_gated_repo(hub: HubDouble) -> None:
    hub.add_repo("llmrun-test/gated", gated="manual", gated_tokens=["hf_granted"])
    hub.add_file("llmrun-test/gated", "model.gguf", EXTRA)
    info = _api(hub.url).model_info("llmrun-test/gated")  # metadata stays readable
    assert info.gated == "manual"
    with pytest.raises(GatedRepoError) as e:
        _meta(hub.url, "model.gguf", repo="llmrun-test/gated")
    assert e.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as e:
        _meta(hub.url, "model.gguf", repo="llmrun-test/gated", token="hf_other")
    assert e.value.response.status_code == 403
    ok = _meta(hub.url, "model.gguf", repo="llmrun-test/gated", token="hf_granted")
    assert ok.etag == hashlib.sha256(EXTRA).hexdigest()


def test_require_token(hub: HubDouble) -> None:
    hub.require_token = "hf_secret"
    with pytest.raises(RepositoryNotFoundError) as e:
        _meta(hub.url, "model.gguf")
    assert e.type is RepositoryNotFoundError
    with pytest.raises(HfHubHTTPError) as e:
        _meta(hub.url, "model.gguf", token="hf_wrong")
    assert e.type is HfHubHTTPError and e.value.response.status_code == 401
    assert _meta(hub.url, "model.gguf", token="hf_secret").etag == MODEL_SHA
    assert hub.requests[-1].headers["authorization"] == "Bearer hf_secret"


# ---------------------------------------------------------------------------------------------
# Double's own API
# ---------------------------------------------------------------------------------------------


def test_commits_follow_content_and_old_commits_stay_served(hub: HubDouble) -> None:
    old = hub.commit(REPO)
    new = hub.add_file(REPO, "model.gguf", MODEL[::-1])
    assert new != old and hub.commit(REPO) == new
    assert _meta(hub.url, "model.gguf").etag == hashlib.sha256(MODEL[::-1]).hexdigest()
    assert _meta(hub.url, "model.gguf", revision=old).etag == MODEL_SHA
    assert hub.add_file(REPO, "model.gguf", MODEL) == old  # same content, same commit


def test_source_file_served_from_disk_and_records(hub: HubDouble, tmp_path: Path) -> None:
    src = tmp_path / "big.gguf"
    src.write_bytes(MODEL[:200_000])
    hub.add_file("llmrun-test/disk", "big.gguf", source=src)
    hub.clear_requests()
    r = httpx2.get(hub.file_url("llmrun-test/disk", "big.gguf"), headers={"X-Probe": "1"})
    assert r.content == MODEL[:200_000]
    assert r.headers["etag"] == f'"{hashlib.sha256(MODEL[:200_000]).hexdigest()}"'
    [rec] = hub.requests
    method, path, headers = rec
    assert (method, path) == ("GET", "/llmrun-test/disk/resolve/main/big.gguf")
    assert headers["x-probe"] == "1"
    hub.clear_requests()
    assert hub.requests == [] and hub.responses == []


@pytest.mark.slow  # the Hub double as its own process
def test_standalone_cli(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(MODEL[:5000])
    proc = subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "hubdouble.py"), "--repo", "org/cli", "--file", str(src)],
        stdout=subprocess.PIPE,
        text=True,
        env=_clean_env(tmp_path),
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no URL printed"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        meta = _meta(url, "m.gguf", repo="org/cli")
        assert meta.etag == hashlib.sha256(MODEL[:5000]).hexdigest() and meta.size == 5000
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# ---------------------------------------------------------------------------------------------
# olah: the double answers like a real implementation
# ---------------------------------------------------------------------------------------------


def _tree_view(url: str) -> list[tuple]:
    out = []
    for e in _api(url).list_repo_tree(REPO, recursive=True):
        if isinstance(e, RepoFile):
            lfs = (e.lfs.sha256, e.lfs.size, e.lfs.pointer_size) if e.lfs else None
            out.append(("file", e.path, e.size, e.blob_id, lfs))
        else:
            out.append(("directory", e.path, e.tree_id))
    return sorted(out)


def test_double_answers_like_olah(hub: HubDouble, olah: OlahHub) -> None:
    # olah (offline) cannot answer model_info without a revision: ask for "main" explicitly.
    d_info = _api(hub.url).model_info(REPO, revision="main")
    o_info = _api(olah.url).model_info(REPO, revision="main")
    assert d_info.sha == o_info.sha == olah.commits[REPO]
    assert sorted(s.rfilename for s in d_info.siblings) == sorted(
        s.rfilename for s in o_info.siblings
    )
    assert _tree_view(hub.url) == _tree_view(olah.url)
    for name in FILES:
        d, o = _meta(hub.url, name), _meta(olah.url, name)
        assert (d.etag, d.size, d.commit_hash) == (o.etag, o.size, o.commit_hash), name
    d_paths = _api(hub.url).get_paths_info(REPO, ["model.gguf", "sub"])
    o_paths = _api(olah.url).get_paths_info(REPO, ["model.gguf", "sub"])
    assert [(type(p), p.path) for p in d_paths] == [(type(p), p.path) for p in o_paths]


def _cache_listing(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if ".locks" not in p.parts}


def test_hf_hub_download_through_olah(hub: HubDouble, olah: OlahHub, tmp_path: Path) -> None:
    o_cache, d_cache = tmp_path / "olah-cache", tmp_path / "double-cache"
    o_path = Path(_download(olah.url, o_cache))
    assert o_path.read_bytes() == MODEL
    assert o_path.resolve().name == MODEL_SHA
    assert o_path.parent.name == olah.commits[REPO]
    _download(hub.url, d_cache)
    assert _cache_listing(o_cache) == _cache_listing(d_cache)
