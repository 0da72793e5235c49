"""Images (issue 15): a model's vision projector (mmproj) pulled, verified and removed with it;
images checked in Python before native code sees them (images.py); `run --image`, `/image` in
chat and image_url parts in serve, through the tiny random-weight vision pair (tiny_vision.py)
pulled from the Hub double."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli, make_env
from hubdouble import HubDouble
from pullkit import REPO, tiny_repo_hub
from pullkit import blob as _blob
from pullkit import data as _data
from pullkit import gets as _gets

from llmrun.projector import best_mmproj, quant_bits

MMPROJ = "mmproj-tiny-F16.gguf"


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    with tiny_repo_hub() as h:
        yield h


@pytest.fixture
def hcli(tmp_path: Path, hub: HubDouble) -> Cli:
    return Cli(make_env(tmp_path, HF_ENDPOINT=hub.url, LLMRUN_RETRY_BACKOFF="0"), tmp_path)


# ---- which projector goes with a model (llama.cpp's -hf rule) --------------------------------
def test_the_projector_is_the_mmproj_closest_in_folder_then_bits() -> None:
    flat = ["m-Q4_K_M.gguf", "mmproj-F32.gguf", "mmproj-F16.gguf", "mmproj-Q8_0.gguf"]
    assert best_mmproj(flat, "m-Q4_K_M.gguf") == "mmproj-Q8_0.gguf"  # 8 is closest to 4
    assert best_mmproj(flat, "m-F16.gguf") == "mmproj-F16.gguf"
    assert best_mmproj(["m.gguf", "mmproj-a.gguf", "mmproj-b.gguf"], "m.gguf") == \
        "mmproj-a.gguf"  # no bits to compare: the first listed
    nested = ["Q4/m-Q4_K_M.gguf", "mmproj-F16.gguf", "Q4/mmproj-F32.gguf", "other/mmproj-Q4.gguf"]
    assert best_mmproj(nested, "Q4/m-Q4_K_M.gguf") == "Q4/mmproj-F32.gguf"  # its own folder
    assert best_mmproj(nested[:2], "Q4/m-Q4_K_M.gguf") == "mmproj-F16.gguf"  # one above
    assert best_mmproj(["a/b/m.gguf", "mmproj.gguf"], "a/b/m.gguf") is None  # two above
    assert best_mmproj(["m.gguf", "mmproj.bin"], "m.gguf") is None
    assert (quant_bits("x-Q4_K_M.gguf"), quant_bits("x-BF16.gguf"), quant_bits("x.gguf")) == (
        4, 16, None)


# ---- pull, verify, rm -------------------------------------------------------------------------
def test_pull_fetches_verifies_and_removes_the_projector(hcli: Cli, hub: HubDouble) -> None:
    proc = hcli("pull", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert MMPROJ in proc.stderr and "vision projector:" in proc.stderr
    projector = _blob(hcli.root, _data(3, 1000))
    assert projector.read_bytes() == _data(3, 1000)
    assert len(_gets(hub, MMPROJ)) == 1
    models = json.loads(hcli("list", "--json").stdout)
    assert models[0]["files"] == ["tiny-model-Q4_K_M.gguf", MMPROJ]
    manifest = json.loads(next((hcli.root / "home" / "state" / "manifests").glob("*.json"))
                          .read_text())
    assert manifest["files"][1]["role"] == "mmproj"
    assert manifest["files"][1]["sha256"] == hashlib.sha256(_data(3, 1000)).hexdigest()

    verify = hcli("verify")
    assert verify.returncode == 0 and f"ok\thf.co/{REPO}:Q4_K_M\t{MMPROJ}" in verify.stdout
    projector.chmod(0o644)
    projector.write_bytes(b"x" + _data(3, 1000)[1:])  # bit rot in the projector
    verify = hcli("verify")
    assert verify.returncode == 4 and f"MISMATCH\thf.co/{REPO}:Q4_K_M\t{MMPROJ}" in verify.stdout

    assert hcli("rm", "-y", f"hf.co/{REPO}").returncode == 0
    assert not projector.exists()


def test_no_mmproj_leaves_the_projector_out(hcli: Cli, hub: HubDouble) -> None:
    proc = hcli("pull", "--no-mmproj", f"hf.co/{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert _gets(hub, MMPROJ) == [] and MMPROJ not in proc.stderr
    assert json.loads(hcli("list", "--json").stdout)[0]["files"] == ["tiny-model-Q4_K_M.gguf"]
    again = hcli("pull", f"hf.co/{REPO}")  # a plain pull later brings it
    assert again.returncode == 0, again.stderr
    assert len(_gets(hub, MMPROJ)) == 1 and len(_gets(hub, "tiny-model-Q4_K_M.gguf")) == 1


def _registry(root: Path, mmproj: str) -> None:
    (root / "home").mkdir(exist_ok=True)
    (root / "home" / "models.yaml").write_text(f"""
schema: 1
models:
  tiny-vision:q4:
    title: Tiny
    family: tiny
    params: 1M
    license: mit
    repo: {REPO}
    default_quant: Q4_K_M
    mmproj: {mmproj}
    quants:
      Q4_K_M:
        files: [{{path: tiny-model-Q4_K_M.gguf}}]
""")


def test_a_registry_projector_is_checked_against_its_sha256(hcli: Cli, hub: HubDouble) -> None:
    good = hashlib.sha256(_data(3, 1000)).hexdigest()
    _registry(hcli.root, f"{{path: {MMPROJ}, size: 1000, sha256: {good}}}")
    proc = hcli("pull", "tiny-vision:q4")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(hcli("list", "--json").stdout)[0]["files"][-1] == MMPROJ
    assert hcli("rm", "-y", "tiny-vision:q4").returncode == 0

    _registry(hcli.root, f"{{path: {MMPROJ}, size: 1000, sha256: '{'0' * 64}'}}")
    proc = hcli("pull", "tiny-vision:q4")
    assert proc.returncode == 4 and "checksum mismatch" in proc.stderr and MMPROJ in proc.stderr
    assert not _blob(hcli.root, _data(3, 1000)).exists()  # nothing unverified is kept
    assert hcli("list", "--json").stdout.strip() == "[]"


def test_a_vision_entry_must_name_its_projector(hcli: Cli) -> None:
    from llmrun.errors import RegistryError
    from llmrun.registry import parse_registry

    text = (hcli.root / "x.yaml")
    _registry(hcli.root, "{path: mmproj-x.gguf}")
    entry = parse_registry((hcli.root / "home" / "models.yaml").read_text(), "t").models[
        "tiny-vision:q4"]
    assert entry.capabilities == ["vision"]  # implied by mmproj
    text.write_text((hcli.root / "home" / "models.yaml").read_text()
                    .replace("    mmproj: {path: mmproj-x.gguf}\n", "    capabilities: [vision]\n"))
    with pytest.raises(RegistryError, match="must name its mmproj"):
        parse_registry(text.read_text(), "t")
