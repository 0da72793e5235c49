"""Pure-Python GGUF validation (llmrun.gguf_file): reliability.md S4, S6, T08, T13-T15.

Small GGUFs are built with gguf.GGUFWriter, then byte-patched into malformed variants. Every
malformed file must raise CorruptModel: no other exception, no hang, bounded memory.
Error contract: a path that does not exist raises NotFound; a FIFO, a device, a directory or
a symlink to one raises CorruptModel, without the file ever being opened for reading.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest

import llmrun
from llmrun import gguf_file
from llmrun.errors import CorruptModel, NotFound
from llmrun.gguf_file import check_split_set, read_info
from llmrun.gguf_info import GGUFInfo

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
TOKENS = ["<unk>", "<s>", "</s>", "hello", "world", "!"]
PARAMS = 4 * 8 + 4 * 8 + 2 * 32  # blk.0.a, blk.0.b (F32) and blk.0.q (Q8_0)

VT = gguf.GGUFValueType
_SIZES = {VT.UINT8: 1, VT.INT8: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4, VT.INT32: 4,
          VT.FLOAT32: 4, VT.BOOL: 1, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}  # fmt: skip


def write_gguf(path: Path, *, arch: str = "llama", kv: Callable[[gguf.GGUFWriter], None]
               | None = None, tensors: bool = True, file_type: bool = True,
               n_tokens: int = 0, block_count: int = 2) -> Path:  # fmt: skip
    w = gguf.GGUFWriter(path, arch)
    w.add_name("Tiny Test")
    w.add_license("apache-2.0")
    w.add_context_length(4096)
    w.add_block_count(block_count)
    w.add_embedding_length(64)
    if file_type:
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_custom_alignment(32)
    w.add_chat_template(TEMPLATE)
    tokens = TOKENS if not n_tokens else [f"tok{i}" for i in range(n_tokens)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([1] * len(tokens))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_array("test.small", [1, 2, 3])
    w.add_array("test.big", list(range(100)))
    w.add_string("test.key_a", "x")
    w.add_string("test.key_b", "y")
    if kv is not None:
        kv(w)
    if tensors:
        w.add_tensor("blk.0.a", np.arange(32, dtype=np.float32).reshape(4, 8))
        w.add_tensor("blk.0.b", np.ones((4, 8), dtype=np.float32))
        w.add_tensor("blk.0.q", np.zeros((2, 34), dtype=np.uint8),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # fmt: skip
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass
class Layout:
    """Offsets of the fields of a *valid* GGUF (an independent, trusting walker)."""

    kv: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # key, type, value
    tensors: dict[str, dict[str, int]] = field(default_factory=dict)
    header_end: int = 0
    data_start: int = 0
    data_end: int = 0
    fields: list[tuple[int, int]] = field(default_factory=list)  # (offset, width) of numbers


def layout(data: bytes) -> Layout:
    lay, pos = Layout(), 24
    lay.fields += [(4, 4), (8, 8), (16, 8)]

    def u(fmt: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        lay.fields.append((pos, struct.calcsize(fmt)))
        pos += struct.calcsize(fmt)
        return int(v)

    def string() -> str:
        nonlocal pos
        n = u("<Q")
        pos += n
        return data[pos - n : pos].decode()

    def value(t: int) -> None:
        nonlocal pos
        if t == VT.STRING:
            string()
        elif t == VT.ARRAY:
            et, n = u("<I"), u("<Q")
            for _ in range(n):
                value(et)
        else:
            pos += _SIZES[VT(t)]

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    for _ in range(n_kv):
        k_off = pos
        key = string()
        t_off = pos
        t = u("<I")
        lay.kv[key] = (k_off, t_off, pos)
        value(t)
    ends = []
    for _ in range(n_tensors):
        ti = {"name": pos}
        name = string()
        ti["n_dims"] = pos
        n_dims = u("<I")
        ti["dims"] = pos
        dims = [u("<Q") for _ in range(n_dims)]
        ti["type"] = pos
        t = u("<I")
        ti["offset"] = pos
        off = u("<Q")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t)]
        ends.append(off + int(np.prod(dims)) // block * size)
        lay.tensors[name] = ti
    lay.header_end = pos
    lay.data_start = -(-pos // 32) * 32
    lay.data_end = lay.data_start + max(ends, default=0)
    return lay


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, Layout]:
    path = write_gguf(tmp_path_factory.mktemp("valid") / "tiny.gguf")
    data = path.read_bytes()
    return path, data, layout(data)


def patched(tmp_path: Path, data: bytes, *edits: tuple[int, bytes]) -> Path:
    buf = bytearray(data)
    for off, new in edits:
        buf[off : off + len(new)] = new
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(buf))
    return path


def corrupt(path: Path, match: str = "") -> CorruptModel:
    with pytest.raises(CorruptModel) as exc:
        read_info(path)
    msg = exc.value.message
    assert msg.startswith(f"model file is corrupt or incomplete: {path}: "), msg
    assert match in msg, msg
    assert exc.value.hint == "run `llmrun pull --force NAME`"
    return exc.value


# -- a valid file --------------------------------------------------------------------------------


def test_valid_file_round_trips(valid: tuple[Path, bytes, Layout]) -> None:
    path, data, _ = valid
    info = read_info(path)
    assert isinstance(info, GGUFInfo)
    assert (info.path, info.file_size, info.version, info.n_tensors) == (path, len(data), 3, 3)
    assert info.architecture == "llama"
    assert info.name == "Tiny Test"
    assert info.license == "apache-2.0"
    assert (info.context_length, info.block_count, info.embedding_length) == (4096, 2, 64)
    assert info.chat_template == TEMPLATE
    assert info.parameter_count == PARAMS
    assert info.file_type == "Q4_K_M"
    assert (info.split_count, info.split_no) == (0, 0)
    assert (info.bos_token, info.eos_token) == ("<s>", "</s>")
    assert info.metadata["test.small"] == [1, 2, 3]
    assert "test.big" not in info.metadata and info.array_lengths["test.big"] == 100
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert info.array_lengths["tokenizer.ggml.tokens"] == len(TOKENS)
    assert info.tensor_types == {"F32": 64, "Q8_0": 64}
    # The reference reader agrees.
    ref = gguf.GGUFReader(path)
    assert sum(int(t.n_elements) for t in ref.tensors) == info.parameter_count


def test_file_type_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    info = read_info(write_gguf(tmp_path / "m.gguf", file_type=False))
    assert info.file_type == "F32"  # 64 F32 elements vs 64 Q8_0: first of the maximum
    info = read_info(write_gguf(tmp_path / "n.gguf", file_type=False, tensors=False))
    assert info.file_type is None and info.parameter_count == 0


@pytest.mark.parametrize(("ftype", "label"), [(0, "F32"), (1, "F16"), (7, "Q8_0"),
                                              (15, "Q4_K_M"), (18, "Q6_K"), (32, "BF16")])
def test_file_type_labels(tmp_path: Path, ftype: int, label: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", file_type=False,
                      kv=lambda w: w.add_uint32("general.file_type", ftype))  # fmt: skip
    assert read_info(path).file_type == label


def test_big_vocabulary_is_fast_and_not_kept(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "big.gguf", n_tokens=262_144)
    start = time.perf_counter()
    info = read_info(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert (info.bos_token, info.eos_token) == ("tok1", "tok2")
    assert info.array_lengths["tokenizer.ggml.tokens"] == 262_144
    assert "tokenizer.ggml.tokens" not in info.metadata


def test_nested_arrays_are_bounded(tmp_path: Path) -> None:
    ok = write_gguf(tmp_path / "ok.gguf", kv=lambda w: w.add_array("test.nested", [[1, 2], [3]]))
    assert read_info(ok).array_lengths["test.nested"] == 2
    deep = write_gguf(tmp_path / "deep.gguf",
                      kv=lambda w: w.add_array("test.nested", [[[1]], [[2]]]))  # fmt: skip
    corrupt(deep, "nested")


def test_custom_hint_and_metadata_cap(valid: tuple[Path, bytes, Layout],
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path, _, _ = valid
    monkeypatch.setattr(gguf_file, "MAX_HEADER_BYTES", 256)
    with pytest.raises(CorruptModel, match="larger than") as exc:
        read_info(path, hint="use another file")
    assert exc.value.hint == "use another file"
    monkeypatch.setattr(gguf_file, "MAX_HEADER_BYTES", 256 << 20)
    monkeypatch.setattr(gguf_file, "MAX_WALKED", 3)
    corrupt(path, "in total")


# -- attention shape, for the memory estimate (T17) ---------------------------------------------


def _attention(heads: object = None, heads_kv: object = None, key: int | None = None,
               value: int | None = None) -> Callable[[gguf.GGUFWriter], None]:
    def kv(w: gguf.GGUFWriter) -> None:
        if heads is not None:
            w.add_head_count(heads)  # type: ignore[arg-type]
        if heads_kv is not None:
            w.add_head_count_kv(heads_kv)  # type: ignore[arg-type]
        if key is not None:
            w.add_key_length(key)
        if value is not None:
            w.add_value_length(value)

    return kv


def test_attention_shape(tmp_path: Path) -> None:
    info = read_info(write_gguf(tmp_path / "a.gguf", kv=_attention(8, 2, 16, 12)))
    assert (info.head_count, info.head_count_kv) == ([8, 8], [2, 2])
    assert (info.key_length, info.value_length) == (16, 12)
    # llama.cpp's defaults: n_head_kv = n_head, head size = n_embd / n_head
    info = read_info(write_gguf(tmp_path / "b.gguf", kv=_attention(8)))
    assert (info.head_count_kv, info.key_length, info.value_length) == ([8, 8], 8, 8)
    info = read_info(write_gguf(tmp_path / "c.gguf"))
    assert (info.head_count, info.head_count_kv, info.key_length) == (None, None, None)


def test_per_layer_head_counts_are_kept(tmp_path: Path) -> None:
    info = read_info(write_gguf(tmp_path / "a.gguf", kv=_attention(8, [1, 4])))
    assert (info.head_count, info.head_count_kv) == ([8, 8], [1, 4])
    # longer than SMALL_ARRAY, up to one per layer (LLAMA_MAX_LAYERS)
    layers = [i % 5 for i in range(300)]
    info = read_info(write_gguf(tmp_path / "b.gguf", block_count=300, kv=_attention(layers)))
    assert info.head_count == layers and info.block_count == 300
    assert info.array_lengths["llama.attention.head_count"] == 300


@pytest.mark.parametrize(("kv", "match"), [
    (_attention(8, [1, 2, 3]), "head_count_kv has 3 elements, block_count is 2"),
    (_attention(8, [1.0, 2.0]), "expected integers 0..65536"),
    (_attention(8, ["a", "b"]), "expected integers 0..65536"),
    (_attention([8, 1 << 20]), "expected integers 0..65536"),
    (_attention(list(range(600))), "array of 600 elements, not one integer per layer"),
    (_attention(1 << 31), "head_count is 2147483648 (expected 0..65536)"),
    (_attention(8, key=0), "key_length is 0 (expected 1..65536)"),
    (_attention(8, value=1 << 20), "value_length is 1048576 (expected 1..65536)"),
    (lambda w: w.add_string("llama.attention.head_count_kv", "two"), "head_count_kv is 'two'"),
])  # fmt: skip
def test_implausible_attention_shape_is_corrupt(tmp_path: Path, kv: Callable[
        [gguf.GGUFWriter], None], match: str) -> None:  # fmt: skip
    corrupt(write_gguf(tmp_path / "m.gguf", kv=kv), match)


def test_implausible_embedding_length_is_corrupt(valid: tuple[Path, bytes, Layout],
                                                 tmp_path: Path) -> None:  # fmt: skip
    _, data, lay = valid
    corrupt(patched(tmp_path, data, (lay.kv["llama.embedding_length"][2], U32(1 << 30))),
            "llama.embedding_length is 1073741824 (expected 1..1048576)")


# -- truncation (T14, S6) ----------------------------------------------------------------------


def _cut_points(lay: Layout) -> list[int]:
    cuts = {0, 1, 3, 4, 5, 7, 8, 12, 15, 16, 20, 23, 24, 25, 31, 32, 33}
    for key in ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.tokens",
                "test.big", "test.key_b"):  # fmt: skip
        k, t, v = lay.kv[key]
        cuts |= {k + 3, t + 2, v + 1, v + 9}
    for ti in lay.tensors.values():
        cuts |= {ti["name"] + 9, ti["dims"] + 4, ti["type"] + 1, ti["offset"] + 7}
    cuts |= {lay.header_end, lay.data_start + 1, lay.data_start + 100, lay.data_end - 1}
    return sorted(c for c in cuts if c < lay.data_end)


@pytest.mark.parametrize("index", range(40))
def test_truncation_is_corrupt(valid: tuple[Path, bytes, Layout], tmp_path: Path,
                               index: int) -> None:  # fmt: skip
    _, data, lay = valid
    cuts = _cut_points(lay)
    assert len(cuts) >= 40
    cut = cuts[index * len(cuts) // 40]
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    err = corrupt(path)
    assert ("truncated" in err.message or "not within the file" in err.message
            or "past the end" in err.message or "more than the file" in err.message), err.message


def test_trailing_padding_may_be_cut(valid: tuple[Path, bytes, Layout], tmp_path: Path) -> None:
    _, data, lay = valid
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: lay.data_end])
    assert read_info(path).parameter_count == PARAMS


# -- targeted corruptions (T15, S4) ------------------------------------------------------------

U32, U64 = struct.Struct("<I").pack, struct.Struct("<Q").pack


def _cases(lay: Layout) -> dict[str, tuple[list[tuple[int, bytes]], str]]:
    kv, ti = lay.kv, lay.tensors
    align = kv["general.alignment"][2]
    return {
        "magic": ([(0, b"GGUG")], "bad magic"),
        "magic-ggml": ([(0, b"ggml")], "bad magic"),
        "version-0": ([(4, U32(0))], "unsupported version 0"),
        "version-1": ([(4, U32(1))], "unsupported version 1"),
        "version-4": ([(4, U32(4))], "unsupported version 4"),
        "version-ffff0000": ([(4, U32(0xFFFF0000))], "unsupported version"),
        "big-endian": ([(4, struct.pack(">I", 3))], "big-endian"),
        "n_tensors-2^63": ([(8, U64(1 << 63))], "implausible counts"),
        "n_tensors-2^64-1": ([(8, U64(2**64 - 1))], "implausible counts"),
        "n_kv-2^40": ([(16, U64(1 << 40))], "implausible counts"),
        "n_kv-1e6+1": ([(16, U64(1_000_001))], "implausible counts"),
        "n_tensors-1e6": ([(8, U64(1_000_000))], "more than the file holds"),
        "n_kv-too-many": ([(16, U64(len(kv) + 2000))], "more than the file holds"),
        "key-length-2^63": ([(24, U64(1 << 63))], "length"),
        "string-length-2^63": ([(kv["test.key_a"][2], U64(1 << 63))], "length"),
        "string-length-past-eof": ([(kv["tokenizer.chat_template"][2], U64(1 << 20))],
                                   "truncated"),
        "array-count-2^40": ([(kv["test.big"][2] + 4, U64(1 << 40))], "larger than the file"),
        "tokens-count-2^40": ([(kv["tokenizer.ggml.tokens"][2] + 4, U64(1 << 40))],
                              "larger than the file"),
        "array-elem-type-999": ([(kv["test.big"][2], U32(999))], "invalid element type 999"),
        "value-type-999": ([(kv["test.key_a"][1], U32(999))], "invalid value type 999"),
        "value-type-13": ([(kv["test.key_a"][1], U32(13))], "invalid value type 13"),
        "alignment-3": ([(align, U32(3))], "power of two"),
        "alignment-0": ([(align, U32(0))], "power of two"),
        "alignment-type": ([(kv["general.alignment"][1], U32(VT.INT32))], "expected UINT32"),
        "alignment-2^31": ([(align, U32(1 << 31))], "not aligned"),
        "duplicate-key": ([(kv["test.key_b"][0] + 8, b"test.key_a")], "duplicate key"),
        "key-not-utf8": ([(kv["test.key_b"][0] + 8, b"\xff")], "UTF-8"),
        "block_count-10000": ([(kv["llama.block_count"][2], U32(10000))], "block_count"),
        "duplicate-tensor": ([(ti["blk.0.b"]["name"] + 8, b"blk.0.a")], "duplicate tensor"),
        "tensor-name-2^63": ([(ti["blk.0.b"]["name"], U64(1 << 63))], "length"),
        "n_dims-5": ([(ti["blk.0.a"]["n_dims"], U32(5))], "5 dimensions"),
        "n_dims-0": ([(ti["blk.0.a"]["n_dims"], U32(0))], "0 dimensions"),
        "dim-0": ([(ti["blk.0.a"]["dims"], U64(0))], "dimension 0"),
        "dim-negative": ([(ti["blk.0.a"]["dims"], U64(2**64 - 4))], "dimension"),
        "dims-overflow": ([(ti["blk.0.a"]["dims"], U64(1 << 62)),
                           (ti["blk.0.a"]["dims"] + 8, U64(1 << 62))], "too many elements"),
        "dims-huge": ([(ti["blk.0.a"]["dims"], U64(1 << 40))], "not within the file"),
        "type-999": ([(ti["blk.0.a"]["type"], U32(999))], "unknown ggml type 999"),
        "type-removed-4": ([(ti["blk.0.a"]["type"], U32(4))], "unknown ggml type 4"),
        "q8-ne0-not-block": ([(ti["blk.0.q"]["dims"], U64(16))], "not a multiple of 32"),
        "offset-past-eof": ([(ti["blk.0.b"]["offset"], U64(1 << 20))], "not within the file"),
        "offset-2^63": ([(ti["blk.0.b"]["offset"], U64(1 << 63))], "not within the file"),
        "offset-unaligned": ([(ti["blk.0.b"]["offset"], U64(33))], "not aligned"),
        "overlap": ([(ti["blk.0.b"]["offset"], U64(0))], "overlap"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def cases(valid: tuple[Path, bytes, Layout]) -> dict[str, tuple[list[tuple[int, bytes]], str]]:
    return _cases(valid[2])


_NAMES = [
    "magic", "magic-ggml", "version-0", "version-1", "version-4", "version-ffff0000",
    "big-endian", "n_tensors-2^63", "n_tensors-2^64-1", "n_kv-2^40", "n_kv-1e6+1",
    "n_tensors-1e6", "n_kv-too-many", "key-length-2^63", "string-length-2^63",
    "string-length-past-eof", "array-count-2^40", "tokens-count-2^40", "array-elem-type-999",
    "value-type-999", "value-type-13", "alignment-3", "alignment-0", "alignment-type",
    "alignment-2^31", "duplicate-key", "key-not-utf8", "block_count-10000", "duplicate-tensor",
    "tensor-name-2^63", "n_dims-5", "n_dims-0", "dim-0", "dim-negative", "dims-overflow",
    "dims-huge", "type-999", "type-removed-4", "q8-ne0-not-block", "offset-past-eof",
    "offset-2^63", "offset-unaligned", "overlap",
]  # fmt: skip


def test_case_list_is_complete(cases: dict[str, object]) -> None:
    assert sorted(cases) == sorted(_NAMES)


@pytest.mark.parametrize("name", _NAMES)
def test_malformed_header(valid: tuple[Path, bytes, Layout], tmp_path: Path,
                          cases: dict[str, tuple[list[tuple[int, bytes]], str]],
                          name: str) -> None:  # fmt: skip
    edits, match = cases[name]
    corrupt(patched(tmp_path, valid[1], *edits), match)


# -- fuzz (T15: >= 200 deterministic corruptions of the header region) ---------------------------

FUZZ_CASES = 300
INTERESTING_32 = [0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 999, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
INTERESTING_64 = [0, 1, 7, 64, 1 << 20, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, 2**64 - 1]


def _mutate(rng: random.Random, data: bytes, lay: Layout) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 4])):
        kind = rng.randrange(6)
        off = rng.randrange(lay.data_start)
        if kind == 0:
            buf[off] = rng.randrange(256)
        elif kind == 1:
            buf[off] ^= 1 << rng.randrange(8)
        elif kind == 2:
            n = rng.randint(2, 8)
            buf[off : off + n] = rng.randbytes(n)
        else:  # an interesting number over a real numeric field (or a random place)
            f_off, width = rng.choice(lay.fields) if kind < 5 else (off, rng.choice([4, 8]))
            if width == 4:
                buf[f_off : f_off + 4] = U32(rng.choice(INTERESTING_32))
            else:
                value = rng.choice([*INTERESTING_64, len(data), len(data) + 1])
                buf[f_off : f_off + 8] = U64(value)
    return bytes(buf[: len(data)])


@pytest.fixture(scope="module")
def fuzz_dir(valid: tuple[Path, bytes, Layout], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, data, lay = valid
    rng = random.Random(20240127)
    out = tmp_path_factory.mktemp("fuzz")
    for i in range(FUZZ_CASES):
        (out / f"case{i:03d}.gguf").write_bytes(_mutate(rng, data, lay))
    return out


def test_fuzz_in_process(fuzz_dir: Path) -> None:
    outcomes = {"ok": 0, "corrupt": 0}
    slowest = 0.0
    for path in sorted(fuzz_dir.iterdir()):
        start = time.perf_counter()
        try:
            read_info(path)
            outcomes["ok"] += 1
        except CorruptModel as e:
            assert e.message.startswith("model file is corrupt or incomplete: ")
            outcomes["corrupt"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    assert sum(outcomes.values()) == FUZZ_CASES
    assert outcomes["corrupt"] >= FUZZ_CASES // 3, outcomes
    assert slowest < 1.0, slowest


_FUZZ_SCRIPT = """
import json, resource, sys
from pathlib import Path
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from llmrun.errors import CorruptModel
from llmrun.gguf_file import read_info
out = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    try:
        read_info(path)
        out[path.name] = "ok"
    except CorruptModel:
        out[path.name] = "corrupt"
    except BaseException as e:  # MemoryError included: reported, never hidden
        out[path.name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@pytest.mark.slow  # a process under a memory limit
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics are Linux-specific")
def test_fuzz_under_memory_limit(fuzz_dir: Path) -> None:
    src = str(Path(llmrun.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": src, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _FUZZ_SCRIPT, str(fuzz_dir), str(1 << 30)],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert len(results) == FUZZ_CASES
    bad = {k: v for k, v in results.items() if v not in ("ok", "corrupt")}
    assert not bad, bad


# -- non-regular files (T13) ---------------------------------------------------------------------


def _in_thread(path: Path) -> BaseException | None:
    """read_info in a daemon thread, so a blocking open() fails the test instead of hanging."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            read_info(path)
            result.append(None)
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"read_info({path}) blocked"
    return result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    err = _in_thread(fifo)
    assert isinstance(err, CorruptModel) and "not a regular file (a FIFO)" in err.message
    link = tmp_path / "link.gguf"
    link.symlink_to(fifo)
    err = _in_thread(link)
    assert isinstance(err, CorruptModel) and "FIFO" in err.message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_symlink_to_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "model.gguf"
    link.symlink_to("/dev/zero")
    err = _in_thread(link)
    assert isinstance(err, CorruptModel) and "character device" in err.message


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    err = _in_thread(tmp_path / "dir.gguf")
    assert isinstance(err, CorruptModel) and "directory" in err.message
    (tmp_path / "link.gguf").symlink_to(tmp_path / "dir.gguf")
    assert isinstance(_in_thread(tmp_path / "link.gguf"), CorruptModel)


def test_missing_and_dangling_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_info(tmp_path / "nope.gguf")
    (tmp_path / "dangling.gguf").symlink_to(tmp_path / "gone")
    with pytest.raises(NotFound):
        read_info(tmp_path / "dangling.gguf")


def test_small_and_foreign_files(tmp_path: Path) -> None:
    for i, content in enumerate([b"", b"GG", b"GGUF", b"\x7fELF" + bytes(60), b"GGUF\x03\x00"]):
        path = tmp_path / f"f{i}.gguf"
        path.write_bytes(content)
        corrupt(path)


# -- split models (T08) ------------------------------------------------------------------------


def write_shards(tmp_path: Path, count: int = 3, stem: str = "tiny") -> list[Path]:
    paths = []
    for i in range(count):
        path = tmp_path / f"{stem}-{i + 1:05d}-of-{count:05d}.gguf"

        def kv(w: gguf.GGUFWriter, i: int = i) -> None:
            w.add_uint16("split.no", i)
            w.add_uint16("split.count", count)
            w.add_int32("split.tensors.count", 3 * count)

        paths.append(write_gguf(path, kv=kv))
    return paths


def test_split_set_complete(tmp_path: Path) -> None:
    paths = write_shards(tmp_path)
    assert check_split_set(paths[0]) == paths
    assert check_split_set(paths[2]) == paths
    info = read_info(paths[1])
    assert (info.split_count, info.split_no) == (3, 1)


def test_split_set_missing_shard(tmp_path: Path) -> None:
    paths = write_shards(tmp_path)
    paths[1].unlink()
    with pytest.raises(CorruptModel, match=r"incomplete model: missing shard 2/3"):
        check_split_set(paths[0])


def test_split_set_corrupt_or_mislabelled_shard(tmp_path: Path) -> None:
    paths = write_shards(tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModel, match=r"corrupt or incomplete: .*00003-of-00003"):
        check_split_set(paths[0])
    paths[2].write_bytes(paths[1].read_bytes())  # shard 2's header under shard 3's name
    with pytest.raises(CorruptModel, match="header says shard 2/3"):
        check_split_set(paths[0])


def test_split_set_unsplit_file(valid: tuple[Path, bytes, Layout], tmp_path: Path) -> None:
    assert check_split_set(valid[0]) == [valid[0]]
    lone = tmp_path / "renamed.gguf"
    lone.write_bytes(write_shards(tmp_path)[0].read_bytes())
    with pytest.raises(CorruptModel, match="shard 1/3"):
        check_split_set(lone)


@pytest.mark.parametrize("argv", [[], ["--help"], ["out.gguf", "-h"]])
def test_tiny_model_usage_is_one_line_and_writes_nothing(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m llmrun.tiny_model --help` once wrote a model to a file named --help."""
    from llmrun import tiny_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["tiny_model", *argv])
    with pytest.raises(SystemExit) as exit_:
        tiny_model.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("usage: python -m llmrun.tiny_model")
    assert list(tmp_path.iterdir()) == []
