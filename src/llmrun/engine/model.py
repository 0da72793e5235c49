"""The Model: loads a model with explicit settings, formats chat prompts (GGUF template, else
the registry's; never a silent fallback), checks prompt length against the context and streams
tokens. A loaded Model keeps its KV cache between calls, so a chat turn evaluates only the new
tokens."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import gguf_file, inuse, native_check, prompt_pieces, templates
from ..datatypes import LoadOptions, Result, Sampling
from ..errors import ModelError, UsageError, context_overflow
from ..gguf_info import GGUFInfo
from ..prefix_cache import common_prefix
from .native import (
    _fixed_mmap_threshold,
    _model_params,
    _route_llama_logs,
    gpu_offload_supported,
    physical_cores,
    preload_library,
)
from .textstream import TextStream

DEFAULT_CTX = 4096
PREFILL_PIECE = 32  # tokens per decode of a guess that may be called off between decodes
log = logging.getLogger("llmrun")


def _affordable_ctx(info: GGUFInfo, preferred: int, parts: list[Path],
                    n_batch: int) -> int:
    """``preferred`` (a registry entry's default context, e.g. 16384 for a reasoning model
    whose traces overflow 4096), halved until the memory estimate fits what this machine has
    available, and never below DEFAULT_CTX."""
    from .. import memory

    return memory.affordable_ctx(info, preferred, weights=memory.files_size(info, parts),
                                 n_batch=n_batch, floor=DEFAULT_CTX,
                                 available=memory.available_memory(),
                                 limit=memory.address_space_limit())


class Model:
    def __init__(self, path: Path, opts: LoadOptions, *, chat_format: str | None = None,
                 debug: bool = False, name: str | None = None,
                 chat_template: str | None = None,
                 context: dict[str, Any] | None = None, mmproj: Path | None = None,
                 own_ctx: int | None = None) -> None:
        """``context``: more llama_cpp.Llama context arguments (engine/embed.py's embedding
        mode: embedding, pooling_type, n_ubatch). ``mmproj``: a vision projector, loaded
        with the model (engine/vision.py). ``own_ctx``: the size of the llama context this
        object makes, when generation goes through a BatchEngine with a context of its own
        (serve): its KV cache would hold nothing. ``n_ctx`` is still the context a request
        gets."""
        self.path = path
        self.name = name or path.name
        self._pieces: prompt_pieces.PieceTokenizer | None = None
        self._pieces_thread: threading.Thread | None = None
        self._closing = False
        hint = (f"run `llmrun pull --force {name}`" if name and name != path.name
                else "")  # a path of the user's: the message says what is wrong with it
        self.info = gguf_file.read_info(path, hint=hint)  # validated before native code sees it
        parts = [path]
        if self.info.split_count and self.info.split_count > 1:
            parts = gguf_file.check_split_set(path)
        # tells `llmrun rm` the files are in use; dropped by close() or when the process ends
        self._hold = inuse.Hold(parts)
        trained = self.info.context_length or DEFAULT_CTX
        want = opts.n_ctx or DEFAULT_CTX
        if opts.n_ctx is None and opts.ctx_default:  # the registry's preferred context
            want = _affordable_ctx(self.info, min(opts.ctx_default, trained), parts,
                                   opts.n_batch)
        self.n_ctx = min(want, trained)
        self.ctx_capped = opts.n_ctx is not None and opts.n_ctx > trained
        try:  # before llama.cpp is loaded in this process (a preload must come first)
            self.native = native_check.ensure(
                path, self.info.matrix_samples, mode=opts.extra_buffers,
                gpu=opts.n_gpu_layers != 0, threads=opts.n_threads, flash_attn=opts.flash_attn,
                state_dir=Path(opts.state_dir) if opts.state_dir else None, name=self.name)
            if self.native.config.preload:
                preload_library(self.native.config.preload)
        except BaseException:
            self._hold.release()
            raise
        self.notice = self.native.notice  # for the CLI to print, like memory_warning
        _route_llama_logs(debug)
        _fixed_mmap_threshold()
        import llama_cpp

        offload = self.offload_supported = gpu_offload_supported()
        gpu_layers = opts.n_gpu_layers if opts.n_gpu_layers is not None else (
            -1 if offload else 0)
        self.gpu_layers = gpu_layers if offload else 0
        self.threads = opts.n_threads or physical_cores()
        self.memory_warning: str | None = None  # T17: for the CLI to print, like ctx_capped
        if not self.gpu_layers:  # (offloaded weights and KV cache live in VRAM instead)
            from .. import memory

            try:  # refuses, before llama.cpp allocates, what cannot fit under RLIMIT_AS
                self.memory_warning = memory.preflight(
                    self.info, min(own_ctx or self.n_ctx, self.n_ctx), parts,
                    n_batch=opts.n_batch, name=self.name)
            except ModelError:
                self._hold.release()
                raise
        if not debug:  # a native abort must not run gdb, whose backtrace goes to stdout
            os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        start = time.perf_counter()
        failure: str | None = None
        try:
            with _model_params(self.native.config.extra_bufts):
                self.llama = llama_cpp.Llama(
                    model_path=str(path), n_ctx=min(own_ctx or self.n_ctx, self.n_ctx),
                    n_gpu_layers=self.gpu_layers,
                    n_threads=self.threads, n_threads_batch=self.threads, n_batch=opts.n_batch,
                    # llama.cpp's own default is "auto" (on wherever supported, CPU included);
                    # llama-cpp-python offers only on/off, so on it is, like llama-cli
                    flash_attn=opts.flash_attn if opts.flash_attn is not None else True,
                    use_mmap=opts.use_mmap, verbose=debug, **(context or {}))
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            failure = "out of memory" if isinstance(exc, MemoryError) else str(exc)
        if failure is not None:  # out of the except block: the half-built Llama is gone
            import gc

            gc.collect()  # and its memory is free again for reporting the error
            self._hold.release()
            raise ModelError(
                f"could not load {self.name}: {failure}",
                hint="try a smaller --ctx or a smaller quant; LLMRUN_DEBUG=1 shows llama.cpp's log",
            )
        self.projector: Any = None  # engine/vision.py's Projector, when there is an mmproj
        if mmproj is not None:
            from .vision import Projector

            try:
                self.projector = Projector(self, mmproj, threads=self.threads, debug=debug,
                                           use_gpu=self.gpu_layers != 0)
            except BaseException:
                self.llama.close()
                self._hold.release()
                raise
        self.load_s = time.perf_counter() - start
        self.chat_format = chat_format
        self.chat_template = chat_template  # imported with the model: over the GGUF's
        self._template: tuple[str, str] | None = None
        self._pieces_cache: dict[int, bytes] = {}  # token -> its bytes (_piece)

    def close(self) -> None:
        """Free llama.cpp's memory now and let `llmrun rm` have the files."""
        self._closing = True
        if self._pieces_thread is not None:
            self._pieces_thread.join()
        if self.__dict__.get("projector") is not None:
            self.projector.close()  # before the model it was loaded against
            self.projector = None
        llama = self.__dict__.pop("llama", None)
        if llama is not None:
            llama.close()
        self._hold.release()

    # ---- chat formatting -------------------------------------------------------------
    @property
    def template(self) -> tuple[str, str]:
        """(template text, where it came from); raises TemplateError when there is none."""
        if self._template is None:
            self._template = (self.chat_template, "the template imported with the model") \
                if self.chat_template else templates.resolve_template(self.info.chat_template,
                                                                      self.chat_format)
        return self._template

    def format_chat(self, messages: list[dict[str, Any]], *,
                    tools: list[dict[str, Any]] | None = None,
                    variables: dict[str, Any] | None = None) -> str:
        """The prompt for ``messages`` (already as templates expect them:
        formats.messages.for_template), with the ``tools`` offered and template ``variables``
        such as ``enable_thinking``."""
        text, source = self.template
        return templates.render(text, messages, bos_token=self.info.bos_token or "",
                                eos_token=self.info.eos_token or "", source=source,
                                tools=tools or None, variables=variables)

    def template_text(self) -> str | None:
        """The chat template in use; None when there is none."""
        from ..errors import TemplateError

        try:
            return self.template[0]
        except TemplateError:
            return None

    def chat_stops(self) -> list[str]:
        return templates.stop_strings(self.template[0], self.info.eos_token or "")

    # ---- tokens ----------------------------------------------------------------------
    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        data = text.encode("utf-8", "replace")
        bos = self.info.bos_token
        if templated:  # the template writes BOS itself when the model wants one
            add_bos = not (bos and text.startswith(bos))
            pieces = self._pieces
            if pieces is not None:
                return pieces(text, add_bos)
            tokens = self.llama.tokenize(data, add_bos=add_bos, special=True)
        else:
            tokens = self.llama.tokenize(data, add_bos=True, special=False)
        return list(tokens)

    def remember_prompt_pieces(self) -> None:
        """Tokenize chat prompts piece by piece from now on, remembering each piece's tokens,
        so that a turn tokenizes only its new text (prompt_pieces.py). Chat and serve call this;
        a background thread reads the vocabulary's special tokens first (~0.25 s for 262k),
        and until it is done, or if the template cannot be cut, prompts are tokenized whole."""
        if self._pieces_thread is None:
            self._pieces_thread = threading.Thread(target=self._build_pieces, daemon=True,
                                                   name="llmrun-prompt-pieces")
            self._pieces_thread.start()

    def wait_prompt_pieces(self) -> prompt_pieces.PieceTokenizer | None:
        """Wait for remember_prompt_pieces()' thread: the piece tokenizer in use, if any."""
        if self._pieces_thread is not None:
            self._pieces_thread.join()
        return self._pieces

    def _build_pieces(self) -> None:
        import llama_cpp

        try:
            llama = self.llama
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            if llama_cpp.llama_vocab_get_add_eos(vocab) or llama_cpp.llama_vocab_get_add_sep(
                    vocab):  # the tokenizer appends tokens at the end: pieces would repeat them
                return
            special = (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                       | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)  # what llama.cpp cuts text at
            specials: dict[int, tuple[str, bool]] = {}
            for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
                if self._closing:
                    return
                attr = llama_cpp.llama_vocab_get_attr(vocab, token)
                if attr & special:
                    text = llama.detokenize([token], special=True).decode("utf-8", "replace")
                    specials[token] = (text, bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP))
            probe = self.format_chat(prompt_pieces.PROBE)

            def whole(text: str, add_bos: bool) -> list[int]:
                return list(llama.tokenize(text.encode("utf-8", "replace"), add_bos=add_bos,
                                           special=True))

            self._pieces = prompt_pieces.build(whole, specials, probe)
            log.debug("chat prompts tokenized %s", "in pieces" if self._pieces else "whole")
        except Exception as exc:  # an optimisation only: prompts are tokenized whole
            log.debug("chat prompts tokenized whole: %s", exc)

    @property
    def has_swa(self) -> bool:
        """Whether some layers attend through a sliding window (Gemma 2 and 3, gpt-oss)."""
        import llama_cpp

        return int(llama_cpp.llama_model_n_swa(self.llama.model)) > 0

    def can_keep(self, keep: int, ctx: Any = None, seq: int = 0) -> bool:
        """Whether the cache can be cut back to its first ``keep`` tokens and go on from
        there. A sliding-window cache (Gemma 2 and 3, gpt-oss, ...) has dropped what fell out
        of its window: cut back past that, it would attend to cells that are gone and write
        wrong text, not just slightly different numbers. llama-server's rule: the oldest
        position still held must be within the window of the kept end."""
        import llama_cpp

        n_swa = int(llama_cpp.llama_model_n_swa(self.llama.model))
        if n_swa <= 0:
            return True
        memory = llama_cpp.llama_get_memory(ctx if ctx is not None else self.llama.ctx)
        oldest = int(llama_cpp.llama_memory_seq_pos_min(memory, seq))
        return oldest < 0 or oldest <= max(0, keep - n_swa)

    @property
    def can_roll_back(self) -> bool:
        """Whether the cache can drop its tail and keep a prefix. Attention KV caches can;
        recurrent and hybrid models (Mamba, RWKV, Jamba, ...) cannot: llama-cpp-python then
        re-evaluates the whole prompt, so only a guess that extends the cache is worth it."""
        import llama_cpp

        model = self.llama.model
        return not (llama_cpp.llama_model_is_recurrent(model)
                    or llama_cpp.llama_model_is_hybrid(model))

    def prefill(self, tokens: list[int], cancelled: Callable[[], bool] | None = None,
                piece: int | None = None) -> int:
        """Evaluate ``tokens`` into the KV cache ahead of the next generate() whose prompt starts
        with them (llama-cpp-python reuses the longest cached prefix). Returns how many tokens
        were evaluated; 0 when they are already cached, or when the cache would have to drop a
        tail it cannot drop. The tokens go in decodes of ``piece`` (default: the batch size,
        as llama-cpp-python's own eval splits them); between decodes, once ``cancelled()`` is
        true, it stops, and the cache holds exactly the decodes done."""
        import llama_cpp

        llama = self.llama
        common = common_prefix(llama.input_ids[: llama.n_tokens], tokens)
        if common >= len(tokens) or len(tokens) >= self.n_ctx:
            return 0
        if cancelled is not None and cancelled():
            return 0
        if common < llama.n_tokens:  # drop the tail that does not match, or do nothing
            memory = llama_cpp.llama_get_memory(llama.ctx)
            if not self.can_roll_back or not self.can_keep(common):
                return 0
            if not llama_cpp.llama_memory_seq_rm(memory, -1, common, -1):
                return 0
            llama.n_tokens = common
        step = piece or llama.n_batch
        for start in range(common, len(tokens), step):
            if start > common and cancelled is not None and cancelled():
                break  # (never before the first decode: n_tokens and the logits must agree)
            llama.eval(tokens[start : start + step])
        # finish the work now, in this (background) thread, and book it in llama.cpp's perf
        # counters, which generate() resets: they count only what the prompt itself costs
        llama_cpp.llama_synchronize(llama.ctx)
        return int(llama.n_tokens) - common

    def cache_fields(self) -> dict[str, Any]:
        """What the KV state of a prompt depends on besides the model file: for the on-disk
        prefix cache's key (prefix_cache.cache_key)."""
        llama = self.llama
        return {"n_ctx": self.n_ctx, "gpu_layers": self.gpu_layers,
                "flash_attn": int(llama.context_params.flash_attn_type),
                "type_k": int(llama.context_params.type_k),
                "type_v": int(llama.context_params.type_v),
                "extra_bufts": self.native.config.extra_bufts,
                "build": native_check.fingerprint()}

    def prefix_state(self, n: int) -> bytes | None:
        """llama.cpp's state of the first ``n`` cached tokens (for the on-disk prefix cache,
        prefix_cache.py); the cache is cut to them. None when it does not hold them or cannot
        be cut (recurrent models)."""
        import ctypes

        import llama_cpp

        llama = self.llama
        if not 0 < n <= llama.n_tokens or not self.can_roll_back:
            return None
        if n < llama.n_tokens:
            if not self.can_keep(n) or not llama_cpp.llama_memory_seq_rm(
                    llama_cpp.llama_get_memory(llama.ctx), 0, n, -1):
                return None
            llama.n_tokens = n
            llama._requires_eval = True  # the logits are those of a later token
        size = llama_cpp.llama_state_seq_get_size(llama.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = llama_cpp.llama_state_seq_get_data(llama.ctx, buf, size, 0)
        return bytes(buf)[:got] if got else None

    def load_prefix_state(self, tokens: list[int], payload: bytes, keep: int) -> bool:
        """Put a saved prefix (``tokens`` and their state) in the cache and keep its first
        ``keep`` tokens; the next generate() evaluates only what follows. False, with the
        cache empty, when llama.cpp refuses the state."""
        import ctypes

        import llama_cpp

        llama = self.llama
        self.clear_cache()
        if not tokens or keep <= 0 or len(tokens) >= self.n_ctx:
            return False
        buf = (ctypes.c_uint8 * len(payload)).from_buffer_copy(payload)
        if llama_cpp.llama_state_seq_set_data(llama.ctx, buf, len(payload), 0) == 0:
            self.clear_cache()
            return False
        memory = llama_cpp.llama_get_memory(llama.ctx)
        if llama_cpp.llama_memory_seq_pos_max(memory, 0) != len(tokens) - 1:
            self.clear_cache()  # not the state of these tokens
            return False
        keep = min(keep, len(tokens))
        if keep < len(tokens) and not (self.can_keep(keep) and llama_cpp.llama_memory_seq_rm(
                memory, 0, keep, -1)):
            self.clear_cache()
            return False
        llama.input_ids[:keep] = tokens[:keep]
        llama.n_tokens = keep
        llama._requires_eval = True
        return True

    def clear_cache(self) -> None:
        """Empty the KV cache (the next prompt is evaluated from its first token)."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llama.ctx), True)
        self.llama.n_tokens = 0

    def bench_decode(self, tokens: list[int], step: int) -> float:
        """llama-bench's loop: from an empty cache, decode ``tokens`` ``step`` at a time (the
        batch size for prompt processing, 1 for generation) with llama_decode, nothing else;
        seconds until the last decode is done."""
        import llama_cpp

        self.clear_cache()
        llama = self.llama
        chunks = [tokens[i : i + step] for i in range(0, len(tokens), step)]
        arrays = [(llama_cpp.llama_token * len(c))(*c) for c in chunks]  # made before timing
        start = time.perf_counter()
        for i, (chunk, arr) in enumerate(zip(chunks, arrays, strict=True)):
            if llama_cpp.llama_decode(llama.ctx, llama_cpp.llama_batch_get_one(arr, len(chunk))):
                self.clear_cache()
                raise ModelError(f"llama_decode failed at token {i * step} of {len(tokens)}",
                                 hint="try a smaller -p or a larger --ctx")
        llama_cpp.llama_synchronize(llama.ctx)
        took = time.perf_counter() - start
        self.clear_cache()
        return took

    def check_fits(self, n_prompt: int) -> None:
        if n_prompt >= self.n_ctx:
            raise context_overflow(n_prompt, self.n_ctx, self.info.context_length)

    # ---- generation ------------------------------------------------------------------
    def generate(self, tokens: list[int], sampling: Sampling, result: Result | None = None,
                 cancel: Callable[[], bool] | None = None, *,
                 evaluate: Callable[[], None] | None = None) -> Iterator[str]:
        """Stream text pieces for a prompt given as tokens; fills ``result`` as it goes.
        ``cancel`` is polled after every sampled token; when it returns True generation stops
        (finish_reason "cancelled") before the next token is evaluated. ``evaluate`` puts the
        whole prompt in the cache first (images: engine/vision.py), timed as the prompt's."""
        import llama_cpp

        res = result if result is not None else Result()
        self.check_fits(len(tokens))
        res.prompt_tokens = len(tokens)
        res.load_s = self.load_s
        grammar = self._grammar(sampling)
        max_tokens = sampling.max_tokens
        if max_tokens is None or max_tokens <= 0 or len(tokens) + max_tokens > self.n_ctx:
            max_tokens = self.n_ctx - len(tokens)
        cached_whole = self._cached_whole(tokens)
        llama = self.llama
        if not cached_whole and llama.n_tokens:
            # llama-cpp-python reuses the longest cached prefix (minus one token when the
            # whole prompt is cached): not past what a sliding window has dropped
            keep = min(common_prefix(llama.input_ids[: llama.n_tokens], tokens),
                       len(tokens) - 1)
            if keep < llama.n_tokens and not self.can_keep(keep):
                self.clear_cache()
        if sampling.seed is not None:
            llama.set_seed(sampling.seed)
        else:  # as create_completion does: the next seed of the model's own sequence
            import random

            llama.set_seed(random.Random(llama._seed).randint(0, 2**32))
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        text = TextStream(sampling.stop)
        llama_cpp.llama_perf_context_reset(llama.ctx)
        start = time.perf_counter()
        if evaluate is not None:
            evaluate()
        first: float | None = None
        sampler: Any = None
        cancelled = False
        # llama-cpp-python's token generator (its prefix reuse, sampler chain and grammar),
        # with text made here: create_completion's streaming re-detokenizes a growing tail
        # while bytes are not yet valid UTF-8, O(N^2) for byte tokens (textstream.py)
        tokens_out = llama.generate(
            tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty, grammar=grammar)
        try:
            for token in tokens_out:
                if first is None:
                    first = time.perf_counter()
                    sampler = getattr(llama, "_sampler", None)  # this generation's
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    res.finish_reason = "stop"
                    break
                res.completion_tokens += 1
                piece = text.add(self._piece(token))
                if piece:
                    res.text += piece
                    yield piece
                if text.stopped:
                    res.finish_reason = "stop"
                    break
                if res.completion_tokens >= max_tokens:
                    res.finish_reason = "length"
                    break
                if cancel is not None and cancel():
                    cancelled = True
                    break
            if not cancelled:
                tail = text.flush()  # a character cut short, or text that was not a stop
                if tail:
                    res.text += tail
                    yield tail
                if text.stopped:
                    res.finish_reason = "stop"
        finally:
            tokens_out.close()
            self._free_sampler(sampler)
            perf = llama_cpp.llama_perf_context(llama.ctx)
            # llama.cpp books a one-token decode as generation and reports n_p_eval as at
            # least 1: with no prompt decode timed, it was 0 tokens or 1
            res.prompt_evaluated = int(perf.n_p_eval) if perf.t_p_eval_ms > 0 else (
                0 if cached_whole else 1)
            if cancelled:
                res.finish_reason = "cancelled"
            res.prompt_s = perf.t_p_eval_ms / 1000 if perf.n_p_eval else (
                (first or time.perf_counter()) - start)
            res.gen_s = perf.t_eval_ms / 1000
        if res.finish_reason is None:
            res.finish_reason = "length"

    def _piece(self, token: int) -> bytes:
        """The bytes of one token, as llama.cpp writes it in a stream (control tokens are
        empty; gpt-oss's harmony markers are user-defined in llama.cpp, so they show)."""
        found = self._pieces_cache.get(token)
        if found is None:
            import ctypes

            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
                if n >= 0:
                    found = buf.raw[:n]
                    break
                size = -n
            self._pieces_cache[token] = found
        return found

    def _cached_whole(self, tokens: list[int]) -> bool:
        """Whether llama-cpp-python will sample the first token without any decode: the cache
        holds exactly ``tokens`` and the logits are those of its last one."""
        llama = self.llama
        return (llama.n_tokens == len(tokens) and not getattr(llama, "_requires_eval", True)
                and list(llama.input_ids[: llama.n_tokens]) == tokens)

    def _free_sampler(self, sampler: Any) -> None:
        """Free this generation's sampler chain now. llama-cpp-python keeps it in
        ``Llama._sampler`` until the next generation replaces it, and its LlamaSampler sits in
        a reference cycle (an ExitStack callback that closes over it), so the native chain,
        with its vocabulary-sized candidate buffer (3 MiB for a 262k vocabulary), waited for
        Python's cyclic GC: a busy server's model process swung by ~75 MiB between
        collections, in a pattern that shifted with any unrelated change to what is imported.
        Only the chain this generation made is closed, never a later one's."""
        llama: Any = self.llama
        if sampler is None or getattr(llama, "_sampler", None) is not sampler:
            return
        llama._sampler.close()
        llama._sampler = None

    def _grammar(self, sampling: Sampling) -> Any:
        if sampling.tool_grammar is not None:
            return self._tool_grammar(sampling.tool_grammar)
        if sampling.json_schema is None and not sampling.json_any:
            return None
        from llama_cpp import llama_grammar

        if sampling.json_trace is not None:
            return self._json_after_trace(sampling.json_schema or {"type": "object"},
                                          sampling.json_trace)
        try:
            if sampling.json_schema is not None:
                return llama_grammar.LlamaGrammar.from_json_schema(
                    json.dumps(sampling.json_schema), verbose=False)
            return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
        except Exception as exc:
            raise UsageError(f"cannot build a grammar from that JSON schema: {exc}") from None

    def _json_after_trace(self, schema: dict[str, Any], trace: str) -> Any:
        """A JSON answer that a reasoning trace may precede (formats.grammar)."""
        from llama_cpp import llama_grammar

        from ..formats.grammar import Converter, json_after_trace

        converter: Converter = llama_grammar.SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        try:
            answer = converter.visit(converter.resolve_refs(schema, "answer"), "answer")
            text = json_after_trace(answer, trace) + converter.format_grammar() + "\n"
        except Exception as exc:
            raise UsageError(f"cannot build a grammar from that JSON schema: {exc}") from None
        self._check_grammar(text)
        return llama_grammar.LlamaGrammar.from_string(text, verbose=False)

    def _tool_grammar(self, spec: dict[str, Any]) -> Any:
        """The grammar of formats/grammar.py, its JSON-schema rules made by llama-cpp-python's
        own converter."""
        from llama_cpp import llama_grammar

        from ..formats.grammar import ToolGrammar, build

        converter = llama_grammar.SchemaConverter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        try:
            text = build(ToolGrammar.from_dict(spec), converter)
        except Exception as exc:
            raise UsageError(f"cannot build a grammar from those tools: {exc}") from None
        log.debug("tool grammar:\n%s", text)
        self._check_grammar(text)
        return llama_grammar.LlamaGrammar.from_string(text, verbose=False)

    def _check_grammar(self, text: str) -> None:
        """llama-cpp-python adds the grammar sampler without checking that llama.cpp could
        parse the grammar (a NULL sampler in the chain crashes the process): parse it here
        first."""
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llama._model.vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise UsageError("llama.cpp cannot parse the grammar made for those tools",
                             hint="LLMRUN_DEBUG=1 logs the grammar")
        llama_cpp.llama_sampler_free(sampler)
