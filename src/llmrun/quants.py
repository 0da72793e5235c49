"""Which GGUF files of a Hub repo a quant tag means (llama.cpp's ``-hf`` rules, see
docs/registry.md): case-insensitive ``TAG[.-]`` anywhere in the path with a left boundary;
default Q4_K_M, then Q8_0, then the first model GGUF; split sets fetch every part; mmproj,
imatrix and speculative-decoding helpers are never the model."""

from __future__ import annotations

import re

from .errors import NotFound

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")
_NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
_QUANT_IN_NAME = re.compile(
    r"(?:^|[-._/])((?:I?Q\d(?:_[A-Z0-9]+)*)|(?:[BF]F?16)|F32|MXFP4|TQ\d_\d)(?=[.-])", re.I)


def model_files(paths: list[str]) -> list[str]:
    """GGUFs that can be the model: no helpers, and only part 1 of a split set."""
    out = []
    for p in paths:
        base = p.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or any(bad in base for bad in _NOT_MODEL):
            continue
        m = SPLIT_RE.match(p)
        if m and int(m["no"]) != 1:
            continue
        out.append(p)
    return out


def split_parts(first: str) -> list[str]:
    m = SPLIT_RE.match(first)
    if not m:
        return [first]
    count = int(m["count"])
    return [f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def quant_of(path: str) -> str | None:
    m = _QUANT_IN_NAME.search(path.rsplit("/", 1)[-1])
    return m.group(1).upper() if m else None


def _matches(tag: str, path: str) -> bool:
    if path.lower() == tag.lower() or path.rsplit("/", 1)[-1].lower() == tag.lower():
        return True  # a full file name given as the tag
    return re.search(r"(?:^|[-._/])" + re.escape(tag) + r"[.-]", path, re.I) is not None


def select(paths: list[str], tag: str | None, repo: str) -> list[str]:
    """Return the files to fetch (all parts of a split set); raise NotFound listing quants."""
    candidates = model_files(paths)
    if not candidates:
        raise NotFound(f"hf.co/{repo} has no GGUF model files")
    for want in [tag] if tag else list(DEFAULT_TAGS):
        for path in candidates:
            if _matches(want, path):
                return split_parts(path)
    if tag is None:
        return split_parts(candidates[0])
    available = sorted({quant_of(p) or p for p in candidates})
    raise NotFound(f"hf.co/{repo} has no {tag} file", hint="available: " + ", ".join(available))
