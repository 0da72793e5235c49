"""Which file of a Hub repo is a model's vision projector (``mmproj``), by the rule of
llama.cpp's ``-hf`` (common/download.cpp, ``find_best_sibling``): a ``.gguf`` whose path
contains ``mmproj``, in the model's folder or the folder above it (the deepest shared folder
wins); among those, the one whose quant is closest in bits to the model's (the digits of
its ``[-.]TAG``: Q4_K_M is 4, Q8_0 is 8, F16 is 16), then the first listed."""

from __future__ import annotations

import re

from .quants import quant_of

_DIGITS = re.compile(r"\d+")


def quant_bits(path: str) -> int | None:
    """The bits of a file's quant tag (Q4_K_M → 4, BF16 → 16); None without a tag."""
    tag = quant_of(path)
    found = _DIGITS.search(tag) if tag else None
    return int(found.group()) if found else None


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def best_mmproj(paths: list[str], model: str) -> str | None:
    """The projector to pull with ``model`` (a path in the same listing), or None."""
    here = _folder(model)
    above = _folder(here) if here else None
    found: list[tuple[int, int, int, str]] = []
    bits = quant_bits(model)
    for order, path in enumerate(paths):
        if not path.lower().endswith(".gguf") or "mmproj" not in path.lower():
            continue
        folder = _folder(path)
        if folder == here:
            depth = 0
        elif above is not None and folder == above:
            depth = 1
        else:
            continue
        own = quant_bits(path)
        gap = abs(own - bits) if own is not None and bits is not None else 1 << 16
        found.append((depth, gap, order, path))
    return min(found)[3] if found else None
