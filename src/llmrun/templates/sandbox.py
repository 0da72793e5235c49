"""The guarded Jinja environment: an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
set up as Hugging Face's ``apply_chat_template`` does, whose generated code and sandbox hooks
check the render budget, with its globals (``range``, ``raise_exception``, ``strftime_now``)
and the compiled-template cache."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, LoopControlExtension
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .budget import (
    _MAX_STRFTIME_FORMAT,
    MAX_CALL_DEPTH,
    MAX_RANGE,
    _Budget,
    _budget,
    _BudgetExceeded,
    _RaisedByTemplate,
    _weight,
)
from .checks import _check_binop, _check_method_call, _check_str_format, _guard_filter, _tojson

# ---- globals -------------------------------------------------------------------------------


def _capped_range(*args: int) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise _BudgetExceeded(f"range() of more than {MAX_RANGE:,} items")
    return numbers


def _raise_exception(message: object = "") -> NoReturn:
    if isinstance(message, str):
        text = message
    elif _weight(message, 10_000) <= 10_000:
        text = str(message)
    else:
        text = "<a large non-text value>"
    raise _RaisedByTemplate(text)


def _strftime_now(fmt: str) -> str:
    if len(fmt) > _MAX_STRFTIME_FORMAT:
        raise _BudgetExceeded(f"strftime_now() format over {_MAX_STRFTIME_FORMAT} characters")
    return datetime.now().strftime(fmt)


# --------------------------------------------------------------------------------------------
# The guarded environment
# --------------------------------------------------------------------------------------------


class _GuardedCodeGenerator(CodeGenerator):
    """Emits budget checks for the constructs the sandbox does not intercept: every for-loop
    iteration, ``~`` concatenation, and list/tuple/dict literals."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # jinja2 allows no custom node types, so each loop's iterable becomes a call to
        # environment.guarded_iter(...), which no template can name or remove.
        for loop in node.find_all(nodes.For):
            wrapper = nodes.EnvironmentAttribute("guarded_iter", lineno=loop.iter.lineno)
            loop.iter = nodes.Call(wrapper, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.guarded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # an assignment target, not a value
            super().visit_Tuple(node, frame)
            return
        self.write("environment.guarded_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.guarded_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.guarded_literal(")
        super().visit_Dict(node, frame)
        self.write(")")


class _GenerationExtension(Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}`` tag, rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares a plain set

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TickingIterable:
    """An iterable that checks the budget before yielding each item; keeps ``len()``."""

    __slots__ = ("_budget", "_items")

    def __init__(self, items: Iterable[Any], budget: _Budget) -> None:
        self._items = items
        self._budget = budget

    def __len__(self) -> int:
        return len(self._items)  # type: ignore[arg-type]  # TypeError tells LoopContext "unsized"

    def __iter__(self) -> Iterator[Any]:
        tick = self._budget.tick
        for item in self._items:
            tick()
            yield item


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[LoopControlExtension, _GenerationExtension],
            autoescape=False,
            optimized=False,  # the optimizer would call filters at compile time, unbudgeted
            finalize=self._finalize,
        )
        self.globals.pop("lipsum", None)
        self.globals["range"] = _capped_range
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters.pop("urlize", None)
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}

    # -- sandbox hooks --

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # The stock sandbox returns an Undefined that fails only when used; some uses (printing
        # it) then silently give "". A hostile template gets no second chance.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            budget.tick()
            if is_format_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_str_format(budget, fmt, (), args[0])
            else:
                _check_str_format(budget, fmt, args, kwargs)
            result = sandboxed(*args, **kwargs)
            budget.charge(result)
            return result

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        _check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.charge(result)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if budget.depth >= MAX_CALL_DEPTH:
            raise _BudgetExceeded(f"calls nested more than {MAX_CALL_DEPTH} deep")
        args = _check_method_call(budget, obj, args, kwargs)
        budget.depth += 1
        try:
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        if obj is dict or obj is Namespace:
            budget.check_weight(result, "a dict or namespace")
        budget.charge(result)
        return result

    # -- hooks emitted by _GuardedCodeGenerator, or used by jinja2's generated code --

    def concat(self, parts: Iterable[str]) -> str:
        """Joins the output captured by ``{% set %}`` blocks, macros, call and filter blocks."""
        budget = _budget()
        budget.tick()
        pieces = list(parts)
        budget.check_size(sum(len(piece) for piece in pieces), "a captured block")
        result = "".join(pieces)
        budget.spend(len(result))
        return result

    def guarded_iter(self, items: Iterable[Any]) -> _TickingIterable:
        return _TickingIterable(items, _budget())

    def guarded_concat(self, join: Callable[[Iterable[Any]], str], args: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.tick()
        size = sum(_weight(arg, budget.max_chars) for arg in args)
        budget.check_size(size, "a '~' concatenation")
        result = join(args)
        budget.charge(result)
        return result

    def guarded_literal(self, value: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.check_weight(value, "a list or dict literal")
        budget.charge(value)
        return value

    def _finalize(self, value: Any) -> Any:
        """Runs on every ``{{ ... }}`` value before it is turned into text."""
        budget = _budget()
        budget.tick()
        budget.spend(budget.check_weight(value, "a printed value"))
        return value


_ENV = _GuardedEnvironment()


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Template:
    return _ENV.from_string(template)
