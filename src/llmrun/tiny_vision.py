"""A tiny random-weight vision model that llmrun writes itself: a Gemma 3 text model (two layers
of 64, a 361-token vocabulary with Gemma's special tokens and byte fallback, Gemma 3's own chat
template) and a matching ``mmproj`` file (a two-layer SigLIP encoder with Gemma 3's projector),
which llama.cpp's mtmd loads. It proves the image path (decode, encode, image tokens in the
context, generation after them) where no real vision model can be downloaded; its answers mean
nothing.

The mmproj follows the keys and tensor names of llama.cpp's tools/mtmd/clip-impl.h and clip.cpp
(projector type ``gemma3``: SigLIP layers, average pooling by ``scale_factor``, an RMS norm and
one projection matrix to the text model's width). :func:`write_mmproj` also fits a real text model
(its width as ``text_embd``: 640 for Gemma 3 270M).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

# Gemma 3's chat template (google/gemma-3-4b-it, tokenizer_config.json), image parts included.
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n")

# Gemma's specials in Gemma's order (pad 0, eos 1, bos 2, unk 3); control tokens, except the
# image delimiters, which Gemma's vocabulary marks user-defined (mtmd writes them as text).
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
USER_DEFINED = ("<start_of_image>", "<end_of_image>", "\n")
PAD, EOS, BOS, UNK = 0, 1, 2, 3
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6


@dataclass(frozen=True)
class VisionShape:
    """Dimensions of the pair. An image becomes ``image_tokens`` embeddings: the encoder sees
    (image_size / patch_size)² patches and pools them ``merge`` × ``merge``."""

    text_embd: int = 64
    text_ff: int = 128
    text_layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 32
    ctx: int = 1024
    vision_embd: int = 32
    vision_ff: int = 48  # unlike vision_embd: clip.cpp swaps up/down when they look alike
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 32
    patch_size: int = 4
    merge: int = 2

    @property
    def image_tokens(self) -> int:
        side = self.image_size // self.patch_size // self.merge
        return side * side


TINY = VisionShape()
MODEL_FILE = "tiny-vision-F32.gguf"
MMPROJ_FILE = "mmproj-tiny-vision-F32.gguf"


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types): the specials, 256 byte tokens, '▁' and printable ASCII."""
    tokens = list(SPECIALS) + list(USER_DEFINED)
    types = [_CONTROL] * len(SPECIALS) + [_USER_DEFINED] * len(USER_DEFINED)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    scores = [-1000.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def _random(rng: np.random.Generator, *shape: int, scale: float = 0.06) -> np.ndarray:
    return ((rng.random(shape, dtype=np.float32) - 0.5) * scale).astype(np.float32)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_text_model(path: Path, shape: VisionShape = TINY, seed: int = 0) -> None:
    """A Gemma 3 text model (llama.cpp's ``gemma3`` architecture) with Gemma's tokenizer layout
    and chat template; output tied to the token embeddings, as in Gemma."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("llmrun tiny vision (random weights)")
    w.add_context_length(shape.ctx)
    w.add_embedding_length(shape.text_embd)
    w.add_block_count(shape.text_layers)
    w.add_feed_forward_length(shape.text_ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(shape.ctx)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(UNK)
    w.add_pad_token_id(PAD)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)
    embd, q, kv = shape.text_embd, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    ones = np.ones(embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", _random(rng, len(tokens), embd))
    w.add_tensor("output_norm.weight", ones)
    for i in range(shape.text_layers):
        p = f"blk.{i}."
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            w.add_tensor(p + norm + ".weight", ones)
        w.add_tensor(p + "attn_q_norm.weight", np.ones(shape.head_dim, dtype=np.float32))
        w.add_tensor(p + "attn_k_norm.weight", np.ones(shape.head_dim, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", _random(rng, q, embd))
        w.add_tensor(p + "attn_k.weight", _random(rng, kv, embd))
        w.add_tensor(p + "attn_v.weight", _random(rng, kv, embd))
        w.add_tensor(p + "attn_output.weight", _random(rng, embd, q))
        w.add_tensor(p + "ffn_gate.weight", _random(rng, shape.text_ff, embd))
        w.add_tensor(p + "ffn_up.weight", _random(rng, shape.text_ff, embd))
        w.add_tensor(p + "ffn_down.weight", _random(rng, embd, shape.text_ff))
    _finish(w)


def write_mmproj(path: Path, text_embd: int, shape: VisionShape = TINY, seed: int = 1) -> None:
    """A SigLIP encoder with Gemma 3's projector whose output is ``text_embd`` wide (numpy shapes
    are ggml's reversed: a ggml [cols, rows] matrix is written as (rows, cols))."""
    rng = np.random.default_rng(seed)
    v, ff = shape.vision_embd, shape.vision_ff
    n_pos = (shape.image_size // shape.patch_size) ** 2
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("llmrun tiny vision projector (random weights)")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", shape.image_size)
    w.add_uint32("clip.vision.patch_size", shape.patch_size)
    w.add_uint32("clip.vision.embedding_length", v)
    w.add_uint32("clip.vision.feed_forward_length", ff)
    w.add_uint32("clip.vision.block_count", shape.vision_layers)
    w.add_uint32("clip.vision.projection_dim", text_embd)
    w.add_uint32("clip.vision.attention.head_count", shape.vision_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_uint32("clip.vision.projector.scale_factor", shape.merge)
    ones, zeros = np.ones(v, dtype=np.float32), np.zeros(v, dtype=np.float32)
    w.add_tensor("v.patch_embd.weight", _random(rng, v, 3, shape.patch_size, shape.patch_size))
    w.add_tensor("v.patch_embd.bias", zeros)
    w.add_tensor("v.position_embd.weight", _random(rng, n_pos, v))
    for i in range(shape.vision_layers):
        p = f"v.blk.{i}."
        for role in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(p + role + ".weight", _random(rng, v, v))
            w.add_tensor(p + role + ".bias", zeros)
        for norm in ("ln1", "ln2"):
            w.add_tensor(p + norm + ".weight", ones)
            w.add_tensor(p + norm + ".bias", zeros)
        w.add_tensor(p + "ffn_up.weight", _random(rng, ff, v))
        w.add_tensor(p + "ffn_up.bias", np.zeros(ff, dtype=np.float32))
        w.add_tensor(p + "ffn_down.weight", _random(rng, v, ff))
        w.add_tensor(p + "ffn_down.bias", zeros)
    w.add_tensor("v.post_ln.weight", ones)
    w.add_tensor("v.post_ln.bias", zeros)
    w.add_tensor("mm.soft_emb_norm.weight", ones)
    w.add_tensor("mm.input_projection.weight", _random(rng, v, text_embd))
    _finish(w)


def write_tiny_vision(directory: Path, shape: VisionShape = TINY) -> tuple[Path, Path]:
    """Write the text model and its mmproj into ``directory`` (named as on the Hub: the
    projector's file name holds ``mmproj``); return (model path, mmproj path)."""
    directory.mkdir(parents=True, exist_ok=True)
    model, mmproj = directory / MODEL_FILE, directory / MMPROJ_FILE
    write_text_model(model, shape)
    write_mmproj(mmproj, shape.text_embd, shape)
    return model, mmproj


def main() -> None:
    """``python -m llmrun.tiny_vision DIR``: write the pair (for trying images by hand)."""
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m llmrun.tiny_vision DIR")
    for path in write_tiny_vision(Path(sys.argv[1])):
        print(path)


if __name__ == "__main__":
    main()
