"""Each model `serve` loads runs in a child process of its own (T17): if llama.cpp crashes,
runs out of memory or is killed by the kernel's OOM killer, the server loses that model's
running requests, logs why, and loads the model afresh for the next request, instead of dying.

``ChildEngine`` (server side) has the engine's interface (worker.Engine) and forwards each call
to ``python -m llmrun.server.child FD``, which loads the model with engine.Model and answers one
JSON line per request on pipe FD (its stdout goes to the server's stderr, so nothing native can
corrupt the replies). Generation runs in lockstep, one piece per request: the server's worker
decides between tokens whether to go on, exactly as with a model in the same process, and the
child never runs ahead of a cancelled request.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .. import errors
from ..datatypes import LoadOptions, Result, Sampling
from ..errors import LlmrunError, ModelError, context_overflow

if TYPE_CHECKING:
    from ..embeddings import Embedded


class ChildEngine:
    def __init__(self, path: Path, opts: LoadOptions, *, chat_format: str | None, debug: bool,
                 name: str, parallel: int = 1, chat_template: str | None = None,
                 embed: dict[str, Any] | None = None, mmproj: Path | None = None) -> None:
        """``embed``: load the model for embeddings (engine/embed.py) with these registry
        facts (embeddings.EmbedFacts.as_dict), instead of for generation. ``mmproj``: a
        vision projector, loaded with the model (engine/vision.py)."""
        self.name, self.dead = name, False
        self.parallel = parallel
        self._streams: dict[str, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self._calls: queue.SimpleQueue[dict[str, Any] | None] | None = None  # parallel only
        self._call_lock = threading.Lock()
        read, write = os.pipe()
        try:
            out: int | IO[Any] = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            out = subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmrun.server.child", str(write)], stdin=subprocess.PIPE,
            stdout=out, pass_fds=(write,))
        os.close(write)
        self._replies = os.fdopen(read, "rb")
        self._stops: list[str] | None = None
        self._template: tuple[Any] | None = None
        try:
            loaded = self._call("load", path=str(path), opts=dataclasses.asdict(opts),
                                chat_format=chat_format, debug=debug, name=name,
                                parallel=parallel, chat_template=chat_template, embed=embed,
                                mmproj=None if mmproj is None else str(mmproj))
            self.n_ctx = int(loaded["n_ctx"])
            self.parallel = int(loaded.get("parallel") or parallel or 1)  # auto: the child's
            self.dim = int(loaded.get("dim") or 0)
            self._trained: int | None = loaded.get("trained")
            self.memory_warning: str | None = loaded["memory_warning"]
            self.notice: str | None = loaded.get("notice")
        except BaseException:
            self.close()
            raise
        if self.parallel > 1:  # replies and events of several streams share the pipe now
            self._calls = queue.SimpleQueue()
            threading.Thread(target=self._read_replies, daemon=True,
                             name=f"llmrun-replies-{name}").start()

    # ---- the engine interface --------------------------------------------------------
    def format_chat(self, messages: list[dict[str, Any]], *,
                    tools: list[dict[str, Any]] | None = None,
                    variables: dict[str, Any] | None = None) -> str:
        return str(self._call("format_chat", messages=messages, tools=tools,
                              variables=variables))

    def template_text(self) -> str | None:
        if self._template is None:
            self._template = (self._call("template_text"),)
        found = self._template[0]
        return None if found is None else str(found)

    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        return [int(t) for t in self._call("tokenize", text=text, templated=templated)]

    def with_images(self, images: list[bytes]) -> ChildVision:
        """This engine for a prompt with ``images`` (encoded, already checked by the server:
        image_parts.py), one per media marker, in order."""
        return ChildVision(self, images)

    def chat_stops(self) -> list[str]:
        if self._stops is None:
            self._stops = [str(s) for s in self._call("chat_stops")]
        return list(self._stops)

    def check_fits(self, n_prompt: int) -> None:
        """Here, not in the model's process: one pipe round trip less per request (a
        batched model's process reads calls only between its steps)."""
        if n_prompt >= self.n_ctx:
            raise context_overflow(n_prompt, self.n_ctx, self._trained)

    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]:
        if self.parallel > 1:
            return self._generate_batched(tokens, sampling, result)
        return self._generate_lockstep(tokens, sampling, result)

    def _generate_batched(self, tokens: list[int], sampling: Sampling,
                          result: Result | None) -> Iterator[str]:
        """One of the sequences the child decodes together (engine/batch.py): its pieces
        arrive as the child's steps make them; closing this early cancels it there."""
        res = result if result is not None else Result()
        rid = uuid.uuid4().hex
        events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._streams[rid] = events
        done = False
        try:
            try:
                self._call("bstart", rid=rid, tokens=tokens,
                           sampling=dataclasses.asdict(sampling))
            except BaseException:
                done = True  # it never started: nothing to cancel, no end to wait for
                raise
            while True:
                event = events.get()
                if event is None:
                    raise self._died()
                if "piece" in event:
                    yield str(event["piece"])
                elif "error" in event:
                    done = True
                    raise ModelError(str(event["error"]))
                else:
                    _fill(res, event["done"])
                    done = True
                    return
        finally:
            if not done and not self.dead:
                with contextlib.suppress(LlmrunError):
                    self._call("bcancel", rid=rid)
                while (event := events.get()) is not None and "done" not in event:
                    pass  # the child ends it at its next step, with what it counted
                if event is not None:
                    _fill(res, event["done"])
            self._streams.pop(rid, None)

    def _read_replies(self) -> None:
        """The pipe's only reader once streams are batched: events go to their stream,
        replies to the call waiting for one; at the end of the pipe, everyone is told."""
        while True:
            try:
                line = self._replies.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            message: dict[str, Any] = json.loads(line)
            rid = message.get("event")
            if rid is None:
                assert self._calls is not None
                self._calls.put(message)
            elif (stream := self._streams.get(str(rid))) is not None:
                stream.put(message)
        self.dead = True
        if self._calls is not None:
            self._calls.put(None)
        for stream in list(self._streams.values()):
            stream.put(None)

    def _generate_lockstep(self, tokens: list[int], sampling: Sampling,
                           result: Result | None) -> Iterator[str]:
        """One request at a time: the child streams its pieces without a call per token (a
        round trip each cost about 3% of one stream's speed on two cores); the pipe is this
        generation's until its end, so the call lock is held until then. Closing this early
        tells the child to stop, then reads on to its end."""
        res = result if result is not None else Result()
        self._call("generate", tokens=tokens, sampling=dataclasses.asdict(sampling))
        done = False
        with self._call_lock:
            try:
                self._send({"op": "stream"})
                while True:
                    try:
                        reply = self._read()
                    except LlmrunError:
                        done = True  # the child ended the stream with this error (or died)
                        raise
                    if "piece" in reply:
                        yield str(reply["piece"])
                        continue
                    _fill(res, reply["done"])
                    done = True
                    return
            finally:
                if not done and not self.dead:  # stopped early: end it in the child too
                    with contextlib.suppress(LlmrunError):
                        self._send({"op": "stop"})
                        while "done" not in (reply := self._read()):
                            pass
                        _fill(res, reply["done"])

    def embed(self, texts: list[str], *, truncate: bool = False) -> Embedded:
        """Pooled vectors (not normalized) for ``texts``, as float32 through the pipe."""
        from ..embeddings import Embedded, from_b64

        got = self._call("embed", texts=texts, truncate=truncate)
        return Embedded(from_b64(str(got["data"]), len(texts)), int(got["tokens"]))

    def close(self) -> None:
        """End the child (it exits when its input closes) and free everything it held."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._replies.close()

    # ---- the pipe --------------------------------------------------------------------
    def _call(self, op: str, **args: Any) -> Any:
        return self._request({"op": op, **args}).get("value")

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._call_lock:  # one call at a time, whichever thread makes it
            self._send(message)
            return self._read()

    def _send(self, message: dict[str, Any]) -> None:
        """Write one call (the call lock held)."""
        if self.dead:
            raise self._died()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self.dead = True
            raise self._died() from None

    def _read(self) -> dict[str, Any]:
        """Read one reply (the call lock held): the child's error is raised here."""
        try:
            if self._calls is not None:
                got = self._calls.get()
                line = b"" if got is None else json.dumps(got).encode()
            else:
                line = self._replies.readline()
        except (OSError, ValueError):
            line = b""
        if not line:
            self.dead = True
            raise self._died()
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise _rebuild(reply["error"])
        return reply

    def _died(self) -> ModelError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        how = f"exit code {code}"
        if code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += ", perhaps for lack of memory"
        return ModelError(f"the process running {self.name} died ({how})",
                          hint="the server is still up and loads the model again for the next "
                               "request; LLMRUN_DEBUG=1 shows llama.cpp's log")


class ChildVision:
    """A ChildEngine whose tokenize sends the request's images along: the model's process
    tokenizes with engine/vision.py (each image a run of negative placeholder ids), and
    generating from such tokens goes through its projector there. The rest is the engine's."""

    def __init__(self, engine: ChildEngine, images: list[bytes]) -> None:
        self.engine = engine
        self.images = [base64.b64encode(data).decode("ascii") for data in images]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        return [int(t) for t in self.engine._call("tokenize", text=text, templated=templated,
                                                  images=self.images)]


def _fill(result: Result, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        setattr(result, key, value)


def _rebuild(error: dict[str, Any]) -> LlmrunError:
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, LlmrunError)):
        cls = ModelError
    return cls(str(error.get("message")), error.get("hint"))


# ---- the child -----------------------------------------------------------------------
# Calls after which the server's next call is, nearly always, a request's start: while
# streams run, the child waits this long for it before the next step, so that a new request
# does not lose a whole step (20 ms with three streams on two cores) between its tokens and
# its start. Running streams wait at most this long for each new request.
LEADS_TO_START = ("tokenize", "format_chat")
FOLLOW_UP_S = 0.015


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    with contextlib.suppress(OSError):  # if memory runs out, the OOM killer takes this one
        Path("/proc/self/oom_score_adj").write_text("500")
    replies = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8")
    state: dict[str, Any] = {}

    def emit(rid: str, payload: dict[str, Any]) -> None:
        replies.write(json.dumps({"event": rid, **payload}) + "\n")
        replies.flush()

    lines = _Lines(sys.stdin.fileno())
    state["lines"], state["replies"] = lines, replies  # a stream writes and reads directly
    while True:  # the server closes stdin to end us
        batch = state.get("batch")
        if batch is not None and batch.active:  # requests are read between steps
            waiting = lines.ready()
            while waiting:  # a server's calls come in runs (tokenize, then start): take the
                wait = 0.0  # whole run before the next step, not one per step; after a
                for one in waiting:  # start, the step that serves it begins at once
                    if _serve_line(state, one, replies) in LEADS_TO_START:
                        wait = FOLLOW_UP_S
                waiting = lines.ready(wait=wait)
            if lines.eof:
                break
            batch.step(emit)
            continue
        line = lines.next()
        if line is None:
            break
        _serve_line(state, line, replies)


class _Lines:
    """Lines from a pipe, blocking or only those already there (between batch steps). A long
    line (a request's images) is kept in pieces and joined once: linear in its length."""

    def __init__(self, fd: int) -> None:
        self.fd, self.eof = fd, False
        self.partial: list[bytes] = []  # the line being read
        self.whole: collections.deque[bytes] = collections.deque()

    def _add(self, data: bytes) -> None:
        *ended, rest = data.split(b"\n")
        if ended:
            self.whole.append(b"".join([*self.partial, ended[0]]))
            self.whole.extend(ended[1:])
            self.partial = []
        if rest:
            self.partial.append(rest)

    def ready(self, wait: float = 0.0) -> list[str]:
        import select

        while not self.eof and select.select([self.fd], [], [], wait)[0]:
            wait = 0.0
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
            self._add(data)
        found = [w.decode("utf-8") for w in self.whole]
        self.whole.clear()
        return found

    def next(self) -> str | None:
        while not self.whole:
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
                return None
            self._add(data)
        return self.whole.popleft().decode("utf-8")


def _serve_line(state: dict[str, Any], line: str, replies: IO[str]) -> str:
    """Answer one call; returns its op."""
    req: dict[str, Any] = {}
    try:
        req = json.loads(line)
        if req.get("op") == "stop":  # a stream's stop that came after its end: no reply
            return "stop"
        reply = _handle(state, req)
    except LlmrunError as exc:
        reply = {"error": {"type": type(exc).__name__, "message": exc.message,
                           "hint": exc.hint}}
    except Exception as exc:  # reported to the server, which stays up
        reply = {"error": {"type": "ModelError", "message": f"{type(exc).__name__}: {exc}"}}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
    return str(req.get("op", ""))


def _handle(state: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "load":
        from ..engine import Model

        if req["debug"]:  # LLMRUN_DEBUG=1: the engine's debug log (grammars...) too
            import logging

            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("llmrun model: %(message)s"))
            logging.getLogger("llmrun").addHandler(handler)
            logging.getLogger("llmrun").setLevel(logging.DEBUG)

        if req.get("embed") is not None:
            return _load_embedder(state, req)
        mmproj = req.get("mmproj")
        state["model"] = Model(Path(req["path"]), LoadOptions(**req["opts"]),
                               chat_format=req["chat_format"], debug=req["debug"],
                               name=req["name"], chat_template=req.get("chat_template"),
                               mmproj=Path(mmproj) if mmproj else None)
        state["model"].remember_prompt_pieces()  # each request re-sends the conversation
        wanted = int(req.get("parallel", 1))
        if wanted == 0:
            wanted = _auto_parallel(state)
        elif wanted > 1:
            from ..engine.batch import BatchEngine

            state["batch"] = BatchEngine(state["model"], wanted)
        return {"value": {"n_ctx": state["model"].n_ctx, "parallel": wanted,
                          "trained": state["model"].info.context_length,
                          "memory_warning": state["model"].memory_warning,
                          "notice": state["model"].notice}}
    if op == "embed":
        from ..embeddings import b64

        got = state["embedder"].embed(req["texts"], truncate=bool(req.get("truncate")))
        return {"value": {"data": b64(got.vectors), "tokens": got.tokens}}
    model = state["model"]
    if op == "format_chat":
        return {"value": model.format_chat(req["messages"], tools=req.get("tools"),
                                           variables=req.get("variables"))}
    if op == "template_text":
        return {"value": model.template_text()}
    if op == "tokenize":
        if req.get("images") is not None:
            return {"value": _vision(model, req["images"]).tokenize(
                req["text"], templated=req["templated"])}
        return {"value": model.tokenize(req["text"], templated=req["templated"])}
    if op == "chat_stops":
        return {"value": model.chat_stops()}
    if op == "check_fits":
        model.check_fits(req["n_prompt"])
        return {"value": None}
    if op == "generate":
        state["result"] = Result()
        tokens = req["tokens"]
        # images stand as negative ids, which only engine/vision.py's tokenize makes: their
        # prompt is brought into the cache through the projector (which kept its chunks)
        engine = _vision(model, []) if any(t < 0 for t in tokens) else model
        state["pieces"] = engine.generate(tokens, Sampling(**req["sampling"]), state["result"])
        return {"value": None}
    if op == "bstart":
        state["batch"].start(req["rid"], req["tokens"], Sampling(**req["sampling"]))
        return {"value": None}
    if op == "bcancel":
        state["batch"].cancel(req["rid"])
        return {"value": None}
    if op == "stream":  # every piece as it comes, then the end; a call meanwhile is a stop
        pieces, lines, replies = state["pieces"], state["lines"], state["replies"]
        for piece in pieces:
            replies.write(json.dumps({"piece": piece}) + "\n")
            replies.flush()
            if lines.ready() or lines.eof:  # (read and dropped: the server sends nothing
                pieces.close()  # else now), or the server closed our input: stop
                break
        return {"done": dataclasses.asdict(state["result"])}
    raise ValueError(f"unknown request {op!r}")


def _vision(model: Any, images: list[str]) -> Any:
    """The model seen through its projector, with ``images`` (base64 of the encoded bytes the
    server checked) decoded again here with the same checks (images.py): mtmd gets pixels."""
    from ..engine.vision import VisionEngine
    from ..images import decode

    return VisionEngine(model, [decode(base64.b64decode(data), f"#{n + 1}")
                                for n, data in enumerate(images)])


AUTO_PARALLEL = (4, 2)  # serve's default: sequences decoded together, the first that fits


def _auto_parallel(state: dict[str, Any]) -> int:
    """`serve` without --parallel: the most sequences (of AUTO_PARALLEL) whose KV cache takes
    at most half the memory available after the model loaded (CPU; on a GPU, whatever the
    context creation accepts), else 1 (one request at a time, as before batching)."""
    from .. import memory
    from ..engine.batch import BatchEngine

    model = state["model"]
    available = memory.available_memory()
    for n in AUTO_PARALLEL:
        need = memory.kv_cache_bytes(model.info, model.n_ctx * n)
        if not model.gpu_layers and available is not None and need > available // 2:
            continue
        try:
            state["batch"] = BatchEngine(model, n)
        except LlmrunError:
            continue
        return n
    return 1


def _load_embedder(state: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    from ..embeddings import EmbedFacts
    from ..engine.embed import Embedder

    embedder = state["embedder"] = Embedder(
        Path(req["path"]), LoadOptions(**req["opts"]), facts=EmbedFacts.from_dict(req["embed"]),
        debug=req["debug"], name=req["name"])
    notice = "; ".join(n for n in (embedder.notice, embedder.note) if n) or None
    return {"value": {"n_ctx": embedder.n_ctx, "trained": embedder.trained, "dim": embedder.dim,
                      "memory_warning": embedder.memory_warning, "notice": notice}}


if __name__ == "__main__":
    main()
