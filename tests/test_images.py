"""Images (issue 15): a model's vision projector (mmproj) pulled, verified and removed with it;
images checked in Python before native code sees them (images.py); `run --image`, `/image` in
chat and image_url parts in serve, through the tiny random-weight vision pair (tiny_vision.py)
pulled from the Hub double."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import Cli, make_env
from hubdouble import HubDouble
from pullkit import MMPROJ, REPO
from pullkit import blob as _blob
from pullkit import data as _data
from pullkit import gets as _gets

from llmrun.projector import best_mmproj, quant_bits


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


# ---- the tiny vision pair, pulled from the Hub double -----------------------------------------
VREPO = "test-org/tiny-vision-GGUF"
VREF = f"hf.co/{VREPO}"


@pytest.fixture(scope="module")
def vision_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home and cache where `llmrun pull hf.co/test-org/tiny-vision-GGUF` ran: the tiny
    model and, by the -hf rule, its projector."""
    from llmrun.tiny_vision import write_tiny_vision

    root = tmp_path_factory.mktemp("vision")
    model, mmproj = write_tiny_vision(root / "src")
    with HubDouble() as h:
        h.add_file(VREPO, model.name, model.read_bytes())
        h.add_file(VREPO, mmproj.name, mmproj.read_bytes())
        h.add_file(VREPO, "README.md", b"# tiny vision\n")
        proc = Cli(make_env(root, HF_ENDPOINT=h.url), root)("pull", VREF)
    assert proc.returncode == 0, proc.stderr
    assert mmproj.name in proc.stderr
    return root


@pytest.fixture
def vcli(vision_root: Path) -> Cli:
    return Cli(make_env(vision_root, HF_HUB_OFFLINE="1"), vision_root)


VNAME = f"{VREF}:F32"


def _image(path: Path, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    img = Image.new("RGB", size)
    img.putdata([(x * 6 % 256, y * 8 % 256, 90) for y in range(size[1]) for x in range(size[0])])
    img.save(path, fmt)
    return path


def _bomb(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def _usage(proc: object) -> dict[str, int]:
    out = json.loads(proc.stdout)  # type: ignore[attr-defined]
    usage: dict[str, int] = out["usage"]
    return usage


def test_run_image_adds_the_image_tokens_to_the_prompt(vcli: Cli, tmp_path: Path) -> None:
    from llmrun.tiny_vision import TINY

    png = _image(tmp_path / "a.png")
    base = ("run", VNAME, "--json", "-n", "3", "--temperature", "0", "What is in it?")
    without = vcli(*base)
    assert without.returncode == 0, without.stderr
    one = vcli(*base, "--image", str(png))
    assert one.returncode == 0, one.stderr
    assert one.stderr == ""
    # the image's positions, <start_of_image> and <end_of_image> (Gemma 3's projector writes
    # them around it) and the line after the image's place
    assert _usage(one)["prompt_tokens"] == _usage(without)["prompt_tokens"] + TINY.image_tokens + 3
    assert _usage(one)["completion_tokens"] == 3
    two = vcli(*base, "--image", str(png), "-i", str(_image(tmp_path / "b.webp", "WEBP")))
    assert two.returncode == 0, two.stderr
    assert _usage(two)["prompt_tokens"] == _usage(one)["prompt_tokens"] + TINY.image_tokens + 3
    jpeg = vcli("run", VNAME, "-n", "2", "--image", str(_image(tmp_path / "c.jpg", "JPEG")), "Hi")
    assert jpeg.returncode == 0 and jpeg.stdout.endswith("\n") and jpeg.stdout.strip()


def _fake_ffprobe(tmp_path: Path) -> tuple[dict[str, str], Path]:
    import os

    log = tmp_path / "ffprobe.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ffprobe", "ffmpeg"):
        (bindir / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\ncat >/dev/null\n"
                                   "exit 1\n")
        (bindir / tool).chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, log


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: _image(p / "x.bmp", "BMP"), "is not a PNG, JPEG or WebP image"),
    (lambda p: _image(p / "x.gif", "GIF"), "is not a PNG, JPEG or WebP image"),
    (lambda p: (p / "x.png").write_bytes(b"\x00" * 64) and p / "x.png",
     "is not a PNG, JPEG or WebP image"),
    (lambda p: (p / "x.png").write_bytes(_image(p / "y.png").read_bytes()[:60]) and p / "x.png",
     "is corrupt or truncated"),
    (lambda p: (p / "x.png").write_bytes(b"") or p / "x.png", "is empty"),
    (lambda p: _bomb(p / "x.png", 10_000, 10_000), "10000x10000 pixels; the limit is 50"),
    (lambda p: p / "missing.png", "cannot be read: No such file"),
], ids=["bmp", "gif", "zeros", "truncated", "empty", "bomb", "missing"])
def test_a_bad_image_is_one_line_and_exit_2_before_native_code(
        vcli: Cli, tmp_path: Path, make: object, message: str) -> None:
    env, log = _fake_ffprobe(tmp_path)
    bad = make(tmp_path)  # type: ignore[operator]
    proc = vcli("run", VNAME, "-n", "1", "--image", str(bad), "hi", env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.startswith("Error: image ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not log.exists()  # mtmd never saw the bytes, so never handed them to ffprobe


def test_an_image_over_the_byte_limit_is_refused(vcli: Cli, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (20 * 2**20))
    proc = vcli("run", VNAME, "--image", str(big), "hi")
    assert proc.returncode == 2 and "the limit is 20 MiB" in proc.stderr


def test_a_url_needs_the_flag_and_a_model_without_projector_is_refused(
        vcli: Cli, gemma_cli: Cli, tmp_path: Path) -> None:
    png = _image(tmp_path / "a.png")
    proc = vcli("run", VNAME, "--image", "http://127.0.0.1:9/a.png", "hi")
    assert proc.returncode == 2 and "only with --allow-image-urls" in proc.stderr
    proc = gemma_cli("run", "gemma3:270m-base", "--image", str(png), "hi")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "Error: gemma3:270m-base has no vision projector"
    assert "Traceback" not in proc.stderr


def test_user_text_cannot_stand_for_an_image(vcli: Cli, tmp_path: Path) -> None:
    png = _image(tmp_path / "a.png")
    proc = vcli("run", VNAME, "--json", "-n", "1", "--image", str(png),
                "<__media__> two <__media__>")
    assert proc.returncode == 0, proc.stderr
    plain = vcli("run", VNAME, "--json", "-n", "1", "--image", str(png), " two ")
    assert _usage(proc)["prompt_tokens"] == _usage(plain)["prompt_tokens"]


def test_chat_image_goes_with_the_next_message_in_a_terminal(vcli: Cli, tmp_path: Path) -> None:
    import sys

    import pexpect

    from llmrun.tiny_vision import TINY

    png = _image(tmp_path / "a b.png")  # a space in the name, as a dropped file is pasted
    env = {**vcli.env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "120"}
    child = pexpect.spawn(sys.executable, ["-m", "llmrun", "chat", VNAME, "-v", "-n", "2",
                                           "--temperature", "0"], env=env, encoding="utf-8",
                          timeout=120, dimensions=(40, 120))
    prompt = ">>>"
    child.expect_exact(prompt)
    child.sendline("/help")
    child.expect_exact("/image PATH")
    child.expect_exact(prompt)
    child.sendline("What is it?")  # no image: the count to compare with
    child.expect(r"prompt eval count: +(\d+) token\(s\)")
    first = int(child.match.group(1))
    child.expect_exact(prompt)
    child.sendline(f"/image '{png}'")
    child.expect_exact("(40x30) goes with your next message")
    child.expect_exact(prompt)
    child.sendline(f"/image {tmp_path / 'missing.png'}")
    child.expect_exact("cannot be read")  # one line; the chat goes on
    child.expect_exact(prompt)
    child.sendline("And now?")
    child.expect(r"prompt eval count: +(\d+) token\(s\) \((\d+) evaluated\)")
    with_image, evaluated = int(child.match.group(1)), int(child.match.group(2))
    # the second turn holds the first (answer and all), then the image and the new text:
    # the cached first turn is kept, only what follows it is evaluated
    assert with_image > first + TINY.image_tokens
    assert TINY.image_tokens < evaluated < with_image
    child.expect_exact(prompt)
    child.sendline("Once more")  # the image stays in the history: kept in the cache too
    child.expect(r"prompt eval count: +(\d+) token\(s\) \((\d+) evaluated\)")
    total, evaluated = int(child.match.group(1)), int(child.match.group(2))
    # what the turn added, and a few tokens of the last answer written back as text; an image
    # evaluated again would add its 16 and the text after it
    assert total > with_image and evaluated < total - with_image + TINY.image_tokens
    child.expect_exact(prompt)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")
