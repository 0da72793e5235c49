"""The OpenAI-compatible HTTP API: ``create_app(config)`` builds a FastAPI app with no module
globals. Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(streamed as server-sent events ending in ``data: [DONE]``, or whole), ``POST /v1/embeddings``,
``GET /health``.

Generation runs in the model pool's worker threads (models.py); this module validates, queues,
streams, turns every failure into the OpenAI error envelope and stops work for clients that
leave. Request plumbing (body limit, disconnects, the one-line request log) is in http.py,
Host/Origin/API-key checks in security.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..datatypes import Result
from ..errors import ContextOverflow, LlmrunError, ModelError, NotFound, UsageError
from ..formats import Delta, text_deltas
from ..reply import ReplyStream, plan_chat
from . import http, image_parts, schemas, security
from .http import to_api_error
from .metrics import Metrics
from .models import (
    Busy,
    Done,
    EmbedEngine,
    Engine,
    Event,
    Failed,
    Job,
    Loader,
    ModelSpec,
    Piece,
    Pool,
    Prepare,
)
from .schemas import ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Renderer

if TYPE_CHECKING:
    from pathlib import Path

    from ..embeddings import EmbedFacts

log = logging.getLogger("llmrun.server")
MAX_BODY = 8 * 1024 * 1024


@dataclass
class ServerConfig:
    resolve: Callable[[str], ModelSpec]  # model name -> spec; raises NotFound / UsageError
    list_models: Callable[[], list[tuple[str, int]]]  # (id, created) of every pulled model
    load: Loader
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default=None, repr=False)
    keep_alive: float = 300.0  # seconds idle before unloading; < 0 never, 0 at once
    max_loaded: int = 1
    queue: int = 64
    cors_origins: list[str] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)
    max_body: int = MAX_BODY
    allow_image_urls: bool = False  # fetch http(s) image_url parts (image_parts.py)
    parallel: int = 1  # requests decoded together per model (images need 1)


def _cancelled(job: Job | None) -> ApiError:
    """Why a job ended before its client asked: the model was stopped, or the server is."""
    if job is not None and job.reason:
        return ApiError(503, job.reason, type="server_error", code="model_unloaded",
                        headers={"Retry-After": "1"})
    return _SHUTTING_DOWN


_SHUTTING_DOWN = ApiError(503, "the server is shutting down", type="server_error",
                          code="server_shutdown")


def _record(state: Any, result: Result) -> None:
    state.prompt_tokens = result.prompt_tokens
    state.completion_tokens = result.completion_tokens


def _dims(dims: int | None, dim: int | None, facts: EmbedFacts, name: str) -> int | None:
    """embeddings.check_dims, its refusal a 400 on ``dimensions``."""
    from ..embeddings import check_dims

    try:
        return check_dims(dims, dim, facts, name)
    except UsageError as exc:
        raise ApiError(400, exc.message, param="dimensions", code="invalid_value") from None


def _check_limit(engine: Engine, limit: int | None) -> None:
    if limit is not None and limit > engine.n_ctx:
        raise ApiError(400, f"max_tokens is {limit} but the model's context is {engine.n_ctx}",
                       param="max_tokens", code="invalid_value")


class Api:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.pool = Pool(config.load, max_loaded=config.max_loaded, queue_size=config.queue,
                         keep_alive=config.keep_alive)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.resolved: dict[str, str] = {}  # requested name -> canonical name, once resolved
        self.embeddable: set[Path] = set()  # model files checked for /v1/embeddings

    def stop_generating(self) -> None:
        """Thread- and signal-safe: end all generations now (the server is stopping), so that
        a graceful shutdown does not wait for long streams."""
        if self.loop is not None:
            with suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.pool.cancel_all)

    async def resolve(self, name: str) -> ModelSpec:
        try:
            spec = await asyncio.to_thread(self.config.resolve, name)
        except (NotFound, UsageError) as exc:
            # a model still loaded keeps serving after its files are deleted (`rm --force`),
            # until it unloads (T18)
            loaded = self.pool.loaded_spec(self.resolved.get(name[:200], name))
            if loaded is not None:
                return loaded
            raise ApiError(404, f"model {name[:100]!r} not found: {exc.message}",
                           param="model", code="model_not_found") from None
        except LlmrunError as exc:
            raise to_api_error(exc) from None
        if len(self.resolved) >= 1024:  # names that resolve are few; never grow unbounded
            self.resolved.clear()
        self.resolved[name[:200]] = spec.name
        return spec

    async def stop(self, job: Job, state: Any) -> None:
        """Cancel a job; if it was generating, wait (briefly) until it has stopped."""
        was_running = job.state == "running"
        self.pool.cancel(job)
        state.note = "cancelled (client disconnected)"
        if was_running:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.finished.wait(), 30)
            if job.finished.is_set() and job.result is not None:
                _record(state, job.result)

    async def wait(self, request: Request, work: Awaitable[Event], state: Any,
                   holder: list[Job]) -> Event | Response:
        """A request's first event (its job queued and admitted): a full queue is a 503 with
        Retry-After, a client gone meanwhile a 499 after its job is stopped."""
        try:
            return await http.unless_disconnected(request.receive, work)
        except Busy as exc:
            state.note = "queue full"
            raise ApiError(503, str(exc) or "server busy: too many queued requests, retry later",
                           type="server_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        except http.ClientGone:
            if holder:
                await self.stop(holder[0], state)
            return Response(status_code=499)

    async def generate(self, request: Request, spec: ModelSpec,
                       prepare: Callable[[Engine, Result], Iterator[Delta]],
                       kind: Literal["chat", "text"], req: schemas.GenerateRequest) -> Response:
        state = request.state
        state.model = spec.name
        holder: list[Job] = []

        async def first() -> Event:
            job = await self.pool.submit(spec, prepare)
            holder.append(job)
            return await job.events.get()

        async def whole() -> Event:
            ev = await first()
            while isinstance(ev, Piece):
                ev = await holder[0].events.get()
            return ev

        ev = await self.wait(request, first() if req.stream else whole(), state, holder)
        if isinstance(ev, Response):
            return ev
        if isinstance(ev, Failed):
            raise to_api_error(ev.error)
        if isinstance(ev, Done) and ev.cancelled:
            _record(state, ev.result)
            raise _cancelled(holder[0] if holder else None)
        renderer = Renderer(kind, spec.name)
        if isinstance(ev, Done) and not req.stream:
            _record(state, ev.result)
            return JSONResponse(renderer.whole(ev.result))
        return StreamingResponse(self.stream(holder[0], ev, renderer, req.include_usage, state),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def stream(self, job: Job, ev: Event, r: Renderer, usage: bool,
                     state: Any) -> AsyncIterator[bytes]:
        finished = False
        try:
            if r.kind == "chat":
                yield http.sse(r.chunk(first=True, usage=usage))
            while isinstance(ev, Piece):
                # the pieces that came while this stream waited for its turn on the loop go
                # in one write, each still its own event (one token each, as before)
                out = [http.sse(r.chunk(delta=ev.delta, usage=usage))]
                while not job.events.empty():
                    ev = job.events.get_nowait()
                    if not isinstance(ev, Piece):
                        break
                    out.append(http.sse(r.chunk(delta=ev.delta, usage=usage)))
                yield b"".join(out)
                if isinstance(ev, Piece):
                    ev = await job.events.get()
            finished = True
            if isinstance(ev, Done):
                _record(state, ev.result)
            if isinstance(ev, Failed) or ev.cancelled:
                err = to_api_error(ev.error) if isinstance(ev, Failed) else _cancelled(job)
                state.note = f"error: {err.message[:100]}"
                yield http.sse(err.body())
            else:
                yield http.sse(r.chunk(finish=ev.result.finish_reason, usage=usage))
                if usage:
                    yield http.sse(r.usage_chunk(ev.result))
            yield b"data: [DONE]\n\n"
        finally:
            if not finished:
                with anyio.CancelScope(shield=True):
                    await self.stop(job, state)

    async def chat(self, request: Request) -> Response:
        req = schemas.parse(ChatRequest, await http.read_body(request, self.config.max_body))
        request.state.model = req.model
        spec = await self.resolve(req.model)
        messages, images = await image_parts.gather(
            req, spec, allow_urls=self.config.allow_image_urls, parallel=self.config.parallel)
        sampling, tools, choice = req.sampling(spec.defaults), req.tool_list(), req.choice()

        def prepare(engine: Engine, result: Result) -> Iterator[Delta]:
            _check_limit(engine, req.limit())
            if images:  # the model's process tokenizes them with its projector
                engine = image_parts.with_images(engine, images)
            try:
                plan = plan_chat(engine, messages, model=spec.name, tools=tools,
                                 tool_choice=choice, parallel=req.parallel_tool_calls is not False,
                                 think=req.thinking(), budget=req.reasoning_budget,
                                 reasoning=spec.reasoning)
            except UsageError as exc:
                raise ApiError(400, exc.message, code="invalid_value") from None
            engine.check_fits(len(plan.tokens))
            return iter(ReplyStream(engine, plan.prompt, plan.tokens,
                                    replace(sampling, stop=sampling.stop + plan.stops),
                                    plan.spec, result))

        return await self.generate(request, spec, prepare, "chat", req)

    async def completions(self, request: Request) -> Response:
        req = schemas.parse(CompletionRequest, await http.read_body(request, self.config.max_body))
        request.state.model = req.model
        spec = await self.resolve(req.model)
        text, sampling = req.text, req.sampling(spec.defaults)

        def prepare(engine: Engine, result: Result) -> Iterator[Delta]:
            _check_limit(engine, req.limit())
            tokens = engine.tokenize(text, templated=False)
            try:
                engine.check_fits(len(tokens))
            except ContextOverflow as exc:
                raise ApiError(400, exc.message, param="prompt",
                               code="context_length_exceeded") from None
            return text_deltas(engine.generate(tokens, sampling, result))

        return await self.generate(request, spec, prepare, "text", req)

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's /v1/embeddings: all inputs of a request in one pass of the model loaded
        for embeddings (engine/embed.py), normalized and cut as embeddings.py says."""
        from ..embeddings import Embedded, EmbedFacts, finish

        req = schemas.parse(EmbeddingRequest, await http.read_body(request, self.config.max_body))
        request.state.model = req.model
        spec = replace(await self.resolve(req.model), mode="embed")
        facts = spec.embed or EmbedFacts()
        await self.can_embed(spec, facts)
        _dims(req.dimensions, None, facts, spec.name)  # what can be refused before a load
        texts = [facts.prefix(req.task) + t for t in req.texts]
        done: list[Embedded] = []

        def prepare(engine: Engine, result: Result) -> Iterator[Delta]:
            model = cast(EmbedEngine, engine)
            cut = _dims(req.dimensions, model.dim, facts, spec.name)
            try:
                got = model.embed(texts)
            except ContextOverflow as exc:
                raise ApiError(400, exc.message, param="input",
                               code="context_length_exceeded") from None
            result.prompt_tokens = got.tokens
            done.append(Embedded(finish(got.vectors, normalize=facts.normalizes(None), dims=cut),
                                 got.tokens))
            return iter(())

        ev = await self.whole(request, spec, prepare)
        if not isinstance(ev, Response):
            return JSONResponse(schemas.embedding_response(
                spec.name, done[0].vectors, done[0].tokens, req.encoding_format))
        return ev

    async def can_embed(self, spec: ModelSpec, facts: EmbedFacts) -> None:
        """A reranker or an encoder-decoder model is a 400 before anything loads."""
        from .. import gguf_file
        from ..embeddings import choose_pooling

        if spec.path in self.embeddable:
            return
        try:
            info = await asyncio.to_thread(gguf_file.read_info, spec.path)
            choose_pooling(info, facts, spec.name)
        except ModelError as exc:
            raise ApiError(400, exc.message, param="model", code="model_cannot_embed") from None
        self.embeddable.add(spec.path)

    async def whole(self, request: Request, spec: ModelSpec, prepare: Prepare) -> Response | None:
        """Run a job that answers nothing until it is done (embeddings): None when it is, the
        response to give instead when the client left."""
        state = request.state
        holder: list[Job] = []

        async def run() -> Event:
            job = await self.pool.submit(spec, prepare)
            holder.append(job)
            ev = await job.events.get()
            while isinstance(ev, Piece):
                ev = await job.events.get()
            return ev

        ev = await self.wait(request, run(), state, holder)
        if isinstance(ev, Response):
            return ev
        if isinstance(ev, Failed):
            raise to_api_error(ev.error)
        assert isinstance(ev, Done)
        _record(state, ev.result)
        if ev.cancelled:
            raise _cancelled(holder[0] if holder else None)
        return None

    async def models(self) -> list[dict[str, Any]]:
        found = await asyncio.to_thread(self.config.list_models)
        return [{"id": name, "object": "model", "created": created, "owned_by": "llmrun"}
                for name, created in found]


def create_app(config: ServerConfig) -> FastAPI:
    api = Api(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.loop = asyncio.get_running_loop()
        for name in config.preload:
            try:
                await api.pool.open(await api.resolve(name))
            except ApiError as exc:
                log.warning("cannot preload %s: %s", name, exc.message)
        yield
        await api.pool.shutdown()

    app = FastAPI(title="llmrun", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.pool = api.pool
    app.state.stop_generating = api.stop_generating

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return http.error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(schemas.error_body(str(exc.detail), code=code), exc.status_code)

    async def on_error(request: Request, exc: Exception) -> Response:
        return http.error_response(to_api_error(exc))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": api.pool.status()}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await api.models()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in await api.models():
            if card["id"] == model_id:
                return card
        raise ApiError(404, f"model {model_id[:100]!r} not found", param="model",
                       code="model_not_found")

    @app.get("/api/ps")
    async def ps() -> dict[str, Any]:
        """The loaded models (`llmrun ps`); needs the API key when one is set."""
        return {"models": api.pool.details(), "keep_alive_s": config.keep_alive}

    @app.post("/api/stop")
    async def stop(request: Request) -> dict[str, Any]:
        """Unload a model now (`llmrun stop MODEL`)."""
        body = await http.read_body(request, 64 * 1024)
        try:
            name = json.loads(body)["model"]
            if not isinstance(name, str) or not name:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, 'the body must be {"model": NAME}', param="model") from None
        canonical = api.resolved.get(name[:200], name)
        if not await api.pool.stop(canonical):
            raise ApiError(404, f"model {name[:100]!r} is not loaded", param="model",
                           code="model_not_loaded")
        return {"stopped": canonical}

    metrics = Metrics()

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus's text format; needs the API key when one is set."""
        return Response(metrics.render(api.pool.details()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/v1/embeddings", api.embeddings, methods=["POST"])
    security.install(app, bound_host=config.host, api_key=config.api_key,
                     cors_origins=config.cors_origins)
    app.add_middleware(http.RequestLog, metrics=metrics)
    return app
