"""The embedding path: a model loaded by engine.Model (the same checks, engine self-test and
native guards as generation) with a llama.cpp context in embedding mode, and many texts turned
into vectors in few llama_decode calls: short texts are packed into one batch, each its own
sequence, and llama.cpp pools each sequence (llama_get_embeddings_seq), as llama.cpp's
examples/embedding does.

The context holds the longest input: n_ctx = n_batch = n_ubatch, because a sequence must sit in
one micro-batch to be pooled (and for non-causal models to attend to all of itself). Flash
attention is off unless asked for (LLMRUN_FLASH_ATTN): with it, a text's vector depended more on
which other texts shared its batch (Gemma 3 270M, 1 - cosine against the text embedded alone:
median 3e-4, up to 1.4e-3; without it median 1e-6, up to 4e-4; docs/scripting.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import gguf_file
from ..datatypes import LoadOptions
from ..embeddings import PACK, POOLING_CODES, Embedded, EmbedFacts, choose_pooling, default_ctx
from ..errors import ContextOverflow, ModelError
from .model import Model


class Embedder:
    def __init__(self, path: Path, opts: LoadOptions, *, facts: EmbedFacts | None = None,
                 debug: bool = False, name: str | None = None) -> None:
        name = name or path.name
        self.name = name
        info = gguf_file.read_info(path, hint=f"run `llmrun pull --force {name}`"
                                   if name != path.name else "")  # as Model says it
        self.pooling, self.note = choose_pooling(info, facts or EmbedFacts(), name)
        trained = info.context_length
        want = opts.n_ctx or default_ctx(trained, info.array_lengths.get("tokenizer.ggml.tokens"))
        n_ctx = min(want, trained) if trained else want
        self.ctx_capped = bool(opts.n_ctx and trained and opts.n_ctx > trained)
        self.trained = trained
        load = replace(opts, n_ctx=n_ctx, n_batch=n_ctx, ctx_default=None,
                       flash_attn=False if opts.flash_attn is None else opts.flash_attn)
        self.model = Model(path, load, debug=debug, name=name, context={
            "embedding": True, "pooling_type": POOLING_CODES[self.pooling], "n_ubatch": n_ctx})
        self.notice, self.memory_warning = self.model.notice, self.model.memory_warning
        self.offload_supported = self.model.offload_supported
        self.gpu_layers, self.threads = self.model.gpu_layers, self.model.threads
        import llama_cpp

        llama = self.model.llama
        if llama_cpp.llama_model_has_encoder(llama.model) and llama_cpp.llama_model_has_decoder(
                llama.model):
            self.model.close()
            raise ModelError(f"{name} cannot embed: it is an encoder-decoder model, and llama.cpp "
                             "computes embeddings only with encoder-only or decoder-only models")
        self.n_ctx = int(llama_cpp.llama_n_ctx(llama.ctx))
        self.dim = int(llama_cpp.llama_model_n_embd(llama.model))
        self.n_seq_max = max(1, int(llama_cpp.llama_n_seq_max(llama.ctx)))
        self.pack = min(self.n_ctx, PACK)
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        # a tokenizer that appends EOS or SEP: a truncated input keeps it as its last token
        self._adds_end = bool(llama_cpp.llama_vocab_get_add_eos(vocab)
                              or llama_cpp.llama_vocab_get_add_sep(vocab))
        self._batch: Any = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        self.load_s = self.model.load_s

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(batch)
        self.model.close()

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for ``text``, with its BOS/CLS and EOS/SEP as its tokenizer adds
        them; text that looks like a special token is text."""
        data = text.encode("utf-8", "replace")
        return list(self.model.llama.tokenize(data, add_bos=True, special=False))

    def embed(self, texts: list[str], *, truncate: bool = False) -> Embedded:
        """Pooled vectors for ``texts``, in order. An input longer than the context is an
        error (ContextOverflow), or with ``truncate`` cut to it."""
        seqs = [self.tokenize(t) for t in texts]
        for i, tokens in enumerate(seqs):
            if len(tokens) > self.n_ctx:
                if not truncate:
                    raise self._too_long(i, len(tokens), len(texts))
                cut = tokens[: self.n_ctx]
                if self._adds_end:
                    cut[-1] = tokens[-1]
                seqs[i] = cut
        return Embedded(self.embed_tokens(seqs), sum(len(s) for s in seqs))

    def _too_long(self, index: int, n: int, count: int) -> ContextOverflow:
        which = f"input {index}" if count > 1 else "the input"
        trained = f" (this model was trained on {self.trained})" if self.trained else ""
        return ContextOverflow(f"{which} is {n} tokens; the embedding context holds {self.n_ctx}",
                               hint=f"shorten it, raise --ctx{trained}, or pass --truncate"
                               if not self.trained or self.n_ctx < self.trained
                               else "shorten it, or pass --truncate")

    def embed_tokens(self, seqs: list[list[int]]) -> np.ndarray:
        """One pooled vector per token list (each at most n_ctx tokens, at least one), their
        lists packed into batches of up to ``pack`` tokens and ``n_seq_max`` sequences."""
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        first = used = 0
        for i, tokens in enumerate(seqs):
            if not tokens or len(tokens) > self.n_ctx:
                raise ModelError(f"cannot embed a sequence of {len(tokens)} tokens")
            if i > first and (used + len(tokens) > self.pack or i - first >= self.n_seq_max):
                self._decode(seqs[first:i], out[first:i])
                first, used = i, 0
            used += len(tokens)
        if seqs:
            self._decode(seqs[first:], out[first:])
        return out

    def _decode(self, seqs: list[list[int]], out: np.ndarray) -> None:
        import llama_cpp

        batch, ctx = self._batch, self.model.llama.ctx
        n = 0
        for seq, tokens in enumerate(seqs):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = 1
                n += 1
        batch.n_tokens = n
        memory = llama_cpp.llama_get_memory(ctx)
        if memory:  # encoder-only models (BERT) have none
            llama_cpp.llama_memory_clear(memory, True)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise ModelError(f"llama.cpp could not embed with {self.name} (llama_decode returned "
                             f"{rc})", hint="LLMRUN_DEBUG=1 shows llama.cpp's log")
        for seq in range(len(seqs)):
            ptr = llama_cpp.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                raise ModelError(f"{self.name} gave no embedding: llama.cpp pooled nothing "
                                 f"(pooling {self.pooling})")
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.dim,))
