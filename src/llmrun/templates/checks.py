"""Budget checks for the operations that can multiply sizes (``*``, ``**``, ``+``, ``%``,
``str.format``, string and dict methods) and for filters: :func:`_guard_filter` wraps every
filter of the environment, and :func:`_tojson` is Hugging Face's ``tojson``."""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from types import BuiltinMethodType
from typing import Any

from .budget import (
    _MAX_JSON_INDENT,
    MAX_INT_BITS,
    MAX_RANGE,
    _bounded_int,
    _Budget,
    _budget,
    _BudgetExceeded,
    _weight,
)

# ---- checks for operations that can multiply sizes ----------------------------------------

_SEQUENCES = (str, bytes, list, tuple)
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            count, seq = right, left
        elif isinstance(right, _SEQUENCES) and isinstance(left, int):
            count, seq = left, right
        else:
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise _BudgetExceeded(f"'*' would produce an integer over {MAX_INT_BITS} bits")
            return
        if count > 0:
            weight = _weight(seq, budget.max_chars)
            budget.check_size(weight * count, "a '*' repetition")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            size = _weight(left, budget.max_chars) + _weight(right, budget.max_chars)
            budget.check_size(size, "a '+' concatenation")
    elif operator == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and abs(left).bit_length() * right > MAX_INT_BITS
        ):
            raise _BudgetExceeded(f"'**' would produce an integer over {MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str):
        _check_printf(budget, left, right)


def _format_values(args: object) -> list[object]:
    if isinstance(args, Mapping):
        return list(args.values())
    if isinstance(args, tuple):
        return list(args)
    return [args]


def _check_printf(budget: _Budget, fmt: str, args: object) -> None:
    """Estimate the size of ``fmt % args`` (the ``%`` operator and the ``format`` filter)."""
    values = _format_values(args)
    conversions = 0
    widest = 0
    star = False
    for match in _PRINTF_SPEC.finditer(fmt):
        if match.group(3) == "%":
            continue
        conversions += 1
        for field in (match.group(1), match.group(2)):
            if field == "*":
                star = True
            elif field:
                widest = max(widest, _bounded_int(field))
    if star:
        ints = [abs(v) for v in values if isinstance(v, int)]
        widest = max([widest, *ints])
    largest = max((_weight(v, budget.max_chars) for v in values), default=0)
    budget.check_size(len(fmt) + conversions * (largest + widest), "a '%' format")


def _check_str_format(
    budget: _Budget, fmt: str, args: Sequence[object], kwargs: Mapping[str, object]
) -> None:
    """Estimate the size of ``fmt.format(*args, **kwargs)`` (also ``format_map``)."""
    fields = 0
    widest = 0
    for _literal, field, spec, _conversion in string.Formatter().parse(fmt):
        if field is None:
            continue
        fields += 1
        if spec:
            if "{" in spec:
                raise _BudgetExceeded("str.format() specs with nested fields are not allowed")
            for digits in _DIGITS.findall(spec):
                widest = max(widest, _bounded_int(digits))
    values = [*args, *kwargs.values()]
    largest = max((_weight(v, budget.max_chars) for v in values), default=0)
    budget.check_size(len(fmt) + fields * (largest + widest), "a str.format() result")


def _arg(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _check_replace(budget: _Budget, text: object, old: object, new: object, count: object) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    growth = len(new) - len(old)
    if growth <= 0:
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.check_size(len(text) + hits * growth, "a replace() result")


def _check_join(budget: _Budget, items: list[Any], separator: object) -> None:
    sep = len(separator) if isinstance(separator, (str, bytes)) else 0
    size = sum(_weight(item, budget.max_chars) for item in items) + sep * max(len(items) - 1, 0)
    budget.check_size(size, "a join() result")


def _check_width(budget: _Budget, text: object, width: object, what: str) -> None:
    if isinstance(width, int) and not isinstance(width, bool):
        base = len(text) if isinstance(text, (str, bytes)) else 0
        budget.check_size(max(base, width), what)


def _check_method_call(
    budget: _Budget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Pre-check builtin methods that can multiply sizes; returns the (possibly materialized)
    positional arguments to call with."""
    if not isinstance(obj, BuiltinMethodType):
        return args
    owner = obj.__self__
    name = obj.__name__
    if isinstance(owner, (str, bytes)):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_width(budget, owner, _arg(args, kwargs, 0, "width", 0), f"a {name}() result")
        elif name == "expandtabs":
            tabsize = _arg(args, kwargs, 0, "tabsize", 8)
            if isinstance(tabsize, int):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                budget.check_size(len(owner) + tabs * max(tabsize, 0), "an expandtabs() result")
        elif name == "replace":
            _check_replace(budget, owner, _arg(args, kwargs, 0, "old", ""),
                           _arg(args, kwargs, 1, "new", ""), _arg(args, kwargs, 2, "count", -1))
        elif name == "join" and args:
            items = list(args[0])
            _check_join(budget, items, owner)
            return (items, *args[1:])
        elif name in ("translate", "maketrans"):
            raise _BudgetExceeded(f"str.{name}() is not available in chat templates")
    elif isinstance(owner, int) and name == "to_bytes":
        length = _arg(args, kwargs, 0, "length", 1)
        if isinstance(length, int):
            budget.check_size(length, "a to_bytes() result")
    elif owner is dict and name == "fromkeys" and args:
        keys = list(args[0])
        value = _arg(args, kwargs, 1, "value", None)
        budget.check_size(len(keys) * max(_weight(value, budget.max_chars), 1), "a dict")
        return (keys, *args[1:])
    return args


# ---- filters -------------------------------------------------------------------------------

#: Filters that never turn their input into text, so need no size check of that input.
_NON_STRINGIFYING_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "filesizeformat", "first",
    "float", "groupby", "int", "items", "last", "length", "list", "map", "max", "min",
    "random", "reject", "rejectattr", "reverse", "round", "select", "selectattr", "slice",
    "sort", "sum", "unique",
})

_FilterCheck = Callable[[_Budget, list[Any], dict[str, Any]], None]


def _filter_center(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_width(budget, args[0], _arg(args, kwargs, 1, "width", 80), "a center() result")


def _filter_indent(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    text, width = args[0], _arg(args, kwargs, 1, "width", 4)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if isinstance(text, str):
        budget.check_size(len(text) + (text.count("\n") + 1) * max(pad, 0), "an indent() result")


def _filter_format(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    fmt = args[0]
    if isinstance(fmt, str):
        _check_printf(budget, fmt, kwargs or tuple(args[1:]))


def _filter_replace(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_replace(budget, args[0], _arg(args, kwargs, 1, "old", ""),
                   _arg(args, kwargs, 2, "new", ""), _arg(args, kwargs, 3, "count", None))


def _filter_join(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    if isinstance(args[0], (str, bytes)):
        return
    args[0] = list(args[0])  # a map()/select() generator can only be read once
    _check_join(budget, args[0], _arg(args, kwargs, 1, "d", ""))


def _filter_wordwrap(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    text, wrap = args[0], _arg(args, kwargs, 4, "wrapstring", None)
    if isinstance(text, str) and isinstance(wrap, str):
        budget.check_size(len(text) * (1 + len(wrap)), "a wordwrap() result")


def _filter_batch(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    count, fill = _arg(args, kwargs, 1, "linecount", 0), _arg(args, kwargs, 2, "fill_with", None)
    if isinstance(count, int):
        budget.check_size(count, f"a {count}-item batch")
        if fill is not None:
            budget.check_size(count * _weight(fill, budget.max_chars), "batch() padding")


def _filter_slice(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    count, fill = _arg(args, kwargs, 1, "slices", 0), _arg(args, kwargs, 2, "fill_with", None)
    if isinstance(count, int):
        if count > MAX_RANGE:
            raise _BudgetExceeded(f"slice() into {count:,} parts (limit {MAX_RANGE:,})")
        if fill is not None:
            budget.check_size(count * _weight(fill, budget.max_chars), "slice() padding")


_FILTER_CHECKS: dict[str, _FilterCheck] = {
    "batch": _filter_batch,
    "center": _filter_center,
    "format": _filter_format,
    "indent": _filter_indent,
    "join": _filter_join,
    "replace": _filter_replace,
    "slice": _filter_slice,
    "wordwrap": _filter_wordwrap,
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so it checks the budget before running and counts what it returns."""
    # Filters marked @pass_context / @pass_eval_context / @pass_environment get that first.
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)
    stringifies = name not in _NON_STRINGIFYING_FILTERS

    @functools.wraps(func)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        head, rest = args[:offset], list(args[offset:])
        if rest and stringifies:
            budget.check_weight(rest[0], f"the input of the {name!r} filter")
        if rest and check is not None:
            check(budget, rest, kwargs)
        result = func(*head, *rest, **kwargs)
        budget.charge(result)
        return result

    return guarded


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's ``tojson``: plain :func:`json.dumps`, no HTML escaping."""
    if indent is not None:
        width = len(indent) if isinstance(indent, str) else indent
        if width > _MAX_JSON_INDENT:
            raise _BudgetExceeded(f"tojson indent of {width} (limit {_MAX_JSON_INDENT})")
    if separators is not None and any(len(s) > _MAX_JSON_INDENT for s in separators):
        raise _BudgetExceeded(f"tojson separators over {_MAX_JSON_INDENT} characters")
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

