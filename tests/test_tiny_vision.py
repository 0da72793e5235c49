"""The tiny random-weight vision pair (tiny_vision.py) through llama-cpp-python's multimodal path
(llama_cpp.mtmd_cpp and llama_chat_format.MTMDChatHandler): the image becomes the expected number
of image tokens in the context, a reply is generated after them, and bad input is an error, not a
crash. Also what llmrun must take care of itself: undecodable bytes reach an ffprobe on PATH,
mtmd logs to stderr, and the handler's native context must be closed before the interpreter exits.
"""

from __future__ import annotations

import base64
import ctypes
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp
from llama_cpp.llama_chat_format import MTMDChatHandler

from llmrun.tiny_vision import MMPROJ_FILE, MODEL_FILE, TINY, write_mmproj, write_tiny_vision

PROMPT = "What is in this picture?"


def png(width: int, height: int) -> bytes:
    """An RGB gradient as a PNG, written with zlib (no Pillow here)."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width)
                                     for v in (x * 255 // width, y * 255 // height, 128))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def bmp(width: int, height: int) -> bytes:
    """A 24-bit BMP (rows padded to 4 bytes, bottom-up)."""
    stride = (width * 3 + 3) // 4 * 4
    pixels = b"".join(bytes(v for x in range(width) for v in (x * 20 % 256, y * 20 % 256, 90))
                      .ljust(stride, b"\x00") for y in range(height))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + info + pixels


def image_message(*images: bytes, text: str = PROMPT) -> list[dict[str, Any]]:
    """One user turn in OpenAI's format: image_url parts with data: URLs, then the text."""
    parts: list[dict[str, Any]] = [
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64," + base64.b64encode(i).decode()}}
        for i in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_vision(tmp_path_factory.mktemp("vision"))


@pytest.fixture(scope="module")
def vision_llama(pair: tuple[Path, Path]) -> Iterator[Any]:
    """The tiny model with llama-cpp-python's generic multimodal handler (the GGUF's template)."""
    model, mmproj = pair
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, n_threads=2, verbose=False, seed=7,
                          chat_handler=MTMDChatHandler(clip_model_path=str(mmproj),
                                                       verbose=False, use_gpu=False))
    yield llm
    llm.close()  # frees the mtmd context now (see test_close_before_exit)


class Mtmd:
    """The low-level path: mtmd_init_from_file, mtmd_tokenize and one decode per chunk."""

    def __init__(self, llm: Any, mmproj: Path) -> None:
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = 2
        self.llm = llm
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)

    def close(self) -> None:
        if self.ctx:
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None

    def bitmap(self, data: bytes) -> Any:
        buf = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
        return mtmd_cpp.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(data), False)

    def chunks(self, text: str, images: list[bytes]) -> list[tuple[int, int]]:
        """(type, n_tokens) of each chunk, after decoding them all into a fresh context; also
        checks that each chunk moves n_past by its n_tokens."""
        bitmaps = [self.bitmap(i) for i in images]
        assert all(bitmaps)
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            inp = mtmd_cpp.mtmd_input_text()
            raw = text.encode()
            inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
            assert rc == 0
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
            out, n_past = [], 0
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                n = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                new_n_past = llama_cpp.llama_pos(n_past)  # text chunks add to it
                rc = mtmd_cpp.mtmd_helper_eval_chunk_single(
                    self.ctx, self.llm._ctx.ctx, chunk, n_past, 0, self.llm.n_batch, True,
                    ctypes.byref(new_n_past))
                assert rc == 0
                assert new_n_past.value == n_past + n
                n_past = new_n_past.value
                out.append((mtmd_cpp.mtmd_input_chunk_get_type(chunk), n))
            return out
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            for b in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(b)


def test_the_pair_is_named_and_described_as_on_the_hub(pair: tuple[Path, Path]) -> None:
    model, mmproj = pair
    assert (model.name, mmproj.name) == (MODEL_FILE, MMPROJ_FILE)
    assert "mmproj" in mmproj.name and "mmproj" not in model.name
    fields = gguf.GGUFReader(mmproj).fields
    assert fields["general.architecture"].contents() == "clip"
    assert fields["clip.projector_type"].contents() == "gemma3"
    assert fields["clip.vision.projection_dim"].contents() == TINY.text_embd
    text = gguf.GGUFReader(model).fields
    assert text["gemma3.embedding_length"].contents() == TINY.text_embd
    assert "<start_of_image>" in text["tokenizer.chat_template"].contents()


def test_an_image_becomes_its_image_tokens_in_the_context(pair: tuple[Path, Path],
                                                          vision_llama: Any) -> None:
    marker = mtmd_cpp.mtmd_default_marker().decode()
    mtmd = Mtmd(vision_llama, pair[1])
    try:
        assert mtmd.ctx and mtmd_cpp.mtmd_support_vision(mtmd.ctx)
        chunks = mtmd.chunks(f"<start_of_turn>user\n{marker}{PROMPT}<end_of_turn>\n", [png(40, 30)])
    finally:
        mtmd.close()
    text, image = mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE
    assert [kind for kind, _ in chunks] == [text, image, text]
    assert chunks[1][1] == TINY.image_tokens == 16


def test_a_chat_with_an_image_generates_after_the_image_tokens(vision_llama: Any) -> None:
    with_image = vision_llama.create_chat_completion(messages=image_message(png(40, 30)),
                                                     max_tokens=4, temperature=0)
    without = vision_llama.create_chat_completion(messages=image_message(),
                                                  max_tokens=4, temperature=0)
    # the image's tokens, and <start_of_image> and <end_of_image> that mtmd puts around them
    assert (with_image["usage"]["prompt_tokens"]
            == without["usage"]["prompt_tokens"] + TINY.image_tokens + 2)
    assert with_image["usage"]["completion_tokens"] >= 1
    assert with_image["choices"][0]["finish_reason"] in ("length", "stop")


def test_an_image_costs_the_same_whatever_its_size_or_format(vision_llama: Any) -> None:
    """Gemma 3's projector resizes every image to one square: a fixed count per image."""
    base = vision_llama.create_chat_completion(messages=image_message(), max_tokens=1)
    for images in ([png(300, 7)], [bmp(9, 9)], [png(40, 30), png(2, 2)]):
        reply = vision_llama.create_chat_completion(messages=image_message(*images),
                                                    max_tokens=1)
        assert (reply["usage"]["prompt_tokens"] - base["usage"]["prompt_tokens"]
                == len(images) * (TINY.image_tokens + 2))


@pytest.mark.parametrize("data", [b"not an image at all", png(40, 30)[:60], b""],
                         ids=["text", "truncated-png", "empty"])
def test_a_corrupt_image_is_an_error_not_a_crash(vision_llama: Any, data: bytes) -> None:
    def ask() -> Any:
        return vision_llama.create_chat_completion(messages=image_message(png(8, 8)),
                                                   max_tokens=3, temperature=0)

    before = ask()
    with pytest.raises(ValueError, match="Failed to create bitmap"):
        vision_llama.create_chat_completion(messages=image_message(data), max_tokens=2)
    after = ask()  # the same model and handler still answer, and the same way
    assert after["usage"] == before["usage"]
    assert after["choices"][0]["message"] == before["choices"][0]["message"]


def test_media_marker_in_the_text_is_refused(vision_llama: Any) -> None:
    """mtmd splits the prompt on its marker: a user who types it breaks the pairing of markers
    and images (llmrun must keep it out of user text, or use mtmd_tokenize_from_parts)."""
    marker = mtmd_cpp.mtmd_default_marker().decode()
    with pytest.raises(ValueError, match="Failed to tokenize input"):
        vision_llama.create_chat_completion(messages=image_message(text=f"see {marker}"),
                                            max_tokens=2)


def test_undecodable_bytes_are_handed_to_an_ffprobe_on_path(
        vision_llama: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This build has MTMD_VIDEO: bytes stb_image cannot decode go to `ffprobe` (then `ffmpeg`)
    found on PATH, as a video. llmrun checks an image's format before native code sees it."""
    log = tmp_path / "ffprobe.log"
    fake = tmp_path / "bin" / "ffprobe"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat >/dev/null\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ValueError, match="Failed to create bitmap"):
        vision_llama.create_chat_completion(messages=image_message(b"\x00" * 64), max_tokens=1)
    assert "pipe:0" in log.read_text()
    log.unlink()
    vision_llama.create_chat_completion(messages=image_message(png(4, 4)), max_tokens=1)
    assert not log.exists()


def test_a_projector_for_another_width_is_refused_at_first_use(tmp_path: Path,
                                                              pair: tuple[Path, Path]) -> None:
    """The handler loads the mmproj lazily: a mismatch shows at the first chat, as an error."""
    wrong = tmp_path / "mmproj-wrong.gguf"
    write_mmproj(wrong, text_embd=TINY.text_embd * 2)
    llm: Any = llama_cpp.Llama(model_path=str(pair[0]), n_ctx=256, verbose=False,
                               chat_handler=MTMDChatHandler(clip_model_path=str(wrong),
                                                            verbose=False, use_gpu=False))
    try:
        with pytest.raises(ValueError, match="Failed to load mtmd context"):
            llm.create_chat_completion(messages=image_message(png(8, 8)), max_tokens=1)
    finally:
        llm.close()


def test_mtmd_logs_to_stderr_until_silenced(vision_llama: Any,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """verbose=False does not reach mtmd's own logger: mtmd_helper_log_set does."""
    vision_llama.create_chat_completion(messages=image_message(png(8, 8)), max_tokens=1)
    out, err = capfd.readouterr()
    assert "image slice encoded" in err and out == ""

    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # kept referenced
    mtmd_cpp.mtmd_helper_log_set(quiet, None)
    try:
        vision_llama.create_chat_completion(messages=image_message(png(8, 8)), max_tokens=1)
        out, err = capfd.readouterr()
        assert "image slice encoded" not in err and "clip" not in err and out == ""
    finally:
        mtmd_cpp.mtmd_helper_log_set(llama_cpp.llama_log_callback(0), None)  # the default


_EXIT_SCRIPT = textwrap.dedent("""
    import sys
    import llama_cpp
    from llama_cpp.llama_chat_format import MTMDChatHandler
    llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False,
                          chat_handler=MTMDChatHandler(clip_model_path=sys.argv[2],
                                                       verbose=False, use_gpu=False))
    llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + sys.argv[3]}},
        {"type": "text", "text": "hi"}]}], max_tokens=1)
    llm.me = llm  # a cycle, as in any larger object graph: collected after stdout closes
    if sys.argv[4] == "close":
        llm.close()
    """)


@pytest.mark.slow  # a process that exits with a model loaded
@pytest.mark.parametrize("close", [True, False], ids=["closed", "left-to-exit"])
def test_close_before_exit(pair: tuple[Path, Path], close: bool) -> None:
    """Left to the interpreter's last collection, the handler's clean-up (in Llama.__del__)
    runs after stdout is closed and prints a traceback; Llama.close() first keeps stderr clean."""
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, str(pair[0]), str(pair[1]),
                           base64.b64encode(png(8, 8)).decode(), "close" if close else "keep"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("Exception ignored" in proc.stderr) is not close


def test_the_projector_fits_a_real_gemma(gemma_file: Path, tmp_path: Path) -> None:
    """write_mmproj also fits a real text model: Gemma 3 270M (640 wide, no chat template)."""
    mmproj = tmp_path / "mmproj-gemma-270m-tiny.gguf"
    write_mmproj(mmproj, text_embd=640)
    llm = llama_cpp.Llama(model_path=str(gemma_file), n_ctx=512, n_threads=2, verbose=False)
    mtmd = Mtmd(llm, mmproj)
    try:
        assert mtmd.ctx
        marker = mtmd_cpp.mtmd_default_marker().decode()
        chunks = mtmd.chunks(f"<start_of_turn>user\n{marker}Describe.<end_of_turn>\n"
                             "<start_of_turn>model\n", [bmp(20, 10)])
        assert [n for kind, n in chunks if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE] == [16]
        logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        scores = np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),))
        assert np.isfinite(scores).all() and 0 <= int(scores.argmax()) < llm.n_vocab()
    finally:
        mtmd.close()
        llm.close()
