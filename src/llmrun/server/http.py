"""HTTP plumbing for the API: llmrun errors -> HTTP status and OpenAI error code, the request
log, bounded body reading, noticing a client that hangs up, and server-sent-event framing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ContextOverflow, LlmrunError, ModelError, NotFound, TemplateError, UsageError
from .schemas import ApiError

log = logging.getLogger("llmrun.server")
T = TypeVar("T")


class ClientGone(Exception):
    pass


def to_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LlmrunError):
        msg = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        if isinstance(exc, ContextOverflow):
            return ApiError(400, msg, param="messages", code="context_length_exceeded")
        if isinstance(exc, TemplateError):
            return ApiError(400, msg, param="messages", code="chat_template_error")
        if isinstance(exc, NotFound):
            return ApiError(404, msg, param="model", code="model_not_found")
        if isinstance(exc, UsageError):  # e.g. a JSON schema llama.cpp cannot turn into grammar
            return ApiError(400, msg, param="response_format", code="invalid_value")
        if isinstance(exc, ModelError):
            return ApiError(500, msg, type="server_error", code="model_load_failed")
        return ApiError(500, msg, type="server_error")
    log.error("internal error", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", type="server_error")


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


def clean(text: str, limit: int = 200) -> str:
    return "".join(c if c.isprintable() and c != " " else "?" for c in text[:limit])


class RequestLog:
    """One line per request on the ``llmrun.server`` logger."""

    def __init__(self, app: ASGIApp, metrics: Any = None) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            tokens = (f" prompt_tokens={state['prompt_tokens']}"
                      f" completion_tokens={state['completion_tokens']}"
                      if "prompt_tokens" in state else "")
            note = f" {state['note']}" if state.get("note") else ""
            took = time.perf_counter() - start
            log.info("%s %s model=%s status=%d%s %.2fs%s", scope["method"],
                     clean(scope["path"]), clean(state.get("model", "-")), status[0], tokens,
                     took, note)
            if self.metrics is not None:
                self.metrics.record(scope["path"], status[0], state, took)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 past ``limit`` (read on a little, so the client sees the answer)."""
    declared = request.headers.get("content-length", "")
    size, chunks, too_big = 0, [], declared.isdigit() and int(declared) > limit
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if size > 4 * limit:
            break
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise ApiError(413, f"request body is larger than {limit // 2**20} MiB",
                       code="request_too_large")
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.01)


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``, but raise ClientGone (cancelling it) if the client hangs up first."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone
    finally:
        for t in (task, watch):
            t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"
