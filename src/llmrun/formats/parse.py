"""A streaming parser of a model's raw output: which part is its reasoning trace, which its
answer, and which tool calls it made, in the syntax its template implies (see __init__.py).

The text arrives in pieces that split markers anywhere (a token may hold half of
``</tool_call>``, a piece may hold several markers). The parser keeps the raw text it cannot
place yet and releases it once it can: whatever the chunking, the final reply is the same.

Tool calls are never malformed: a call enters the reply only once complete, with a known name
and an object for arguments; anything else that looked like a call is content, markers
included, so that nothing the model wrote is lost.

Lenient where models are: control characters inside JSON strings (decoded with
``strict=False``, re-serialised valid), arguments sent as a JSON string, ``"parameters"`` for
``"arguments"``, missing arguments (``{}``), DeepSeek call blocks without the closing
``<｜tool▁calls▁end｜>`` at the end of output.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Collection, Generator, Sequence

from . import Delta, Reply, ReplyFormat, ToolCall

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"
H_START, H_CHANNEL, H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
H_CONSTRAIN = "<|constrain|>"
H_END, H_RETURN, H_CALL = "<|end|>", "<|return|>", "<|call|>"

# what ends a harmony message's body; what may come between messages
_H_BODY_END = (H_END, H_START, H_RETURN, H_CALL, H_CHANNEL)
_H_OUTSIDE = (H_START, H_CHANNEL, H_MESSAGE, H_END, H_RETURN, H_CALL, H_CONSTRAIN)
_HEADER_CAP = 256  # a harmony header longer than this was text, not a header
_NAME_CAP = 256
_NAME_RUN = re.compile(r"[\w.\-:]*")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_MISTRAL_ID_RE = re.compile(r"[A-Za-z0-9]{9}")
_OPENERS = {"hermes": HERMES_OPEN, "mistral": MISTRAL_CALLS, "deepseek-r1": DS_CALLS_BEGIN}

_Parts = tuple[str, str, "str | None"]  # a checked call: name, arguments (JSON), given id


class _Fail(Exception):
    """The call being read cannot be a valid call: its raw text is content."""


def _openai_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


def _mistral_id() -> str:
    """Mistral's templates reject any tool call id but exactly 9 alphanumerics."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


class ReplyParser:
    """Feed raw output piece by piece; each feed says what the piece added to ``reply``.

    ``call_opened``: the offset into the raw text just past the opening of the first tool call
    outside a trace (a generation driver stops free sampling there and goes on under a tool
    grammar); ``opened_name``: harmony only, the function that call names.

    A state machine over the unplaced raw text (``_buf``): each state places what it can and
    says whether to go on. Text outside calls streams, holding back only what may be the start
    of a marker (and whitespace that syntax may yet drop). A call is read by a generator that
    yields while it needs more text and raises ``_Fail`` once the text cannot be a valid call;
    until it succeeds its raw text is kept in ``_pending``, which becomes content on failure.
    """

    def __init__(self, fmt: ReplyFormat, *, tools: bool = False, in_reasoning: bool = False,
                 names: Collection[str] | None = None,
                 new_id: Callable[[], str] | None = None) -> None:
        self.fmt = fmt
        self.reply = Reply()
        self.call_opened: int | None = None
        self.opened_name: str | None = None
        self._tools = tools and fmt.tools is not None
        self._harmony = "harmony" in (fmt.reasoning, fmt.tools)
        self._names = frozenset(names) if names is not None else None
        self._new_id = new_id or (_mistral_id if fmt.tools == "mistral" else _openai_id)
        self._opener = _OPENERS.get(fmt.tools or "") if self._tools else None
        self._buf = ""  # raw text not placed yet
        self._pos = 0  # offset of _buf in the whole raw text
        self._final = False
        self._delta = Delta()
        self._pending = ""  # raw text of the call being read: content if it fails
        self._gen: Generator[None, None, None] | None = None
        self._skip_ws = False  # drop the whitespace that comes next (between syntax elements)
        self._lstrip = False  # drop the leading whitespace of a trace (or harmony gap)
        self._role = ""  # harmony: header text after <|start|>
        self._header = ""  # harmony: header text being read
        self._header_raw = ""  # harmony: raw text since the header's first marker
        self._kind = "content"  # harmony: what the current message's body is
        self._call_name = ""  # harmony: the function the current message calls
        self._steps: dict[str, Callable[[], bool]] = {
            "start": self._st_start, "trace": self._st_trace, "answer": self._st_answer,
            "content": self._st_content, "call": self._st_call, "l3_start": self._st_l3_start,
            "l3_call": self._st_l3_call, "h_out": self._st_h_out, "h_role": self._st_h_header,
            "h_chan": self._st_h_header, "h_body": self._st_h_body,
        }
        self._state = self._first_state(in_reasoning)

    def _first_state(self, in_reasoning: bool) -> str:
        fmt = self.fmt
        if self._harmony:
            if in_reasoning and fmt.reasoning == "harmony":
                self._kind, self._lstrip = "reasoning", True
                return "h_body"
            self._lstrip = True
            return "h_out"
        if fmt.reasoning == "think":
            if in_reasoning:
                self._lstrip = True
                return "trace"
            return "start"
        return "answer"

    @property
    def in_trace(self) -> bool:
        """Whether the output is inside a reasoning trace now (for a trace budget)."""
        return self._state == "trace" or (self._state == "h_body" and self._kind == "reasoning")

    def feed(self, text: str) -> Delta:
        """A piece of raw output; returns what it adds to the reply (maybe nothing yet)."""
        if self._final:
            raise RuntimeError("ReplyParser.feed() after finish()")
        self._buf += text
        return self._run()

    def finish(self) -> Delta:
        """The output ended: place everything held back."""
        if self._final:
            return Delta()
        self._final = True
        delta = self._run()
        if self._pending or self._buf:  # nothing may be lost, whatever state we ended in
            self._emit_content(self._pending + self._buf)
            self._consume(len(self._buf))
            self._pending = ""
        return delta

    def _run(self) -> Delta:
        self._delta = Delta()
        while self._steps[self._state]():
            pass
        return self._delta

    # -- buffer and output ------------------------------------------------------------------

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._pos += n

    def _take(self, n: int) -> str:
        """Move n raw characters into the call being read."""
        text = self._buf[:n]
        self._pending += text
        self._consume(n)
        return text

    def _take_until(self, markers: Sequence[str], hold_ws: bool) -> tuple[str, str | None]:
        """Consume the text before the first marker, and the marker; without one, the text that
        cannot be the start of a marker (nor, with hold_ws, trailing whitespace that a marker
        may yet follow)."""
        buf = self._buf
        i, marker = _find_first(buf, markers)
        if marker is not None:
            self._consume(i + len(marker))
            return buf[:i], marker
        cut = len(buf)
        if not self._final:
            cut -= _partial_len(buf, markers)
            if hold_ws:
                cut = len(buf[:cut].rstrip())
        self._consume(cut)
        return buf[:cut], None

    def _drop_ws(self) -> bool:
        """Drop whitespace at the start of the buffer; False while only whitespace is there."""
        rest = self._buf.lstrip()
        self._consume(len(self._buf) - len(rest))
        if not rest:
            return False
        self._skip_ws = False
        return True

    def _strip_lead(self, text: str) -> str:
        if self._lstrip:
            text = text.lstrip()
            self._lstrip = not text
        return text

    def _emit_reasoning(self, text: str) -> None:
        if text:
            self._delta.reasoning += text
            self.reply.reasoning += text

    def _emit_content(self, text: str) -> None:
        if text:
            self._delta.content += text
            self.reply.content += text

    def _accept(self, parts: list[_Parts]) -> None:
        """Complete, checked calls: into the reply; their raw text was syntax."""
        for name, arguments, given in parts:
            call = ToolCall(id=given or self._new_id(), name=name, arguments=arguments)
            self._delta.tool_calls.append(call)
            self.reply.tool_calls.append(call)
        self._pending = ""

    def _open_call(self, name: str | None = None) -> None:
        if self.call_opened is None:
            self.call_opened, self.opened_name = self._pos, name

    # -- trace and answer ("think", no reasoning, and the tool syntaxes but harmony) --------

    def _st_start(self) -> bool:
        """Before any text: does the output open a trace?"""
        rest = self._buf.lstrip()
        if rest.startswith(THINK_OPEN):
            self._consume(len(self._buf) - len(rest) + len(THINK_OPEN))
            self._state, self._lstrip = "trace", True
            return True
        if not self._final and THINK_OPEN.startswith(rest):
            return False
        self._state = "answer"
        return True

    def _st_trace(self) -> bool:
        text, marker = self._take_until((THINK_CLOSE,), hold_ws=True)
        if marker is not None or self._final:
            text = text.rstrip()
        self._emit_reasoning(self._strip_lead(text))
        if marker is None:
            return False
        self._state, self._skip_ws = "answer", True
        return True

    def _st_answer(self) -> bool:
        llama3 = self._tools and self.fmt.tools == "llama3"
        self._state = "l3_start" if llama3 else "content"
        return True

    def _st_content(self) -> bool:
        if self._skip_ws and not self._drop_ws():
            return False
        if self._opener is None:
            self._emit_content(self._buf)
            self._consume(len(self._buf))
            return False
        text, marker = self._take_until((self._opener,), hold_ws=True)
        if marker is None:
            self._emit_content(text)
            return False
        body = text.rstrip()
        self._emit_content(body)
        self._pending = text[len(body):] + marker
        self._open_call()
        readers = {"hermes": self._g_hermes, "mistral": self._g_mistral,
                   "deepseek-r1": self._g_deepseek}
        self._gen = readers[self.fmt.tools or ""]()
        self._state = "call"
        return True

    def _st_call(self) -> bool:
        """Run the reader of the call being read as far as the buffer allows."""
        assert self._gen is not None
        try:
            next(self._gen)
        except StopIteration:  # it accepted its call(s) and chose the next state
            self._gen = None
            return True
        except _Fail:
            self._gen = None
            self._emit_content(self._pending)
            self._pending = ""
            if self._harmony:  # the rest of the message's body is content
                self._state, self._kind, self._lstrip = "h_body", "content", False
            else:
                self._state = "content"
            return True
        return False

    # -- call readers: generators that yield while they need more text ----------------------

    def _g_ws(self) -> Generator[None, None, None]:
        while True:
            rest = self._buf.lstrip()
            self._take(len(self._buf) - len(rest))
            if rest or self._final:
                return
            yield

    def _g_peek(self, lits: Sequence[str]) -> Generator[None, None, str | None]:
        """Wait until the buffer shows which of lits it starts with (the longest; not
        consumed); None: none of them."""
        while True:
            buf = self._buf
            if not self._final and any(len(x) > len(buf) and x.startswith(buf) for x in lits):
                yield
                continue
            found = [x for x in lits if buf.startswith(x)]
            return max(found, key=len) if found else None

    def _g_expect(self, lit: str) -> Generator[None, None, None]:
        if (yield from self._g_peek((lit,))) is None:
            raise _Fail
        self._take(len(lit))

    def _g_name(self, stops: str) -> Generator[None, None, str]:
        """A function name (or id), up to one of stops (not consumed)."""
        name = ""
        while True:
            match = _NAME_RUN.match(self._buf)
            name += self._take(match.end() if match else 0)
            if len(name) > _NAME_CAP:
                raise _Fail
            if self._buf:
                if not name or self._buf[0] not in stops:
                    raise _Fail
                return name
            if self._final:
                raise _Fail
            yield

    def _g_json(self, tops: str) -> Generator[None, None, object]:
        """One JSON value, decoded: an object, or what else tops allows (an array of calls;
        a string: arguments that some models write as JSON text)."""
        scan = _JsonScan(tops)
        text = ""
        while True:
            status, n = scan.feed(self._buf)
            text += self._take(n)
            if status == "done":
                try:
                    return json.loads(text, strict=False)
                except (ValueError, RecursionError):
                    raise _Fail from None
            if status == "bad" or self._final:
                raise _Fail
            yield

    def _g_hermes(self) -> Generator[None, None, None]:
        """``<tool_call>`` (read) JSON ``</tool_call>``."""
        yield from self._g_ws()
        obj = yield from self._g_json("{")
        yield from self._g_ws()
        yield from self._g_expect(HERMES_CLOSE)
        self._accept([self._checked(obj)])
        self._state, self._skip_ws = "content", True

    def _g_mistral(self) -> Generator[None, None, None]:
        """``[TOOL_CALLS]`` (read) then a JSON array of calls (or one call object), or
        ``NAME[ARGS]{...}`` with an optional ``[CALL_ID]ID`` before ``[ARGS]``."""
        yield from self._g_ws()
        if (yield from self._g_peek(("[", "{"))) is not None:
            items = yield from self._g_json("[{")
            items = [items] if isinstance(items, dict) else items  # one call, not in a list
            if not isinstance(items, list) or not items:
                raise _Fail
            self._accept([self._checked(item) for item in items])
        else:
            name = yield from self._g_name("[")
            given: str | None = None
            if (yield from self._g_peek((MISTRAL_ID, MISTRAL_ARGS))) == MISTRAL_ID:
                self._take(len(MISTRAL_ID))
                given = yield from self._g_name("[")
            yield from self._g_expect(MISTRAL_ARGS)
            yield from self._g_ws()
            arguments = yield from self._g_json('{"')
            self._accept([self._checked_parts(name, arguments, given)])
        self._state, self._skip_ws = "content", True

    def _g_deepseek(self) -> Generator[None, None, None]:
        """``<｜tool▁calls▁begin｜>`` (read), call blocks, ``<｜tool▁calls▁end｜>``. A block that
        fails is content and the next one is still read; the end of output after a complete
        block ends the calls too."""
        accepted = False
        while True:
            yield from self._g_ws()
            lit = yield from self._g_peek((DS_CALL_BEGIN, DS_CALLS_END))
            if lit is None and accepted and self._final and not self._buf:
                break
            if lit is None:
                raise _Fail
            self._take(len(lit))
            if lit == DS_CALLS_END:
                if not accepted:
                    raise _Fail
                break
            try:
                parts = yield from self._g_deepseek_call()
            except _Fail:
                self._emit_content(self._pending)
                self._pending = ""
                continue
            self._accept([parts])
            accepted = True
        self._pending = ""
        self._state, self._skip_ws = "content", True

    def _g_deepseek_call(self) -> Generator[None, None, _Parts]:
        """After ``<｜tool▁call▁begin｜>``: ``function<｜tool▁sep｜>NAME`` then the arguments
        in a ```json fence, then ``<｜tool▁call▁end｜>``; also DeepSeek V3.1's
        ``NAME<｜tool▁sep｜>{...}`` without a fence."""
        name = yield from self._g_name("<")
        yield from self._g_expect(DS_SEP)
        if name == "function":
            name = yield from self._g_name(" \t\r\n`")
        yield from self._g_ws()
        fence = yield from self._g_peek(("```json", "```"))
        if fence is not None:
            self._take(len(fence))
            yield from self._g_ws()
        arguments = yield from self._g_json('{"')
        yield from self._g_ws()
        if fence is not None and (yield from self._g_peek(("```",))) is not None:
            self._take(3)
            yield from self._g_ws()
        yield from self._g_expect(DS_CALL_END)
        return self._checked_parts(name, arguments, None)

    def _g_harmony_call(self) -> Generator[None, None, None]:
        """The body of a message to ``functions.NAME``: JSON arguments, then the message ends
        (at a marker, or at the end of output, as llama.cpp does not render ``<|call|>``)."""
        yield from self._g_ws()
        arguments = yield from self._g_json('{"')
        yield from self._g_ws()
        if (yield from self._g_peek(_H_BODY_END)) is None and self._buf:
            raise _Fail
        self._accept([self._checked_parts(self._call_name, arguments, None)])
        self._state, self._lstrip = "h_out", True

    # -- checking calls ---------------------------------------------------------------------

    def _checked(self, obj: object) -> _Parts:
        """A decoded ``{"name": ..., "arguments"/"parameters": ..., "id"?: ...}``."""
        if not isinstance(obj, dict):
            raise _Fail
        arguments = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
        return self._checked_parts(obj.get("name"), arguments, obj.get("id"))

    def _checked_parts(self, name: object, arguments: object, given: object) -> _Parts:
        if not isinstance(name, str) or not name:
            raise _Fail
        if self._names is not None and name not in self._names:
            raise _Fail
        if isinstance(arguments, str):  # some models send the object as a JSON string
            try:
                arguments = json.loads(arguments, strict=False)
            except (ValueError, RecursionError):
                raise _Fail from None
        if not isinstance(arguments, dict):
            raise _Fail
        keep: str | None = None
        if self.fmt.tools == "mistral" and isinstance(given, str):
            keep = given if _MISTRAL_ID_RE.fullmatch(given) else None
        return name, json.dumps(arguments, ensure_ascii=False), keep

    # -- llama3: the whole answer is a call or it is not ------------------------------------

    def _st_l3_start(self) -> bool:
        if self._skip_ws and not self._drop_ws():
            return False
        rest = self._buf.lstrip()
        lead = len(self._buf) - len(rest)
        if rest.startswith("{"):
            self._take(lead)
        elif rest.startswith(PYTHON_TAG):
            self._take(lead + len(PYTHON_TAG))
        elif not self._final and PYTHON_TAG.startswith(rest):
            return False
        else:
            self._state = "content"
            return True
        self._open_call()
        self._state = "l3_call"
        return True

    def _st_l3_call(self) -> bool:
        self._take(len(self._buf))
        if not self._final:
            return False
        parts = self._llama3_parts(self._pending)
        if parts is None:
            self._emit_content(self._pending)
            self._pending = ""
        else:
            self._accept(parts)
        self._state = "content"
        return False

    def _llama3_parts(self, raw: str) -> list[_Parts] | None:
        """One or more ``{"name": ..., "parameters": {...}}`` separated by ';' or newlines."""
        body = raw.lstrip()
        body = body[len(PYTHON_TAG):] if body.startswith(PYTHON_TAG) else body
        decoder = json.JSONDecoder(strict=False)
        parts: list[_Parts] = []
        i = 0
        while True:
            while i < len(body) and (body[i].isspace() or body[i] == ";"):
                i += 1
            if i == len(body):
                return parts or None
            try:
                obj, i = decoder.raw_decode(body, i)
                parts.append(self._checked(obj))
            except (ValueError, RecursionError, _Fail):
                return None

    # -- harmony ----------------------------------------------------------------------------

    def _st_h_out(self) -> bool:
        """Between messages (or before the first): headers come next; other text is content,
        whitespace around it dropped."""
        text, marker = self._take_until(_H_OUTSIDE, hold_ws=True)
        if marker is not None:
            text = text.rstrip()
        self._emit_content(self._strip_lead(text))
        if marker is None:
            return False
        self._h_marker(marker)
        return True

    def _h_marker(self, marker: str) -> None:
        """What a harmony marker found outside a header starts."""
        self._lstrip = True
        if marker == H_START:
            self._role, self._header, self._header_raw = "", "", marker
            self._state = "h_role"
        elif marker == H_CHANNEL:
            self._role, self._header, self._header_raw = "", "", marker
            self._state = "h_chan"
        elif marker == H_MESSAGE:
            self._role = self._header = ""
            self._open_body()
        else:
            self._state = "h_out"

    def _st_h_header(self) -> bool:
        """The role (after ``<|start|>``) or channel (after ``<|channel|>``) header: kept,
        never output."""
        stops = (H_CHANNEL, H_MESSAGE) if self._state == "h_role" else (H_MESSAGE,)
        buf = self._buf
        i, marker = _find_first(buf, stops)
        end = i if marker is not None else len(buf)
        if marker is None and not self._final:
            end -= _partial_len(buf, stops)
        if len(self._header) + end > _HEADER_CAP:
            return self._header_overflow()
        self._header += buf[:end]
        self._header_raw += buf[:end] + (marker or "")
        self._consume(end + len(marker or ""))
        if marker is None:  # at the end of output, an unfinished header is dropped
            return False
        if marker == H_CHANNEL:
            self._role, self._header, self._state = self._header, "", "h_chan"
        else:
            self._open_body()
        return True

    def _header_overflow(self) -> bool:
        """No marker came where a header should have ended: the opening marker was text, and
        what followed it is read again as text."""
        opening = H_START if self._header_raw.startswith(H_START) else H_CHANNEL
        again = self._header_raw[len(opening):]
        self._emit_content(opening)
        self._buf = again + self._buf
        self._pos -= len(again)
        self._header = self._role = self._header_raw = ""
        self._state, self._lstrip = "h_out", False
        return True

    def _open_body(self) -> None:
        """The header is complete (``<|message|>`` read): what the body is."""
        channel, recipient = _harmony_header(self._role, self._header)
        self._header = self._header_raw = ""
        if recipient is not None and recipient.startswith("functions."):
            if self._tools and self.fmt.tools == "harmony":
                self._call_name = recipient[len("functions."):]
                self._open_call(self._call_name)
                self._pending = ""
                self._gen = self._g_harmony_call()
                self._state = "call"
                return
            self._kind = "content"
        else:
            self._kind = "reasoning" if channel == "analysis" else "content"
        self._state, self._lstrip = "h_body", self._kind == "reasoning"

    def _st_h_body(self) -> bool:
        reasoning = self._kind == "reasoning"
        text, marker = self._take_until(_H_BODY_END, hold_ws=reasoning)
        if reasoning:
            if marker is not None or self._final:
                text = text.rstrip()
            self._emit_reasoning(self._strip_lead(text))
        else:
            self._emit_content(text)
        if marker is None:
            return False
        self._h_marker(marker)
        return True


def _harmony_header(role: str, header: str) -> tuple[str, str | None]:
    """The channel and recipient of ``<|start|>ROLE<|channel|>HEADER<|message|>``; the
    recipient (``to=...``) may be in either part."""
    found = _RECIPIENT.search(role) or _RECIPIENT.search(header)
    words = header.replace(H_CONSTRAIN, " ").split()
    return (words[0] if words else ""), (found.group(1) if found else None)


def _find_first(buf: str, markers: Sequence[str]) -> tuple[int, str | None]:
    """The earliest marker in buf (the longest of those starting there)."""
    best, found = -1, None
    for marker in markers:
        i = buf.find(marker)
        if i >= 0 and (found is None or i < best or (i == best and len(marker) > len(found))):
            best, found = i, marker
    return best, found


def _partial_len(buf: str, markers: Sequence[str]) -> int:
    """The length of the longest suffix of buf that is a marker's proper prefix."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(buf)), best, -1):
            if buf.endswith(marker[:k]):
                best = k
                break
    return best


_STR_RUN = re.compile(r'[^"\\]*')
_ATOM_CHARS = frozenset("0123456789+-.eEtrufalsn")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-?\d*(?:\.\d*)?(?:[eE][+-]?\d*)?")
_LITERALS = ("true", "false", "null")


class _JsonScan:
    """Follows one JSON object (or array) as it streams in, so that a call knows where its
    JSON ends (a marker inside a JSON string is text) or that it cannot be JSON, without
    parsing everything again on each piece. json.loads has the last word on the text."""

    def __init__(self, tops: str) -> None:
        self._tops = tops
        self._stack: list[str] = []
        self._want = "top"  # top, value, first_value, key, first_key, colon, comma
        self._in_str = False
        self._key = False  # the string being read is an object key
        self._esc = 0  # -1: after a backslash; n > 0: hex digits of \\u left
        self._atom = ""  # the number or literal being read

    def feed(self, text: str) -> tuple[str, int]:
        """("done", n): the value ends after text[:n]; ("bad", n): text[n] cannot follow;
        ("more", len(text)): all of it may start a value."""
        i, n = 0, len(text)
        while i < n:
            if self._in_str and not self._esc:
                match = _STR_RUN.match(text, i)
                i = match.end() if match else i
                if i >= n:
                    break
            result = self._char(text[i])
            if result == "bad":
                return "bad", i
            i += 1
            if result == "done":
                return "done", i
        return "more", n

    def _char(self, ch: str) -> str:
        if self._in_str:
            return self._str_char(ch)
        if self._atom:
            if ch in _ATOM_CHARS:
                self._atom += ch
                ok = _NUMBER_PREFIX.fullmatch(self._atom) or any(
                    x.startswith(self._atom) for x in _LITERALS)
                return "ok" if ok else "bad"
            if not (self._atom in _LITERALS or _NUMBER.fullmatch(self._atom)):
                return "bad"
            self._atom, self._want = "", "comma"
        if ch in " \t\r\n":
            return "ok"
        return self._structural(ch)

    def _str_char(self, ch: str) -> str:
        if self._esc == -1:
            if ch == "u":
                self._esc = 4
            elif ch in '"\\/bfnrt':
                self._esc = 0
            else:
                return "bad"
        elif self._esc > 0:
            if ch not in string.hexdigits:
                return "bad"
            self._esc -= 1
        elif ch == "\\":
            self._esc = -1
        elif ch == '"':
            self._in_str = False
            self._want = "colon" if self._key else "comma"
            return "ok" if self._stack else "done"  # a string at the top: arguments as text
        return "ok"

    def _structural(self, ch: str) -> str:
        want = self._want
        if want == "top":
            if ch not in self._tops:
                return "bad"
            if ch == '"':
                self._in_str, self._key = True, False
                return "ok"
            return self._open(ch)
        if want in ("value", "first_value"):
            if ch == "]" and want == "first_value":
                return self._close()
            if ch in "{[":
                return self._open(ch)
            if ch == '"':
                self._in_str, self._key = True, False
                return "ok"
            if ch in "-0123456789tfn":
                self._atom = ch
                return "ok"
            return "bad"
        if want in ("key", "first_key"):
            if ch == "}" and want == "first_key":
                return self._close()
            if ch == '"':
                self._in_str, self._key = True, True
                return "ok"
            return "bad"
        if want == "colon":
            if ch == ":":
                self._want = "value"
                return "ok"
            return "bad"
        top = self._stack[-1]
        if ch == ",":
            self._want = "key" if top == "{" else "value"
            return "ok"
        return self._close() if ch == ("}" if top == "{" else "]") else "bad"

    def _open(self, ch: str) -> str:
        self._stack.append(ch)
        self._want = "first_key" if ch == "{" else "first_value"
        return "ok"

    def _close(self) -> str:
        self._stack.pop()
        self._want = "comma"
        return "ok" if self._stack else "done"
