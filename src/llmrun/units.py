"""One way to write a size for people: decimal units, as the Hub and `llmrun list` show them;
two decimals for GB (limits and needs are often close), one below."""

from __future__ import annotations


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
