"""Continuous batching: several sequences of one model decoded together in one llama.cpp
context (`serve --parallel N`).

Each step builds one llama_batch: the last sampled token of every sequence that is
generating, then prompt tokens of sequences still being read, in chunks, up to the batch
size, so a long prompt never stalls the streams already running. A prompt that ends in a
step has that step to itself (the streams wait it out, never two steps in a row): a request
joining running streams gets its first token after its own tokens' time, not theirs too. A
request joins at the next step and a finished or cancelled one frees its slot at once. Every
sequence samples with its own chain (its temperature, seed, penalties and grammar), built
the way llama-cpp-python's ``Llama._init_sampler`` builds it, so that a greedy answer is the
one the request would get alone (up to llama.cpp's batch-size numerics,
docs/benchmarks.md).

KV cache: per-sequence (``kv_unified`` off), each slot with the context a single request
gets (``Model.n_ctx``), so a request that fits alone fits here and one that does not is
refused exactly as before. A slot keeps its tokens after a request: a conversation that goes
on starts from the cache of the slot that holds its prefix (when that slot is free) and
evaluates only what is new.

Slots in one run: with per-sequence caches llama.cpp decodes a batch in one pass only over
sequence ids that follow each other (``split_equal(sequential)`` in llama-batch.cpp, as
llama-kv-cache.cpp and llama-kv-cache-iswa.cpp call it for per-sequence caches: each ubatch
takes consecutive ids). Busy slots 0, 2, 4 and 6 cost four passes a step, 25% fewer
tokens/s for Gemma 3 270M on two cores than slots 0-3; each pass reads all the weights, which
is most of a step's time on a GPU (not measured here). So a request takes a slot that keeps
the busy ones consecutive (a copy of the cache holding its prefix goes with it), and when
one in the middle ends, the last moves into its place. A copy is of the stream's whole cache
(llama.cpp's cross-stream ``seq_cp``), done before the next decode: a one-time cost against
a pass every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..datatypes import Result, Sampling
from ..prefix_cache import common_prefix
from .textstream import TextStream

if TYPE_CHECKING:
    from .model import Model

Emit = Callable[[str, dict[str, Any]], None]  # (request id, {"piece": ..} or {"done": ..})
PREFILL_CHUNK = 64  # prompt tokens per step while other requests stream
COPY_MIN = 16  # cached prompt tokens worth a copy of a stream's cache rather than evaluating


@dataclass(eq=False)  # slots are compared by identity
class _Seq:
    seq: int  # llama.cpp sequence id = slot number
    cached: list[int] = field(default_factory=list)  # tokens whose KV this slot holds
    rid: str | None = None  # the request using it
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    last: int | None = None  # the sampled token to evaluate next
    sampler: Any = None
    greedy: bool = False  # argmax of the logits: what the sampler would pick, without its copy
    text: TextStream | None = None
    result: Result = field(default_factory=Result)
    max_tokens: int = 0
    started: float = 0.0
    first: float | None = None
    prompt_done: float | None = None
    cancel: bool = False
    used: float = 0.0  # when its last request ended (the least recently used goes first)


class BatchEngine:
    """``n_seq`` sequences of ``model`` in one context of their own."""

    def __init__(self, model: Model, n_seq: int, *, n_batch: int = 512) -> None:
        import llama_cpp

        self.model, self.n_seq, self.n_batch = model, n_seq, n_batch
        self.n_ctx = model.n_ctx  # per sequence
        if not model.gpu_layers:  # the KV cache of every sequence lives in RAM
            from .. import memory
            from ..errors import ModelError
            from ..units import human_size

            need = memory.kv_cache_bytes(model.info, self.n_ctx * n_seq)
            available = memory.available_memory()
            if available is not None and need > available:
                raise ModelError(
                    f"{self._sequences(n_seq)} of {self.n_ctx} tokens "
                    f"{'need' if n_seq > 1 else 'needs'} {human_size(need)} of KV cache; "
                    f"{human_size(available)} of memory is available", hint=self._hint(n_seq))
        own = model.llama.context_params  # threads, flash attention, offload: the same
        params = type(own).from_buffer_copy(own)
        params.n_ctx = self.n_ctx * n_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(model.llama.model, params)
        if not self.ctx:
            from ..errors import ModelError

            raise ModelError(f"could not make a context for {self._sequences(n_seq)}",
                             hint=self._hint(n_seq))
        self.vocab = llama_cpp.llama_model_get_vocab(model.llama.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.seqs = [_Seq(i) for i in range(n_seq)]
        # keep the busy sequences' ids consecutive, moving caches between streams: see the
        # module's docstring (a recurrent model's state is not moved)
        self.compact = model.can_roll_back
        self._prompts_went_first = False  # the last step left the streams waiting

    @staticmethod
    def _sequences(n_seq: int) -> str:
        return f"{n_seq} parallel sequences" if n_seq > 1 else "one sequence"

    @staticmethod
    def _hint(n_seq: int) -> str:
        """(one sequence: a smaller --parallel is no way out)"""
        return "try a smaller --parallel or --ctx" if n_seq > 1 else "try a smaller --ctx"

    def close(self) -> None:
        import llama_cpp

        for s in self.seqs:
            self._free_sampler(s)
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # ---- requests --------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return any(s.rid is not None for s in self.seqs)

    def start(self, rid: str, tokens: list[int], sampling: Sampling) -> None:
        """A request joins at the next step, on the free slot holding its longest prefix."""
        import llama_cpp

        self.model.check_fits(len(tokens))
        free = [s for s in self.seqs if s.rid is None]
        if not free:
            raise RuntimeError("no free sequence")  # the server never starts more than n_seq
        # first what can fail (a grammar llama.cpp rejects): a slot taken without a sampler
        # would break every later step of every stream
        sampler = self._sampler(sampling)
        seq = self._place(max(free, key=lambda s: self._fit(s, tokens)), tokens)
        common = min(common_prefix(seq.cached, tokens), len(tokens) - 1)  # the last is evaluated
        memory = llama_cpp.llama_get_memory(self.ctx)
        if not self.model.can_keep(common, self.ctx, seq.seq) or (
                not llama_cpp.llama_memory_seq_rm(memory, seq.seq, common, -1)):
            llama_cpp.llama_memory_seq_rm(memory, seq.seq, -1, -1)
            common = 0
        seq.cached = tokens[:common]
        seq.pending = tokens[common:]
        seq.rid, seq.last, seq.cancel = rid, None, False
        seq.sampler = sampler
        seq.greedy = (sampling.temperature == 0.0 and sampling.repeat_penalty == 1.0
                      and sampling.tool_grammar is None and sampling.json_schema is None
                      and not sampling.json_any)  # the chain: no-op penalties, greedy
        seq.text = TextStream(sampling.stop)
        seq.result = Result(prompt_tokens=len(tokens), load_s=self.model.load_s,
                            prompt_evaluated=len(seq.pending))
        limit = sampling.max_tokens
        if limit is None or limit <= 0 or len(tokens) + limit > self.n_ctx:
            limit = self.n_ctx - len(tokens)
        seq.max_tokens = limit
        seq.started, seq.first, seq.prompt_done = time.perf_counter(), None, None

    def _place(self, best: _Seq, tokens: list[int]) -> _Seq:
        """The free slot a request gets, ``best`` holding its longest cached prefix: best
        itself when that keeps the busy slots one run of consecutive ids, else a slot that
        does (a hole in the run, or one beside it), given a copy of best's cache when its
        prefix is longer by COPY_MIN tokens or more. The cache that slot held moves to the
        least recently used free slot first when it is the more recent of the two."""
        busy = [s.seq for s in self.seqs if s.rid is not None]
        if not busy or not self.compact:
            return best
        lo, hi = min(busy), max(busy)
        spots = [s for s in self.seqs[lo:hi + 1] if s.rid is None] or [
            self.seqs[i] for i in (hi + 1, lo - 1) if 0 <= i < self.n_seq]
        if best in spots:
            return best
        spot = max(spots, key=lambda s: self._fit(s, tokens))
        spare = min((s for s in self.seqs if s.rid is None and s not in spots and s is not best),
                    key=lambda s: s.used, default=None)
        if spare is not None and len(spot.cached) >= COPY_MIN and spare.used < spot.used:
            self._copy(spot, spare)
            spare.used = spot.used
        if common_prefix(best.cached, tokens) - common_prefix(spot.cached, tokens) >= COPY_MIN:
            self._copy(best, spot)
        return spot

    @staticmethod
    def _fit(s: _Seq, tokens: list[int]) -> tuple[int, float, int]:
        """How well free slot ``s`` suits a request for ``tokens``: the longest cached
        prefix, when it is worth what the slot would lose (COPY_MIN tokens, or half of what it
        holds: a BOS or a first word in common with another conversation is not), then the
        least recently used (another conversation may come back), then the lowest id."""
        common = common_prefix(s.cached, tokens)
        useful = common >= COPY_MIN or 2 * common >= len(s.cached)
        return (common if useful else 0, -s.used, -s.seq)

    def _compact(self) -> None:
        """Move the highest busy sequence into the lowest hole until the busy ones are one
        run of consecutive ids again (a request in the middle ended)."""
        while self.compact:
            busy = sorted(s.seq for s in self.seqs if s.rid is not None)
            if not busy or busy[-1] - busy[0] + 1 == len(busy):
                return
            hole = next(self.seqs[i] for i in range(busy[0], busy[-1])
                        if self.seqs[i].rid is None)
            moving = self.seqs[busy[-1]]
            self._copy(moving, hole)
            # the request goes on in the hole's stream, which now holds its cache; the slot
            # it leaves keeps the same tokens for a later request that starts with them
            i, j = moving.seq, hole.seq
            self.seqs[i], self.seqs[j] = hole, moving
            moving.seq, hole.seq = j, i
            hole.used = time.perf_counter()

    def _copy(self, source: _Seq, dest: _Seq) -> None:
        """Give ``dest``'s stream a copy of ``source``'s cache (llama.cpp copies the
        stream's whole buffer before the next decode: about the KV cache of --ctx tokens)."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_seq_cp(memory, source.seq, dest.seq, -1, -1)
        dest.cached = list(source.cached)

    def cancel(self, rid: str) -> None:
        for s in self.seqs:
            if s.rid == rid:
                s.cancel = True

    # ---- one step --------------------------------------------------------------------
    def step(self, emit: Emit) -> None:
        """Evaluate one batch and sample every sequence that has logits in it."""
        import llama_cpp

        for s in self.seqs:  # cancelled ones end before any work is done for them
            if s.rid is not None and s.cancel:
                self._finish(s, "cancelled", emit)
        self._compact()
        batch, n = self.batch, 0
        sample_at: list[tuple[_Seq, int]] = []
        streams = [s for s in self.seqs if s.rid is not None and not s.pending
                   and s.last is not None]
        readers = [s for s in self.seqs if s.rid is not None and s.pending]
        # prompts take up to the batch size when nothing streams, else a chunk per step, so
        # that a long prompt delays each running stream by one chunk's time at most
        budget = self.n_batch if not streams else min(self.n_batch, len(streams) + PREFILL_CHUNK)
        # a prompt that ends in this step gets the step to itself: its first token comes
        # after its own tokens' time instead of theirs plus a token of every stream (10 ms
        # against 32 with three streams on two cores). The streams wait that one step, and
        # never two in a row.
        prompts_first = (bool(streams) and not self._prompts_went_first
                         and any(len(s.pending) <= budget for s in readers))
        if not prompts_first:
            for s in streams:  # one token each
                assert s.last is not None
                self._put(n, s.last, len(s.cached), s.seq, True)
                s.cached.append(s.last)
                sample_at.append((s, n))
                n += 1
        while readers and n < budget:  # then prompts, in turns
            share = max(1, (budget - n) // len(readers))
            for s in list(readers):
                take = s.pending[:min(share, budget - n)]
                for i, token in enumerate(take):
                    last = i == len(take) - 1 and len(take) == len(s.pending)
                    self._put(n, token, len(s.cached), s.seq, last)
                    s.cached.append(token)
                    if last:
                        sample_at.append((s, n))
                    n += 1
                s.pending = s.pending[len(take):]
                if not s.pending:
                    readers.remove(s)
                if n >= budget:
                    break
        self._prompts_went_first = prompts_first
        if n == 0:
            return
        batch.n_tokens = n
        code = llama_cpp.llama_decode(self.ctx, batch)
        if code != 0:
            from ..errors import ModelError

            error = ModelError(f"llama_decode failed ({code}) with {n} tokens in the batch")
            for s in self.seqs:
                if s.rid is not None:
                    emit(s.rid, {"error": error.message})
                    self._release(s, keep=False)
            return
        now = time.perf_counter()
        for s, index in sample_at:
            if s.prompt_done is None:
                s.prompt_done = now
            if s.greedy:  # llama.cpp's greedy sampler also takes the first highest logit
                token = int(self._logits(index).argmax())
            else:
                token = int(llama_cpp.llama_sampler_sample(s.sampler.sampler, self.ctx, index))
            if s.first is None:
                s.first = now
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                self._finish(s, "stop", emit)
                continue
            s.result.completion_tokens += 1
            assert s.text is not None
            piece = s.text.add(self.model._piece(token))
            if piece:
                s.result.text += piece
                emit(s.rid or "", {"piece": piece})
            if s.text.stopped:
                self._finish(s, "stop", emit)
            elif s.result.completion_tokens >= s.max_tokens:
                self._finish(s, "length", emit)
            else:
                s.last = token

    def _logits(self, index: int) -> Any:
        """The logits of batch entry ``index``, as a numpy view (no copy). The sampler chain
        copies all of them into a candidates array first: about 0.2 ms a token for a 262k
        vocabulary, 2% of a token's time for Gemma 3 270M on two cores."""
        import ctypes

        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,))

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _finish(self, s: _Seq, reason: str, emit: Emit) -> None:
        if reason != "cancelled" and s.text is not None:
            tail = s.text.flush()
            if tail:
                s.result.text += tail
                emit(s.rid or "", {"piece": tail})
            if s.text.stopped:
                reason = "stop"
        r = s.result
        r.finish_reason = reason
        end = time.perf_counter()
        r.prompt_s = ((s.prompt_done or end) - s.started)
        r.gen_s = end - (s.prompt_done or end)
        emit(s.rid or "", {"done": {k: getattr(r, k) for k in (
            "text", "finish_reason", "prompt_tokens", "completion_tokens", "load_s", "prompt_s",
            "gen_s", "prompt_evaluated")}})
        self._release(s, keep=True)

    def _release(self, s: _Seq, *, keep: bool) -> None:
        """Free the slot; with ``keep`` its KV (prompt and answer) stays for the next request
        that starts the same way."""
        if not keep:
            import llama_cpp

            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), s.seq, -1, -1)
            s.cached = []
        s.rid, s.pending, s.last, s.text = None, [], None, None
        s.used = time.perf_counter()
        self._free_sampler(s)

    def _free_sampler(self, s: _Seq) -> None:
        if s.sampler is not None:
            s.sampler.close()
            s.sampler = None

    def _sampler(self, sampling: Sampling) -> Any:
        """The chain llama-cpp-python's Llama._init_sampler makes for these settings."""
        import random

        from llama_cpp import _internals

        llama = self.model.llama
        seed = sampling.seed if sampling.seed is not None else random.randint(0, 2**32 - 1)
        chain: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
        chain.add_penalties(n_vocab=llama._n_vocab, penalty_last_n=llama.last_n_tokens_size,
                            penalty_repeat=sampling.repeat_penalty, penalty_freq=0.0,
                            penalty_present=0.0)
        grammar = self.model._grammar(sampling)
        if grammar is not None:
            chain.add_grammar(llama._model, grammar)
        if sampling.temperature == 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(sampling.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(sampling.top_p, 1)
            chain.add_min_p(sampling.min_p, 1)
            chain.add_temp(sampling.temperature)
            chain.add_dist(seed)
        return chain

