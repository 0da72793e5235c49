"""`llmrun outdated` and `pull NAME` as the update, against the Hub double: a new commit that
changes the model's file, one that does not, a registry that pins a newer commit, and updates
that fail or are killed half-way (the old model stays whole and usable)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Cli
from hubdouble import HubDouble
from pullkit import Q4, REPO
from pullkit import blob as _blob
from pullkit import data as _data

NAME = f"hf.co/{REPO}:Q4_K_M"




def status(cli: Cli, **env: str) -> dict[str, dict[str, str]]:
    proc = cli("outdated", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


def pulled(cli: Cli) -> dict[str, str]:
    """name -> the revision its record holds"""
    return {m["name"]: m["revision"] for m in json.loads(cli("list", "--json").stdout)}


def test_a_new_commit_with_a_new_file_is_listed_and_pull_applies_it(
        hcli: Cli, hub: HubDouble) -> None:
    assert hcli("pull", f"hf.co/{REPO}").returncode == 0
    first = hub.commit(REPO)
    assert status(hcli)[NAME]["status"] == "current"
    hub.add_file(REPO, "README.md", b"# tiny, now with a longer card\n")
    row = status(hcli)[NAME]  # main moved, the model's file did not: nothing to do
    assert (row["status"], row["why"]) == ("current", "main moved; these files did not")
    new = hub.add_file(REPO, Q4, _data(5))
    proc = hcli("outdated")
    assert proc.returncode == 0, proc.stderr
    header, line = proc.stdout.splitlines()
    assert header.split("\t") == ["NAME", "LOCAL", "AVAILABLE", "WHY"]
    assert line.split("\t") == [NAME, first[:12], new[:12], "outdated: main has new files"]
    hint = proc.stderr.strip().splitlines()[-1]
    assert hint == f"update with: llmrun pull {NAME}"
    update = hcli(*shlex.split(hint.removeprefix("update with: llmrun ")))  # the hint works
    assert update.returncode == 0, update.stderr
    assert pulled(hcli) == {NAME: new}
    assert _blob(hcli.root, _data(5)).read_bytes() == _data(5)
    assert not _blob(hcli.root, _data(1)).exists()  # the old file went once the new verified
    assert not (hcli.root / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
                / first).exists()
    assert status(hcli)[NAME]["status"] == "current"
    assert hcli("verify").returncode == 0
    hub.clear_requests()
    again = hcli("pull", NAME)  # up to date: one look at the Hub, no download
    assert again.returncode == 0 and "pulling" not in again.stderr
    assert not [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


@pytest.mark.parametrize("fault", ["drop", "flip"])
def test_a_failed_update_leaves_the_old_model_whole(hcli: Cli, hub: HubDouble,
                                                   fault: str) -> None:
    assert hcli("pull", NAME).returncode == 0
    first = hub.commit(REPO)
    hub.add_file(REPO, Q4, _data(5))
    if fault == "drop":
        hub.set_faults(drop_after=1_000_000)
    else:
        hub.set_faults(flip_byte_at=10)
    failed = hcli("pull", NAME, env={"LLMRUN_RETRIES": "0"})
    assert failed.returncode == 4 and "Traceback" not in failed.stderr
    assert pulled(hcli) == {NAME: first}
    assert hcli("verify").returncode == 0
    offline = hcli("pull", "-q", NAME, env={"HF_HUB_OFFLINE": "1"})
    assert Path(offline.stdout.strip()).read_bytes() == _data(1)
    assert status(hcli)[NAME]["status"] == "outdated"
    hub.reset_faults()
    assert hcli("pull", NAME).returncode == 0
    assert pulled(hcli) == {NAME: hub.commit(REPO)}
    assert Path(hcli("pull", "-q", NAME).stdout.strip()).read_bytes() == _data(5)


def test_an_update_killed_half_way_keeps_the_old_model_and_resumes(
        hcli: Cli, hub: HubDouble) -> None:
    assert hcli("pull", NAME).returncode == 0
    first = hub.commit(REPO)
    hub.add_file(REPO, Q4, _data(5))
    hub.set_faults(hold_for=f"GET /{REPO}/resolve/", hold_after=1_000_000, hold_times=1)
    proc = hcli.popen("pull", NAME, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert hub.wait_held(60) is not None  # a megabyte of the new file is on its way
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    hub.release()
    assert pulled(hcli) == {NAME: first}
    assert hcli("verify").returncode == 0
    assert _blob(hcli.root, _data(1)).read_bytes() == _data(1)
    hub.clear_requests()
    assert hcli("pull", NAME).returncode == 0
    ranges = [r.headers.get("range") for r in hub.requests
              if r.method == "GET" and r.path.endswith(Q4)]
    assert len(ranges) == 1  # one request for the rest (a Range unless nothing had arrived)
    assert pulled(hcli) == {NAME: hub.commit(REPO)}
    assert _blob(hcli.root, _data(5)).read_bytes() == _data(5)


def test_a_registry_that_pins_a_newer_commit_updates_a_registry_model(
        hcli: Cli, hub: HubDouble) -> None:
    """The published registry pins tiny:1 at one commit; a later one pins a newer commit.
    The change to a pulled model is held back until accepted; then `outdated` knows it with
    no network, and `pull tiny:1` moves to it."""
    def publish(commit: str) -> None:
        hub.add_file("llmrun/registry", "models.yaml", f"""schema: 1
models:
  tiny:1:
    title: Tiny
    family: tiny
    params: 1M
    license: mit
    repo: {REPO}
    revision: {commit}
    default_quant: Q4_K_M
    quants:
      Q4_K_M:
        files: [{{path: {Q4}}}]
""".encode())

    old = hub.commit(REPO)
    publish(old)
    assert hcli("catalog", "--refresh").returncode == 0
    assert hcli("pull", "tiny:1").returncode == 0
    new = hub.add_file(REPO, Q4, _data(5))
    publish(new)
    held = hcli("catalog", "--refresh")
    assert f"held back tiny:1 (pulled; commit {old[:12]} -> {new[:12]})" in held.stderr
    assert status(hcli, HF_HUB_OFFLINE="1")["tiny:1"]["status"] == "current"
    assert hcli("catalog", "--refresh", "--accept", "tiny:1").returncode == 0
    row = status(hcli, HF_HUB_OFFLINE="1")["tiny:1"]  # known from the registry alone
    assert (row["status"], row["available"], row["update"]) == (
        "outdated", new[:12], "llmrun pull tiny:1")
    offline = hcli("pull", "tiny:1", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0 and "HF_HUB_OFFLINE is set: using the pulled copy" in \
        offline.stderr
    update = hcli(*shlex.split(row["update"].removeprefix("llmrun ")))
    assert update.returncode == 0, update.stderr
    assert pulled(hcli) == {"tiny:1": new}
    assert _blob(hcli.root, _data(5)).read_bytes() == _data(5)
    assert not _blob(hcli.root, _data(1)).exists()


def test_one_repo_failing_is_reported_on_its_row(hcli: Cli, hub: HubDouble) -> None:
    hub.add_file("test-org/other-GGUF", "other-Q4_K_M.gguf", _data(9, 5000))
    assert hcli("pull", NAME, "hf.co/test-org/other-GGUF").returncode == 0
    hub.add_file(REPO, Q4, _data(5))
    hub.set_faults(status_for={"/api/models/test-org/other-GGUF": 503})
    rows = status(hcli)
    assert rows[NAME]["status"] == "outdated"
    other = rows["hf.co/test-org/other-GGUF:Q4_K_M"]
    assert other["status"] == "unknown" and "HTTP 503" in other["why"]
    hub.stop()
    none = hcli("outdated")
    assert none.returncode == 4 and "no pulled model could be checked" in none.stderr
    assert "Traceback" not in none.stderr
    kept = hcli("pull", NAME)  # pulled: a failed check keeps the copy on disk
    assert kept.returncode == 0 and "could not check" in kept.stderr


def test_nothing_pulled(hcli: Cli) -> None:
    proc = hcli("outdated")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["NAME\tLOCAL\tAVAILABLE\tWHY"]
    assert "no pulled models" in proc.stderr


def test_old_files_still_loaded_are_kept_until_prune(hcli: Cli, hub: HubDouble) -> None:
    """A running llmrun process has the old version loaded while `pull` updates it: the old
    blob stays (a warning says so) and `prune` removes it once it is no longer loaded."""
    from llmrun.inuse import Hold

    assert hcli("pull", NAME).returncode == 0
    old = _blob(hcli.root, _data(1))
    hold = Hold([old])  # what run, chat and serve take on a model they load
    hub.add_file(REPO, Q4, _data(5))
    update = hcli("pull", NAME)
    assert update.returncode == 0, update.stderr
    assert "were kept; `llmrun prune` removes them once it stops" in update.stderr
    assert old.read_bytes() == _data(1)
    assert "keeping" in hcli("prune").stderr and old.exists()
    hold.release()
    assert hcli("prune").returncode == 0 and not old.exists()
    assert hcli("verify").returncode == 0
