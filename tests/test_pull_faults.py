"""End-to-end fault tests for `llmrun pull` against the Hub double (docs/reliability.md):

* T01 at several points: the pull is killed (SIGKILL, SIGTERM, SIGINT) while planning, after
  the file's response headers but before its first body byte, and with all but the last byte
  on disk; each time nothing counts as pulled and the next pull completes, sha256-verified.
* T12: the Hub lists hostile file names (``../../evil.gguf``, ``sub/..\\..\\x.gguf``, an
  absolute path): they are ignored, never requested, and nothing is written outside the cache.
* T06: the disk fills in the middle of a download, on a real small tmpfs (root with
  CAP_SYS_ADMIN), or, where mounting is not allowed, in-process with an injected ENOSPC.

Synchronisation is by the double's ``hold_for`` fault (``hub.wait_held``) or by polling a real
condition (the partial file's size) with a deadline; never by a fixed sleep.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import Cli, make_env
from filelock import FileLock
from hubdouble import HubDouble
from pullkit import MMPROJ, Q4, REPO, REPO_DIR, tiny_repo_hub
from pullkit import blob as _blob
from pullkit import blob_in as _blob_in
from pullkit import data as _data
from pullkit import gets as _gets

from llmrun.download import PART_SUFFIX
from llmrun.exit_codes import ExitCode

RESOLVE = f"GET /{REPO}/resolve/"
CHUNK = 64 * 1024  # download.py hands the body to the file in 64 KiB blocks
KILLS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    with tiny_repo_hub() as h:
        yield h


def _cli(root: Path, hub: HubDouble, **extra: str) -> Cli:
    # A long stall timeout: a held or stalled response must not be retried by the client
    # while the test is about to kill it.
    env = make_env(root, HF_ENDPOINT=hub.url, LLMRUN_RETRY_BACKOFF="0",
                   LLMRUN_STALL_TIMEOUT="60", **extra)
    return Cli(env, root)


@pytest.fixture
def hcli(tmp_path: Path, hub: HubDouble) -> Cli:
    return _cli(tmp_path, hub)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _part(blob: Path) -> Path:
    return blob.with_name(blob.name + PART_SUFFIX)


def _snapshot(cache: Path, commit: str, name: str = Q4) -> Path:
    return cache / REPO_DIR / "snapshots" / commit / name


def _lock(cache: Path, data: bytes) -> Path:
    return cache / ".locks" / REPO_DIR / f"{hashlib.sha256(data).hexdigest()}.lock"


def _parts_under(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{PART_SUFFIX}"))


def _until(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None,
           timeout: float = 60.0) -> None:
    """Poll a real condition with a deadline (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pull exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def _running_pull(cli: Cli, hub: HubDouble, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`pull hf.co/REPO` in the background, stderr to ``log``. On leaving, whatever happened,
    held requests are released and the process is reaped (killed if it still runs)."""
    err = log.open("wb")
    proc = cli.popen("pull", f"hf.co/{REPO}", stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        hub.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
        err.close()


def _kill(proc: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> None:
    """Send ``sig`` to a pull still running: it exits as documented (130 for SIGINT, with no
    traceback; killed by the signal otherwise)."""
    assert proc.poll() is None, f"pull ended early ({proc.returncode}): {log.read_text()}"
    proc.send_signal(sig)
    code = proc.wait(timeout=20)
    assert code == {signal.SIGINT: ExitCode.INTERRUPTED}.get(sig, -sig), log.read_text()
    if sig == signal.SIGINT:
        assert "Traceback" not in log.read_text()


def _assert_lock_free(lock: Path) -> None:
    """flock is released by the kernel when the holder dies: taking it must not wait."""
    fl = FileLock(lock, timeout=5)
    fl.acquire()
    fl.release()


def _assert_nothing_pulled(cli: Cli, commit: str, data: bytes) -> None:
    cache = cli.root / "hub"
    assert not _blob(cli.root, data).exists()
    assert not os.path.lexists(_snapshot(cache, commit))
    listing = cli("list", "--json", timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == []


def _assert_rerun_completes(cli: Cli, hub: HubDouble, data: bytes, cache: Path | None = None,
                            others: tuple[str, ...] = ()) -> list[str | None]:
    """Pull again (bounded: a stuck lock would hang it); return the Range headers of its GETs."""
    cache = cache or cli.root / "hub"
    hub.reset_faults()
    hub.clear_requests()
    again = cli("pull", f"hf.co/{REPO}", timeout=120)
    assert again.returncode == 0, again.stderr
    blob = _blob_in(cache, data)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert _snapshot(cache, hub.commit(REPO)).resolve() == blob.resolve()
    assert _parts_under(cache) == []
    assert sorted(m["name"] for m in json.loads(cli("list", "--json").stdout)) == sorted(
        [*others, f"hf.co/{REPO}:Q4_K_M"])
    return [h.get("range") for h in _gets(hub, Q4)]


# --------------------------------------------------------------------------------------------
# T01: killed at several points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", KILLS, ids=lambda s: s.name)
def test_t01_killed_while_planning(hcli: Cli, hub: HubDouble, tmp_path: Path,
                                   sig: signal.Signals) -> None:
    """Killed while the file listing is in flight: no file byte was asked for, no lock taken,
    nothing on disk; the rerun downloads the whole file once."""
    commit = hub.commit(REPO)
    hub.set_faults(hold_for=f"GET /api/models/{REPO}/tree/", hold_times=1)
    log = tmp_path / "pull.err"
    with _running_pull(hcli, hub, log) as proc:
        held = hub.wait_held(60)
        assert held is not None, log.read_text()
        assert unquote(held.path).startswith(f"/api/models/{REPO}/tree/{commit}")
        assert [r for r in hub.requests if "/resolve/" in r.path] == []
        _kill(proc, sig, log)
    assert [r for r in hub.requests if "/resolve/" in r.path] == []
    assert not _lock(hcli.root / "hub", _data(1)).exists()
    assert _parts_under(hcli.root) == []
    _assert_nothing_pulled(hcli, commit, _data(1))
    assert _assert_rerun_completes(hcli, hub, _data(1)) == [None]


@pytest.mark.parametrize("sig", KILLS, ids=lambda s: s.name)
def test_t01_killed_after_headers_before_any_body_byte(hcli: Cli, hub: HubDouble,
                                                      tmp_path: Path,
                                                      sig: signal.Signals) -> None:
    """Killed once the file's response headers are sent and before its first body byte: the
    partial file may exist (empty) or not; the lock is free; the rerun starts at byte 0."""
    commit = hub.commit(REPO)
    blob = _blob(hcli.root, _data(1))
    hub.set_faults(hold_for=RESOLVE, hold_after=0, hold_times=1)
    log = tmp_path / "pull.err"
    with _running_pull(hcli, hub, log) as proc:
        held = hub.wait_held(60)
        assert held is not None, log.read_text()
        assert unquote(held.path).endswith(f"/resolve/{commit}/{Q4}")
        assert "range" not in held.headers
        _kill(proc, sig, log)
    part = _part(blob)
    assert not part.exists() or part.stat().st_size == 0
    lock = _lock(hcli.root / "hub", _data(1))
    assert lock.exists()  # the killed pull had taken the per-blob lock ...
    _assert_lock_free(lock)  # ... and it died with the process
    _assert_nothing_pulled(hcli, commit, _data(1))
    assert _assert_rerun_completes(hcli, hub, _data(1)) == [None]


END_SIZE = 48 * CHUNK + 1  # all but the last byte is a whole number of the client's blocks


@pytest.mark.parametrize("sig", KILLS, ids=lambda s: s.name)
def test_t01_killed_one_byte_before_the_end(hcli: Cli, hub: HubDouble, tmp_path: Path,
                                            sig: signal.Signals) -> None:
    """The double sends all but the last byte, then stalls; killed once the partial file
    holds SIZE-1 bytes: nothing at the blob or snapshot path, the lock is free, and the rerun
    asks for exactly the last byte (``bytes=SIZE-1-``) and completes.

    The file is 48 x 64 KiB + 1 bytes: download.py writes the body in 64 KiB blocks, so the
    SIZE-1 bytes sent are all on disk while the last one is withheld."""
    data = _data(7, END_SIZE)
    commit = hub.add_file(REPO, Q4, data)
    blob = _blob(hcli.root, data)
    part = _part(blob)
    hub.set_faults(stall_after=END_SIZE - 1, stall_seconds=300, stall_times=1)
    log = tmp_path / "pull.err"
    with _running_pull(hcli, hub, log) as proc:
        _until(lambda: part.exists() and part.stat().st_size >= END_SIZE - 1,
               "the partial file to hold SIZE-1 bytes", proc)
        assert part.stat().st_size == END_SIZE - 1
        _kill(proc, sig, log)
    assert part.stat().st_size == END_SIZE - 1
    assert part.read_bytes() == data[:-1]
    lock = _lock(hcli.root / "hub", data)
    assert lock.exists()
    _assert_lock_free(lock)
    _assert_nothing_pulled(hcli, commit, data)
    assert _assert_rerun_completes(hcli, hub, data) == [f"bytes={END_SIZE - 1}-"]
    served = [r for r in hub.responses if r.method == "GET" and Q4 in r.path]
    assert [(r.status, r.body_bytes) for r in served] == [(206, 1)]


# --------------------------------------------------------------------------------------------
# T12: hostile file names in the Hub's listing
# --------------------------------------------------------------------------------------------

EVIL = b"EVIL" * 1000
EVIL_SHA = hashlib.sha256(EVIL).hexdigest()


def _hostile_names(tmp_path: Path) -> list[str]:
    # Sorted by the double before every legit name, so a client without a filter would take
    # the hostile Q4_K_M for the default quant.
    return ["../../evil-Q4_K_M.gguf", "../../evil.gguf", "sub/..\\..\\evil-Q5_K_M.gguf",
            str(tmp_path / "abs" / "evil-abs-Q5_K_M.gguf")]


def _evil_landing_spots(cli: Cli, names: list[str], commit: str) -> list[Path]:
    """Where a hostile name would land, resolved from every folder llmrun writes into (and
    with backslashes read as separators, as Windows would)."""
    cache = cli.root / "hub"
    bases = [_snapshot(cache, commit).parent, cache / REPO_DIR / "blobs", cache / REPO_DIR,
             cache, cache / ".locks" / REPO_DIR, cli.root / "home", Path.cwd()]
    spots = set()
    for base in bases:
        for name in names:
            for variant in {name, name.replace("\\", "/")}:
                spots.add(Path(os.path.normpath(base / variant)))
    return sorted(spots)


def _assert_no_evil_anywhere(cli: Cli, hub: HubDouble, tmp_path: Path, names: list[str],
                             commit: str) -> None:
    found = [p for p in tmp_path.rglob("*") if "evil" in p.name.lower()]
    assert found == []
    assert [p for p in _evil_landing_spots(cli, names, commit) if os.path.lexists(p)] == []
    assert not (cli.root / "hub" / REPO_DIR / "blobs" / EVIL_SHA).exists()
    assert [r.path for r in hub.requests if "evil" in unquote(r.path).lower()] == []


@pytest.mark.parametrize(("tag", "pulled"), [
    ("", True), (":Q4_K_M", True), (":Q5_K_M", False), (":evil", False),
    (":evil.gguf", False),
])
def test_t12_hostile_names_in_the_listing_are_ignored(hcli: Cli, hub: HubDouble,
                                                      tmp_path: Path, tag: str,
                                                      pulled: bool) -> None:
    """llmrun drops listed names that could escape the cache (hub.list_files): the legit
    Q4_K_M is pulled, and a quant that only a hostile name carries is "not found" (exit 3,
    one Error line, the legit quants as the hint). Nothing named evil is written anywhere, and
    the double never sees a request for it."""
    names = _hostile_names(tmp_path)
    for name in names:
        hub.add_file(REPO, name, EVIL, unsafe_name=True)
    commit = hub.commit(REPO)
    listed = {e["path"] for e in _get_json(
        f"{hub.url}/api/models/{REPO}/tree/{commit}?recursive=true")}
    assert set(names) <= listed  # the double does list them

    proc = hcli("pull", f"hf.co/{REPO}{tag}", timeout=120)
    assert "Traceback" not in proc.stderr
    if pulled:
        assert proc.returncode == 0, proc.stderr
        assert [n for n in names if n.rsplit("/", 1)[-1] in proc.stderr] == []
        assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)
        [model] = json.loads(hcli("list", "--json").stdout)
        # the model and the repo's legit vision projector, pulled with it as llama.cpp's -hf does
        assert model["name"] == f"hf.co/{REPO}:Q4_K_M" and model["files"] == [Q4, MMPROJ]
        resolved = {unquote(r.path) for r in hub.requests if "/resolve/" in r.path}
        assert resolved == {f"/{REPO}/resolve/{commit}/{Q4}", f"/{REPO}/resolve/{commit}/{MMPROJ}"}
    else:
        assert proc.returncode == ExitCode.NOT_FOUND, proc.stderr
        assert proc.stderr.splitlines() == [f"Error: hf.co/{REPO} has no {tag[1:]} file",
                                            "Hint: available: Q4_K_M, Q8_0"]
        assert [r for r in hub.requests if "/resolve/" in r.path] == []
        assert json.loads(hcli("list", "--json").stdout) == []
    _assert_no_evil_anywhere(hcli, hub, tmp_path, names, commit)


def test_t12_repo_with_only_hostile_names_has_no_model(hcli: Cli, hub: HubDouble,
                                                       tmp_path: Path) -> None:
    """A repo whose only GGUFs have hostile names has no model: exit 3, one Error line, no
    file request, nothing written."""
    repo = "test-org/hostile-only-GGUF"
    names = _hostile_names(tmp_path)
    for name in names:
        hub.add_file(repo, name, EVIL, unsafe_name=True)
    proc = hcli("pull", f"hf.co/{repo}", timeout=120)
    assert proc.returncode == ExitCode.NOT_FOUND, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: hf.co/{repo} has no GGUF model files"]
    assert "Traceback" not in proc.stderr
    assert [r.path for r in hub.requests if "/resolve/" in r.path] == []
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name.lower()] == []
    assert not (tmp_path / "hub" / "models--test-org--hostile-only-GGUF").exists()
    assert json.loads(hcli("list", "--json").stdout) == []


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------------------------
# T06: disk full in the middle of a download
# --------------------------------------------------------------------------------------------

OTHER_REPO = "test-org/other-GGUF"
OTHER_FILE = "other-Q8_0.gguf"
OTHER_NAME = f"hf.co/{OTHER_REPO}:Q8_0"
TMPFS_SIZE = 8 << 20  # fits the other model and the whole download; the filler takes the rest
FULL_AT = 1 << 20  # bytes of the download on disk when the disk is filled
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: Path, size: int) -> None:
    rc = _libc().mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0,
                       f"size={size},mode=0755".encode())
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _unmount(target: Path) -> None:
    if _libc().umount2(os.fsencode(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def _fill(directory: Path) -> Path:
    """Write a filler file until the filesystem refuses even one byte more."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for block in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def _assert_disk_full_outcome(code: int, stderr: str, cli: Cli, cache: Path,
                              commit: str) -> None:
    assert code == 4, stderr  # ExitCode.NETWORK: a download that cannot finish
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [f"Error: disk full while downloading hf.co/{REPO}/{Q4}; the partial "
                      "file was removed"], stderr
    assert lines[-1] == f"Hint: free space on {cache / REPO_DIR / 'blobs'} and pull again"
    assert not (cache / REPO_DIR / "blobs" / hashlib.sha256(_data(1)).hexdigest()).exists()
    assert not os.path.lexists(_snapshot(cache, commit))
    assert _parts_under(cache) == []  # download.py removes the partial file on ENOSPC
    assert [m["name"] for m in json.loads(cli("list", "--json").stdout)] == [OTHER_NAME]
    verify = cli("verify", OTHER_NAME, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout == f"ok\t{OTHER_NAME}\t{OTHER_FILE}\n"


def test_t06_disk_full_mid_download(tmp_path: Path, hub: HubDouble,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The whole HF cache on an 8 MiB tmpfs that already holds another pulled model. The
    pre-flight space check passes; the download is held after 1 MiB while a filler file takes
    every free byte; released, the next write fails with ENOSPC: exit 4, one "disk full"
    Error line, no traceback, nothing at the blob/snapshot path, no partial file, the other
    model still verifies; after freeing space the pull completes.

    Path that ran: "tmpfs" (a real filesystem, needs CAP_SYS_ADMIN; printed, see
    ``pytest -rA``); where mount(2) fails with EPERM/EACCES, "in-process": the same CLI flow in
    this process with the partial file's write raising OSError(ENOSPC) after 1 MiB."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    try:
        _mount_tmpfs(mnt, TMPFS_SIZE)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
        print(f"T06 path: in-process (mount failed: {exc})")
        _disk_full_in_process(tmp_path, hub, monkeypatch, capsys)
        return
    print(f"T06 path: tmpfs of {TMPFS_SIZE} bytes at {mnt}")
    try:
        _disk_full_on_tmpfs(tmp_path, mnt, hub)
    finally:
        _unmount(mnt)


def _disk_full_on_tmpfs(tmp_path: Path, mnt: Path, hub: HubDouble) -> None:
    cache = mnt / "hub"
    cli = _cli(tmp_path, hub, HF_HUB_CACHE=str(cache), HF_HOME=str(mnt / "hf"))
    hub.add_file(OTHER_REPO, OTHER_FILE, _data(5, 256 * 1024))
    other = cli("pull", f"hf.co/{OTHER_REPO}", timeout=120)
    assert other.returncode == 0, other.stderr
    commit = hub.commit(REPO)
    part = _part(_blob_in(cache, _data(1)))
    hub.set_faults(hold_for=RESOLVE, hold_after=FULL_AT, hold_times=1)
    log = tmp_path / "pull.err"
    with _running_pull(cli, hub, log) as proc:
        assert hub.wait_held(60) is not None, log.read_text()
        _until(lambda: part.exists() and part.stat().st_size >= FULL_AT,
               "the first MiB on the tmpfs", proc)
        assert part.stat().st_size == FULL_AT  # the pre-flight check let the download start
        filler = _fill(mnt)
        assert os.statvfs(mnt).f_bavail == 0
        hub.release()
        code = proc.wait(timeout=120)
    _assert_disk_full_outcome(code, log.read_text(), cli, cache, commit)
    assert filler is not None
    filler.unlink()
    assert _assert_rerun_completes(cli, hub, _data(1), cache, (OTHER_NAME,)) == [None]


def _disk_full_in_process(tmp_path: Path, hub: HubDouble, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """`llmrun pull` run by llmrun.cli.main() in this process; the partial file's writes
    raise OSError(ENOSPC) once FULL_AT bytes are on disk (as on a full disk)."""
    import huggingface_hub.constants

    from llmrun import cli as cli_mod

    cache = tmp_path / "hub"
    cli = _cli(tmp_path, hub)
    hub.add_file(OTHER_REPO, OTHER_FILE, _data(5, 256 * 1024))
    other = cli("pull", f"hf.co/{OTHER_REPO}", timeout=120)
    assert other.returncode == 0, other.stderr
    commit = hub.commit(REPO)

    for key in list(os.environ):
        if key.startswith(("LLMRUN_", "HF_", "HUGGINGFACE_")):
            monkeypatch.delenv(key)
    for key, value in cli.env.items():
        if key.startswith(("LLMRUN_", "HF_")):
            monkeypatch.setenv(key, value)
    # What huggingface_hub derives from HF_ENDPOINT when it is imported (already done here).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sys, "argv", ["llmrun", "pull", f"hf.co/{REPO}"])
    written = 0
    real_open = Path.open

    class FullDisk:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, block: bytes) -> int:
            nonlocal written
            if written >= FULL_AT:
                raise OSError(errno.ENOSPC, "No space left on device")
            written += len(block)
            return int(self.fh.write(block))

        def flush(self) -> None:
            self.fh.flush()

        def fileno(self) -> int:
            return int(self.fh.fileno())

    def fake_open(self: Path, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_open(self, mode, *a, **kw)
        if self.name.endswith(PART_SUFFIX) and ("a" in mode or "w" in mode):
            return FullDisk(fh)
        return fh

    monkeypatch.setattr(Path, "open", fake_open)
    sys.stdout.write(capsys.readouterr().out)  # keep what the test printed (pytest -rA)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_mod.main()
    finally:  # (each main() makes a fresh context: no caches to clear)
        monkeypatch.setattr(Path, "open", real_open)
    captured = capsys.readouterr()
    sys.stdout.write(captured.out)
    stderr = captured.err
    assert written == FULL_AT, stderr  # the fault struck mid-stream, after the pre-flight check
    code = exit_.value.code
    assert isinstance(code, int)
    _assert_disk_full_outcome(code, stderr, cli, cache, commit)
    assert _assert_rerun_completes(cli, hub, _data(1), cache, (OTHER_NAME,)) == [None]


def test_t06_disk_full_injected_in_process(tmp_path: Path, hub: HubDouble,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The fallback of test_t06_disk_full_mid_download, run everywhere so that it cannot rot
    where mounting is allowed: same CLI flow and outcome, ENOSPC injected in-process."""
    print("T06 path: in-process (always)")
    _disk_full_in_process(tmp_path, hub, monkeypatch, capsys)
