"""The render budget: limits, the per-render :class:`_Budget` (time, sizes, total work, call
depth), the context variable that holds it while :func:`llmrun.templates.render` runs, and
:func:`_weight`, the size estimate every check uses."""

from __future__ import annotations

import contextvars
import time

from jinja2.utils import Namespace

#: Longest template text accepted (real ones are well under 64 KiB); bounds compile time.
MAX_TEMPLATE_CHARS = 256 * 1024
#: Most items one ``range()`` call may produce (jinja2's own sandbox limit).
MAX_RANGE = 100_000
#: Deepest nesting of calls (macros, ``loop()`` recursion, methods) a template may reach.
MAX_CALL_DEPTH = 64
#: Largest integer, in bits, that ``*`` and ``**`` may produce.
MAX_INT_BITS = 4096
#: Total text a render may build, as a multiple of ``max_output_chars``.
WORK_FACTOR = 64
_MAX_JSON_INDENT = 32
_MAX_STRFTIME_FORMAT = 256


class _BudgetExceeded(Exception):
    """A template went over one of its limits."""


class _RaisedByTemplate(Exception):
    """The template called ``raise_exception``."""


class _Budget:
    __slots__ = ("deadline", "depth", "max_chars", "time_budget_s", "work_left")

    def __init__(self, time_budget_s: float, max_chars: int) -> None:
        self.time_budget_s = time_budget_s
        self.deadline = time.monotonic() + time_budget_s
        self.max_chars = max_chars
        self.work_left = WORK_FACTOR * max_chars
        self.depth = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _BudgetExceeded(f"rendering ran past its time budget of {self.time_budget_s:g} s")

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise _BudgetExceeded(
                f"{what} would be about {size:,} characters (limit {self.max_chars:,})"
            )

    def check_weight(self, value: object, what: str) -> int:
        weight = _weight(value, self.max_chars)
        self.check_size(weight, what)
        return weight

    def charge(self, result: object) -> None:
        """Count a value the template just built against the size and total-work limits."""
        if isinstance(result, (str, bytes, list, tuple, dict)):
            size = len(result)
            self.check_size(size, "a value built by the template")
            self.spend(size)

    def spend(self, size: int) -> None:
        self.work_left -= size
        if self.work_left < 0:
            raise _BudgetExceeded(
                f"the template built more than {WORK_FACTOR * self.max_chars:,} characters in all"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "llmrun_template_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # only render() runs templates, and it always sets one
        raise _BudgetExceeded("template code ran outside render()")
    return budget


def _weight(value: object, limit: int) -> int:
    """About how many characters ``value`` takes as text, counting a shared object once per
    reference (that is what ``str()`` and ``|join`` would produce). Stops once past ``limit``.

    A namespace object stored inside a list, tuple or dict is refused: namespaces are mutable,
    so such containers could grow after their size was checked.
    """
    total = 0
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        item, nested = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + len(item)
            stack.extend((element, True) for element in item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend((key, True) for key in item)
            stack.extend((element, True) for element in item.values())
        elif isinstance(item, Namespace):
            if nested:
                raise _BudgetExceeded("namespace objects cannot be stored in lists or dicts")
            attrs: dict[str, object] = getattr(item, "_Namespace__attrs", {})
            total += 16 + 2 * len(attrs)
            stack.extend((element, False) for element in attrs.values())
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, float):
            total += 24
        else:
            total += 32
        if total > limit:
            return total
    return total


def _bounded_int(digits: str) -> int:
    """A decimal field width from a format string, saturating instead of parsing 4000 digits."""
    return int(digits) if len(digits) <= 12 else 10**12
