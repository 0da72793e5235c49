"""Images in llmrun's own generation path, through llama.cpp's mtmd.

llmrun renders the chat template itself and puts mtmd's media marker where an image goes
(images.MEDIA_MARKER); :meth:`Projector.tokenize` cuts that prompt into text and image chunks
(``mtmd_tokenize``, given bitmaps made from pixels images.py decoded, never from encoded bytes)
and returns the prompt as one token list in which each image stands as a run of negative
placeholder ids, one per position it takes. :meth:`Projector.evaluate` then brings the KV
cache to exactly that list: the prefix already cached is kept (an image is kept or evaluated
whole), text chunks go through llama-cpp-python's ``eval``, image chunks through
``mtmd_helper_eval_chunk_single``. Sampling, grammars, stop strings and the reply parser are
llmrun's as for text: Model.generate() finds the whole prompt cached and samples.

Not llama-cpp-python's MTMDChatHandler: it renders its own template copy, clears the cache on
every call and fetches any non-data: URL (file:// included) with urllib.

One mtmd context per model, used only under the model's lock (it is not reentrant); it is
loaded with the model, so a projector that does not fit the model fails at load."""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datatypes import Result, Sampling
from ..errors import ModelError, UsageError, context_overflow
from ..images import MEDIA_MARKER, Image
from ..prefix_cache import common_prefix

Model = Any  # engine/model.py's Model (not imported: it imports this module)
log = logging.getLogger("llmrun")
_mtmd_log_callback: Any = None  # kept referenced: mtmd calls it from C


def _route_mtmd_logs(debug: bool) -> None:
    """mtmd logs on its own logger, which Llama(verbose=False) does not reach: to stderr only
    when debugging, as llama.cpp's (native._route_llama_logs)."""
    global _mtmd_log_callback
    if _mtmd_log_callback is not None:
        return
    import llama_cpp
    from llama_cpp import mtmd_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if debug:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _mtmd_log_callback = _cb
    mtmd_cpp.mtmd_helper_log_set(_cb, None)


@dataclass
class _Span:
    start: int  # first position in the prompt
    end: int
    chunk: int  # index in the chunks
    image: bool


@dataclass
class _Tokenized:
    tokens: list[int]
    spans: list[_Span]
    chunks: Any  # mtmd_input_chunks_p, owned
    cells: int  # KV cells the prompt takes (more than positions with M-RoPE)


def _placeholder(image: Image) -> int:
    """The id that stands for each position of an image: negative (never a real token),
    the same for the same pixels, so a cached image is recognised in the next prompt."""
    return -1 - int(image.digest[:7] or "0", 16)


class Projector:
    """A model's vision projector (mmproj), loaded against the model."""

    def __init__(self, model: Model, path: Path, *, threads: int, use_gpu: bool,
                 debug: bool) -> None:
        _route_mtmd_logs(debug)
        from llama_cpp import mtmd_cpp

        self.path = path
        self._mtmd = mtmd_cpp
        if mtmd_cpp.mtmd_default_marker().decode() != MEDIA_MARKER:  # pragma: no cover
            raise ModelError("this llama-cpp-python's mtmd uses another media marker")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = threads
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model.llama.model, params)
        if not self.ctx:
            self.ctx = None
            raise ModelError(f"the vision projector {path.name} does not load with "
                             f"{model.name}", hint="LLMRUN_DEBUG=1 shows mtmd's log; "
                             f"`llmrun pull --force {model.name}` fetches it again")
        if not mtmd_cpp.mtmd_support_vision(self.ctx):
            self.close()
            raise ModelError(f"{path.name} is not a vision projector (no image encoder)")
        self.mrope = bool(mtmd_cpp.mtmd_decode_use_mrope(self.ctx))
        self._last: tuple[tuple[int, ...], _Tokenized] | None = None

    def close(self) -> None:
        self._forget()
        if self.ctx is not None:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def _forget(self) -> None:
        if self._last is not None:
            self._mtmd.mtmd_input_chunks_free(self._last[1].chunks)
            self._last = None

    # ---- tokenize --------------------------------------------------------------------
    def tokenize(self, text: str, images: Sequence[Image], *, add_special: bool) -> list[int]:
        """``text`` (a rendered prompt with one marker per image, in order) as tokens, each
        image a run of placeholders. The chunks are kept for evaluate()."""
        m = self._mtmd
        if text.count(MEDIA_MARKER) != len(images):
            raise UsageError(f"the prompt has {text.count(MEDIA_MARKER)} place(s) for images "
                             f"but {len(images)} image(s) were given")
        bitmaps = []
        chunks = m.mtmd_input_chunks_init()
        try:
            for image in images:
                pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
                bitmap = m.mtmd_bitmap_init(image.width, image.height, pixels)
                if not bitmap:
                    raise ModelError(f"mtmd refused image {image.source}")
                bitmaps.append(bitmap)
                m.mtmd_bitmap_set_id(bitmap, image.digest.encode())
            inp = m.mtmd_input_text()
            raw = text.encode("utf-8")
            inp.text, inp.text_len = raw, len(raw)
            inp.add_special, inp.parse_special = add_special, True
            array = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
            if rc != 0:
                raise ModelError(f"mtmd could not tokenize the prompt (error {rc})")
            done = self._read(chunks, images)
        except BaseException:
            m.mtmd_input_chunks_free(chunks)
            raise
        finally:
            for bitmap in bitmaps:
                m.mtmd_bitmap_free(bitmap)
        self._forget()
        self._last = (tuple(done.tokens), done)
        return list(done.tokens)

    def _read(self, chunks: Any, images: Sequence[Image]) -> _Tokenized:
        m = self._mtmd
        tokens: list[int] = []
        spans: list[_Span] = []
        cells = 0
        pending = iter(images)
        for i in range(m.mtmd_input_chunks_size(chunks)):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            kind = m.mtmd_input_chunk_get_type(chunk)
            start = len(tokens)
            if kind == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens += [ptr[j] for j in range(n.value)]
                cells += n.value
            elif kind == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                image = next(pending)
                n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
                tokens += [_placeholder(image)] * n_pos
                cells += int(m.mtmd_input_chunk_get_n_tokens(chunk))
            else:
                raise ModelError("mtmd made a chunk that is not text or an image")
            spans.append(_Span(start, len(tokens), i, kind != m.MTMD_INPUT_CHUNK_TYPE_TEXT))
        return _Tokenized(tokens, spans, chunks, cells)

    def extra_cells(self, tokens: list[int]) -> int:
        """KV cells the prompt takes beyond its positions (M-RoPE models' images)."""
        if self._last is None or self._last[0] != tuple(tokens):
            return 0
        return max(0, self._last[1].cells - len(tokens))

    # ---- evaluate --------------------------------------------------------------------
    def evaluate(self, model: Model, tokens: list[int]) -> None:
        """Bring the KV cache to exactly ``tokens`` (as tokenize() returned them), with the
        last position's logits ready for sampling."""
        import llama_cpp

        if self._last is None or self._last[0] != tuple(tokens):
            raise ModelError("internal error: the image prompt was not tokenized first")
        plan = self._last[1]
        llama = model.llama
        if plan.cells >= model.n_ctx:
            raise context_overflow(plan.cells, model.n_ctx, model.info.context_length)
        held = list(llama.input_ids[: llama.n_tokens])
        if llama.n_tokens == len(tokens) and held == tokens and not llama._requires_eval:
            return
        keep = min(common_prefix(held, tokens), len(tokens) - 1)
        for span in plan.spans:  # an image is kept whole or evaluated whole
            if span.image and span.start < keep < span.end:
                keep = span.start
        if keep < llama.n_tokens:
            memory = llama_cpp.llama_get_memory(llama.ctx)
            if keep <= 0 or self.mrope or not (model.can_roll_back and model.can_keep(keep)) \
                    or not llama_cpp.llama_memory_seq_rm(memory, -1, keep, -1):
                model.clear_cache()
                keep = 0
        llama.n_tokens = keep
        llama._requires_eval = True
        last = plan.spans[-1].chunk if plan.spans else -1
        try:
            for span in plan.spans:
                if span.end <= keep:
                    continue
                if not span.image:
                    llama.eval(tokens[max(span.start, keep): span.end])
                    continue
                chunk = self._mtmd.mtmd_input_chunks_get(plan.chunks, span.chunk)
                new_n_past = llama_cpp.llama_pos(llama.n_tokens)
                rc = self._mtmd.mtmd_helper_eval_chunk_single(
                    self.ctx, llama._ctx.ctx, chunk, llama.n_tokens, 0, llama.n_batch,
                    span.chunk == last, ctypes.byref(new_n_past))
                if rc != 0 or new_n_past.value != span.end:
                    raise ModelError(f"mtmd could not evaluate an image (error {rc})",
                                     hint="try a larger --ctx")
                llama.input_ids[span.start: span.end] = tokens[span.start: span.end]
                llama.n_tokens = span.end
                llama._requires_eval = span.chunk != last
        except BaseException:
            model.clear_cache()
            raise


class VisionEngine:
    """A Model with the images of one conversation: what ReplyStream, Session and the server
    worker use in place of the Model when a prompt holds images (engine protocol of
    reply.py: tokenize, generate; the rest is the Model's)."""

    def __init__(self, model: Model, images: Sequence[Image]) -> None:
        if model.projector is None:
            raise UsageError(f"{model.name} has no vision projector",
                             hint="use a vision model, e.g. `llmrun run gemma3:4b --image "
                                  "FILE \"Describe it\"`")
        self.model, self.images = model, list(images)
        self.projector: Projector = model.projector

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        if not templated:
            raise UsageError("images need the chat template (not --raw)")
        bos = self.model.info.bos_token
        return self.projector.tokenize(text, self.images,
                                       add_special=not (bos and text.startswith(bos)))

    def generate(self, tokens: list[int], sampling: Sampling, result: Result | None = None,
                 cancel: Callable[[], bool] | None = None) -> Iterator[str]:
        pieces: Iterator[str]
        if not any(t < 0 for t in tokens):
            pieces = self.model.generate(tokens, sampling, result, cancel)
            return pieces
        extra = self.projector.extra_cells(tokens)
        if extra:  # M-RoPE: an image takes more cells than positions; the reply gets fewer
            room = self.model.n_ctx - len(tokens) - extra
            if room <= 0:
                raise context_overflow(len(tokens) + extra, self.model.n_ctx,
                                       self.model.info.context_length)
            if not sampling.max_tokens or sampling.max_tokens > room:
                from dataclasses import replace

                sampling = replace(sampling, max_tokens=room)
        pieces = self.model.generate(tokens, sampling, result, cancel,
                                     evaluate=lambda: self.projector.evaluate(self.model, tokens))
        return pieces
