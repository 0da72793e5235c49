"""Bounded, pure-Python validation of GGUF model files before native code sees them.

Model files come from strangers (reliability.md S4, S6, T13-T15). ``read_info`` refuses
anything that is not a regular file without opening it, then streams the header with
``struct``: every count and length is checked against the bytes that remain in the file and
against absolute caps *before* anything is read or allocated, the metadata section may span
at most ``MAX_HEADER_BYTES``, and the tensor table must describe aligned, non-overlapping
byte ranges inside the file. Time and memory are bounded by those caps, never by the file.

The result is a ``GGUFInfo`` (gguf_info.py), the typed view of what was validated.

Errors: a missing path raises ``NotFound``; an unreadable one ``ModelError``; everything
else (non-regular file, malformed or truncated header, missing shard) ``CorruptModel``.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import gguf

from .errors import CorruptModel, ModelError, NotFound
from .gguf_info import GGUFInfo, MetaValue, Scalar

DEFAULT_HINT = "run `llmrun pull --force NAME`"
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
MAX_ARRAY_DEPTH = 2  # an array may hold arrays of scalars/strings, no deeper
MAX_HEADER_BYTES = 256 << 20  # metadata + tensor table
MAX_WALKED = 8_000_000  # array elements (strings, sub-arrays) walked one at a time, in total
MAX_KEY = 1024  # real keys are < 100 bytes; also keeps error messages short
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME - 1
MAX_KEPT_STRING = 4 << 20  # longer string values are validated but not kept
MAX_BLOCK_COUNT = 512  # LLAMA_MAX_LAYERS (G#26051)
MAX_HEADS = 1 << 16  # attention heads per layer (real models: <= 128)
MAX_HEAD_DIM = 1 << 16  # attention key/value length per head (real models: <= 1024)
MAX_EMBEDDING = 1 << 20  # embedding length (real models: <= 32768)
SMALL_ARRAY = 64  # arrays up to this many scalars are kept in ``metadata``
# per-layer arrays (llama.cpp's get_key_or_arr) are kept up to MAX_BLOCK_COUNT elements
PER_LAYER_SUFFIXES = (".attention.head_count", ".attention.head_count_kv")
INT64_MAX = (1 << 63) - 1
TOKENS_KEY = "tokenizer.ggml.tokens"

_VT = gguf.GGUFValueType
_FMT: dict[int, struct.Struct] = {
    int(t): struct.Struct("<" + c)
    for t, c in [
        (_VT.UINT8, "B"), (_VT.INT8, "b"), (_VT.UINT16, "H"), (_VT.INT16, "h"),
        (_VT.UINT32, "I"), (_VT.INT32, "i"), (_VT.FLOAT32, "f"), (_VT.BOOL, "?"),
        (_VT.UINT64, "Q"), (_VT.INT64, "q"), (_VT.FLOAT64, "d"),
    ]
}  # fmt: skip
_MIN_SIZE = {**{t: s.size for t, s in _FMT.items()}, int(_VT.STRING): 8, int(_VT.ARRAY): 12}
_MIN_KV = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_U32, _U64, _2U64 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<QQ")
_TENSOR_TAIL = {n: struct.Struct(f"<{n}QIQ") for n in range(1, 5)}  # dims, type, offset
_QSIZES = {int(k): v for k, v in gguf.GGML_QUANT_SIZES.items()}
_QNAMES = {int(k): k.name for k in gguf.GGMLQuantizationType}
_CHUNK = 1 << 20
_MARK_EVERY = 256  # remember the offset of every 256th token, for bos/eos look-ups
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class _Bad(Exception):
    """Internal: the header is malformed; read_info turns this into CorruptModel."""


class _Reader:
    """Sequential reads from a window over the file; never reads past ``end``."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size = f, size
        self.end = min(size, MAX_HEADER_BYTES)
        self.buf, self.off, self.base = b"", 0, 0
        self.walked = 0
        self.marks: list[int] = []  # offsets of every _MARK_EVERY-th token string

    @property
    def pos(self) -> int:
        return self.base + self.off

    def _past_end(self, n: int, what: str) -> _Bad:
        if self.pos + n > self.size:
            return _Bad(f"truncated {what} at offset {self.pos} (file is {self.size} bytes)")
        return _Bad(f"header is larger than {MAX_HEADER_BYTES >> 20} MiB")

    def need(self, n: int, what: str) -> None:
        if self.off + n <= len(self.buf):
            return
        pos = self.pos
        if n > self.end - pos:
            raise self._past_end(n, what)
        tail = self.buf[self.off :]
        self.f.seek(pos + len(tail))
        data = self.f.read(min(max(n - len(tail), _CHUNK), self.end - pos - len(tail)))
        if len(tail) + len(data) < n:
            raise _Bad(f"file shrank while reading {what}")
        self.buf, self.off, self.base = tail + data, 0, pos

    def skip(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self._past_end(n, what)
        self.off += n

    def seek(self, pos: int) -> None:
        self.buf, self.off, self.base = b"", 0, pos

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        self.need(st.size, what)
        v = st.unpack_from(self.buf, self.off)
        self.off += st.size
        return v

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what)[0])

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what)[0])

    def string(
        self, what: str, keep: int = MAX_KEPT_STRING, limit: int = MAX_STRING
    ) -> bytes | None:
        """A length-prefixed string; None (after skipping it) when longer than ``keep``."""
        n = self.u64(what)
        if n > limit:
            raise _Bad(f"{what} has length {n} (limit {limit})")
        if n > keep:
            self.skip(n, what)
            return None
        self.need(n, what)
        s = self.buf[self.off : self.off + n]
        self.off += n
        return s

    def skip_strings(self, count: int, marks: list[int] | None) -> None:
        """The hot loop for tokenizer vocabularies: check and skip ``count`` strings."""
        unpack = _U64.unpack_from
        for first in range(0, count, _MARK_EVERY):
            if marks is not None:
                marks.append(self.pos)
            buf, off, limit = self.buf, self.off, self.end - self.base
            for _ in range(min(_MARK_EVERY, count - first)):
                if off + 8 > len(buf):
                    self.off = off
                    self.need(8, "string length")
                    buf, off, limit = self.buf, self.off, self.end - self.base
                (n,) = unpack(buf, off)
                off += 8 + n
                if off > limit:  # also catches n > MAX_STRING, since end <= MAX_HEADER_BYTES
                    self.off = off - n
                    raise self._past_end(n, "string") if n <= MAX_STRING else _Bad(f"length {n}")
            self.off = off

    def walk(self, count: int) -> None:
        self.walked += count
        if self.walked > MAX_WALKED:
            raise _Bad(f"metadata arrays hold more than {MAX_WALKED} strings/arrays in total")


def _name(raw: bytes | None, what: str) -> str:
    try:
        return (raw or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{what} {raw!r} is not valid UTF-8") from None


def _array(r: _Reader, key: str, etype: int, count: int, depth: int) -> list[Scalar] | None:
    """Check (and, when small, return) one array whose header has been read."""
    if etype not in _MIN_SIZE:
        raise _Bad(f"array has invalid element type {etype}")
    if count > MAX_ARRAY or count * _MIN_SIZE[etype] > r.size - r.pos:
        raise _Bad(f"array of {count} elements is larger than the file")
    st = _FMT.get(etype)
    if st is not None:
        keep = MAX_BLOCK_COUNT if key.endswith(PER_LAYER_SUFFIXES) else SMALL_ARRAY
        if count > keep or depth > 1:
            r.skip(count * st.size, "array")
            return None
        r.need(count * st.size, "array")
        values = list(struct.unpack_from(f"<{count}{st.format[1:]}", r.buf, r.off))
        r.off += count * st.size
        return values
    r.walk(count)
    if etype == _VT.STRING:
        if count > SMALL_ARRAY or depth > 1 or key == TOKENS_KEY:
            r.skip_strings(count, r.marks if key == TOKENS_KEY and depth == 1 else None)
            return None
        items = [r.string("array element") for _ in range(count)]
        if any(s is None for s in items):
            return None
        return [(s or b"").decode("utf-8", "replace") for s in items]
    if depth >= MAX_ARRAY_DEPTH:
        raise _Bad(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
    for _ in range(count):
        sub_type, sub_count = r.u32("array type"), r.u64("array length")
        _array(r, key, sub_type, sub_count, depth + 1)
    return None


def _parse_kv(r: _Reader, n_kv: int) -> tuple[dict[str, MetaValue], dict[str, int]]:
    meta: dict[str, MetaValue] = {}
    lengths: dict[str, int] = {}
    seen: set[str] = set()
    for i in range(n_kv):
        key = ""
        try:
            key = _name(r.string("key", MAX_KEY, MAX_KEY), "key")
            if key in seen:
                raise _Bad("duplicate key")
            seen.add(key)
            vtype = r.u32("value type")
            if key == "general.alignment" and vtype != _VT.UINT32:
                raise _Bad(f"type {vtype}, expected UINT32")
            if vtype == _VT.ARRAY:
                etype, count = r.u32("array type"), r.u64("array length")
                lengths[key] = count
                value = _array(r, key, etype, count, 1)
                if value is not None:
                    meta[key] = value
            elif vtype == _VT.STRING:
                s = r.string("string value")
                if s is not None:
                    meta[key] = s.decode("utf-8", "replace")
            elif vtype in _FMT:
                meta[key] = r.unpack(_FMT[vtype], "value")[0]
            else:
                raise _Bad(f"invalid value type {vtype}")
        except _Bad as e:
            raise _Bad(f"key #{i} {key!r}: {e}") from None
    return meta, lengths


_Ranges = list[tuple[int, int, str]]  # (offset, nbytes, name)


def _parse_tensors(r: _Reader, n: int, align: int
                   ) -> tuple[_Ranges, dict[int, int], dict[int, tuple[int, int]]]:
    ranges: _Ranges = []
    names: set[str] = set()
    by_type: dict[int, int] = {}
    matrices: dict[int, tuple[int, int]] = {}  # type -> (offset, nbytes) of its first matrix
    for i in range(n):
        name = ""
        try:  # inlined reads: this loop may run MAX_TENSORS times
            r.need(8, "name length")
            (length,) = _U64.unpack_from(r.buf, r.off)
            if length > MAX_TENSOR_NAME:
                raise _Bad(f"name has length {length} (limit {MAX_TENSOR_NAME})")
            r.off += 8
            r.need(length + 4, "name")
            name = _name(r.buf[r.off : r.off + length], "name")
            if name in names:
                raise _Bad("duplicate tensor name")
            names.add(name)
            (n_dims,) = _U32.unpack_from(r.buf, r.off + length)
            r.off += length + 4
            if not 1 <= n_dims <= 4:
                raise _Bad(f"{n_dims} dimensions (expected 1..4)")
            tail = _TENSOR_TAIL[n_dims]
            r.need(tail.size, "tensor info")
            *dims, ttype, offset = tail.unpack_from(r.buf, r.off)
            r.off += tail.size
            ne = 1
            for d in dims:
                if not 1 <= d <= INT64_MAX:
                    raise _Bad(f"dimension {d}")
                ne *= d
            if ne > INT64_MAX:
                raise _Bad(f"too many elements {dims}")
            if ttype not in _QSIZES or ttype not in _QNAMES:
                raise _Bad(f"unknown ggml type {ttype}")
            block, type_size = _QSIZES[ttype]
            if dims[0] % block:
                raise _Bad(f"ne[0]={dims[0]} is not a multiple of {block}")
            if offset % align:
                raise _Bad(f"offset {offset} is not aligned to {align}")
        except _Bad as e:
            raise _Bad(f"tensor #{i} {name!r}: {e}") from None
        ranges.append((offset, ne // block * type_size, name))
        by_type[ttype] = by_type.get(ttype, 0) + ne
        if n_dims >= 2 and ttype not in matrices:
            matrices[ttype] = ranges[-1][:2]
    return ranges, by_type, matrices


def _check_int(meta: Mapping[str, MetaValue], key: str, low: int, high: int) -> None:
    value = meta.get(key)
    if value is not None and (type(value) is not int or not low <= value <= high):
        raise _Bad(f"{key} is {_short(value)} (expected {low}..{high})")


def _short(value: MetaValue) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_meta(meta: Mapping[str, MetaValue], lengths: Mapping[str, int]) -> None:
    arch = meta.get("general.architecture")
    blocks = meta.get(f"{arch}.block_count")
    _check_int(meta, f"{arch}.block_count", 1, MAX_BLOCK_COUNT)
    _check_int(meta, f"{arch}.embedding_length", 1, MAX_EMBEDDING)
    for suffix in ("key_length", "value_length"):
        _check_int(meta, f"{arch}.attention.{suffix}", 1, MAX_HEAD_DIM)
    for suffix in PER_LAYER_SUFFIXES:  # a number, or one number per layer
        key = f"{arch}{suffix}"
        value = meta.get(key)
        if isinstance(value, list):
            if type(blocks) is int and len(value) != blocks:
                raise _Bad(f"{key} has {len(value)} elements, block_count is {blocks}")
            if not all(type(v) is int and 0 <= v <= MAX_HEADS for v in value):
                raise _Bad(f"{key} is {_short(value)} (expected integers 0..{MAX_HEADS})")
        elif key in lengths:  # an array not kept: too long, nested, or of long strings
            raise _Bad(f"{key} is an array of {lengths[key]} elements, not one integer per "
                       f"layer (at most {MAX_BLOCK_COUNT})")
        else:
            _check_int(meta, key, 0, MAX_HEADS)
    count, no = meta.get("split.count", 0), meta.get("split.no", 0)
    if type(count) is not int or type(no) is not int or not 0 <= count <= 99_999:
        raise _Bad(f"invalid split.count {count!r} / split.no {no!r}")
    if count and not 0 <= no < count:
        raise _Bad(f"split.no {no} is not below split.count {count}")


def _token(r: _Reader, marks: list[int], n_tokens: int, tid: object) -> str | None:
    if type(tid) is not int or not 0 <= tid < n_tokens:
        return None
    r.seek(marks[tid // _MARK_EVERY])
    r.skip_strings(tid % _MARK_EVERY, None)
    s = r.string("token")
    return None if s is None else s.decode("utf-8", "replace")


def _parse(f: IO[bytes], size: int, path: Path) -> GGUFInfo:
    r = _Reader(f, size)
    r.need(4, "magic")
    if r.buf[:4] != b"GGUF":
        raise _Bad(f"bad magic {r.buf[:4]!r} (not a GGUF file)")
    r.off = 4
    version = r.u32("version")
    if version not in (2, 3):
        big = int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3)
        raise _Bad("big-endian GGUF is not supported" if big else f"unsupported version {version}")
    n_tensors, n_kv = r.unpack(_2U64, "header")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise _Bad(f"implausible counts: {n_tensors} tensors, {n_kv} key/value pairs")
    if n_tensors * _MIN_TENSOR + n_kv * _MIN_KV > size - r.pos:
        raise _Bad(f"header claims {n_tensors} tensors and {n_kv} keys, more than the file holds")
    meta, lengths = _parse_kv(r, n_kv)
    _check_meta(meta, lengths)
    align = meta.get("general.alignment", 32)
    if type(align) is not int or align < 1 or align & (align - 1):
        raise _Bad(f"general.alignment {align!r} is not a power of two")
    ranges, by_type, matrices = _parse_tensors(r, n_tensors, align)
    data_start = -(-r.pos // align) * align
    if n_tensors and data_start > size:
        raise _Bad(f"tensor data section starts at {data_start}, past the end ({size} bytes)")
    prev_end, prev_name = 0, ""
    for offset, nbytes, name in sorted(ranges):
        if data_start + offset + nbytes > size:
            raise _Bad(f"tensor {name!r} data is not within the file bounds")
        if offset < prev_end:
            raise _Bad(f"tensors {prev_name!r} and {name!r} overlap")
        prev_end, prev_name = offset + nbytes, name
    bos = eos = None
    if TOKENS_KEY in lengths and r.marks:
        n_tok = lengths[TOKENS_KEY]
        bos = _token(r, r.marks, n_tok, meta.get("tokenizer.ggml.bos_token_id"))
        eos = _token(r, r.marks, n_tok, meta.get("tokenizer.ggml.eos_token_id"))
    types = {_QNAMES[t]: ne for t, ne in by_type.items()}
    return GGUFInfo(
        path=path, file_size=size, version=version, n_tensors=n_tensors, metadata=meta,
        array_lengths=lengths, parameter_count=sum(types.values()), tensor_types=types,
        alignment=align, data_offset=data_start, bos_token=bos, eos_token=eos,
        matrix_samples={_QNAMES[t]: (data_start + off, nb) for t, (off, nb) in matrices.items()},
    )  # fmt: skip


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]  # fmt: skip
    return next((k for test, k in kinds if test(mode)), "a special file")


def read_info(path: Path, *, hint: str | None = None) -> GGUFInfo:
    """Validate the GGUF header of ``path`` (bounded time and memory) and return its info.

    Raises NotFound when the path does not exist, ModelError when it cannot be read, and
    CorruptModel for non-regular files (FIFO, device, directory, symlink to one: refused
    without being opened) and for any malformed, truncated or implausible header.
    """
    path = Path(path)
    hint = DEFAULT_HINT if hint is None else hint
    prefix = f"model file is corrupt or incomplete: {path}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptModel(f"{prefix}: not a regular file ({_kind(st.st_mode)})", hint)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CorruptModel(f"{prefix}: not a regular file ({_kind(st.st_mode)})", hint)
            return _parse(f, st.st_size, path)
    except _Bad as e:
        raise CorruptModel(f"{prefix}: {e}", hint) from None
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"model file not found: {path}", hint) from None
    except OSError as e:
        raise ModelError(f"cannot read model file: {path}: {e.strerror or e}") from None


def read_info_from(f: IO[bytes], size: int, name: str) -> GGUFInfo:
    """The header of a GGUF that is not a local file (``f`` reads and seeks it, e.g. ranges
    of a file on the Hub): the same validation as read_info, CorruptModel when it fails."""
    try:
        return _parse(f, size, Path(name))
    except _Bad as e:
        raise CorruptModel(f"GGUF header of {name} is malformed: {e}") from None


def check_split_set(first: Path, *, hint: str | None = None) -> list[Path]:
    """Return every part of the model that ``first`` belongs to, each header validated.

    ``first`` may be any shard named ``<stem>-0000k-of-0000N.gguf`` (or an unsplit file, which
    comes back alone). Raises CorruptModel("incomplete model: missing shard k/N ...") when a
    sibling is absent, and CorruptModel when a shard's split.* keys disagree with its name.
    """
    first = Path(first)
    hint = DEFAULT_HINT if hint is None else hint
    m = _SPLIT_RE.match(first.name)
    if m is None:
        info = read_info(first, hint=hint)
        if info.split_count > 1:
            raise CorruptModel(
                f"incomplete model: {first} is shard {info.split_no + 1}/{info.split_count} "
                "but its name has no -0000k-of-0000N suffix",
                hint,
            )
        return [first]
    count, no = int(m["count"]), int(m["no"])
    if not 1 <= no <= count:
        raise CorruptModel(f"model file is corrupt or incomplete: {first}: bad shard name", hint)
    parts = [
        first.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    for i, part in enumerate(parts, 1):
        if not part.exists():
            raise CorruptModel(f"incomplete model: missing shard {i}/{count} ({part.name})", hint)
    infos = [read_info(part, hint=hint) for part in parts]
    for i, (part, info) in enumerate(zip(parts, infos, strict=True), 1):
        if (info.split_count or 1) != count or info.split_no != i - 1:
            raise CorruptModel(
                f"model file is corrupt or incomplete: {part}: header says shard "
                f"{info.split_no + 1}/{info.split_count or 1}, file name says {i}/{count}",
                hint,
            )
    expected, total = infos[0].metadata.get("split.tensors.count"), sum(i.n_tensors for i in infos)
    if type(expected) is int and expected != total:
        msg = f"split.tensors.count is {expected}, the shards hold {total} tensors"
        raise CorruptModel(f"incomplete model: {first.name}: {msg}", hint)
    return parts
