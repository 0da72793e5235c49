"""`llmrun serve`: an OpenAI-compatible HTTP API on this machine (see llmrun.server)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import LlmrunError, UsageError
from . import common, gen, output

if TYPE_CHECKING:
    import socket
    from types import FrameType

    from ..server.models import ModelSpec

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'5m', '30s', '1h30m', '90' (seconds); a negative number means forever."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    if not value or _DURATION.sub("", value):
        raise UsageError(f"invalid --keep-alive {text!r}", hint="use e.g. 30s, 5m, 1h, 0, -1")
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(value))


def _resolve(name: str) -> ModelSpec:
    """A pulled (or imported) model by name. Paths are refused: clients pick models, not
    files."""
    from ..embeddings import EmbedFacts
    from ..server.models import ModelSpec

    found = common.resolver().local(name, pull=None, paths=False)
    path, display, entry = found.path, found.name, found.entry
    defaults = {k: v for k, v in (entry.defaults.model_dump() if entry else {}).items()
                if v is not None}
    manifest = found.manifest
    return ModelSpec(display, path, entry.chat_format if entry else None, defaults,
                     ctx_default=entry.ctx if entry else None,
                     reasoning=entry.reasoning if entry else None,
                     chat_template=manifest.chat_template if manifest else None,
                     embed=EmbedFacts.of(entry),
                     mmproj=common.store().checked_mmproj(manifest) if manifest else None)


def _list_models() -> list[tuple[str, int]]:
    import datetime as dt

    return [(m.name, int(dt.datetime.fromisoformat(m.pulled_at).timestamp()))
            for m in common.store().all()]


Host = Annotated[str | None, typer.Option(
    metavar="HOST", help="address to listen on [env LLMRUN_HOST; default 127.0.0.1]; "
                         "anything but loopback requires an API key")]
Port = Annotated[int | None, typer.Option(
    metavar="PORT", min=0, max=65535,
    help="port [env LLMRUN_PORT; default 8000]; 0 picks a free one")]
Models = Annotated[list[str] | None, typer.Option(
    "--model", "-m", metavar="NAME",
    help="load this model at start (repeatable); any pulled model can still be requested")]
ApiKey = Annotated[str | None, typer.Option(
    metavar="KEY", help="require 'Authorization: Bearer KEY' [env LLMRUN_API_KEY, which keeps "
                        "the key out of the process list]")]
KeepAlive = Annotated[str, typer.Option(
    metavar="DURATION",
    help="unload a model after this long idle (30s, 5m, 1h; 0 = at once, -1 = never)")]
MaxLoaded = Annotated[int, typer.Option(metavar="N", min=1, help="models loaded at once (LRU)")]
Queue = Annotated[int, typer.Option(
    metavar="N", min=1, help="requests waiting per model; more get 503 + Retry-After")]
Parallel = Annotated[int | None, typer.Option(
    "--parallel", "-np", metavar="N", min=0, max=64,
    help="requests per model decoded together (continuous batching; each has its own "
         "context); 0 = auto: up to 4 where memory allows, 1 for vision models [env "
         "LLMRUN_PARALLEL; default 0]")]
AllowImageUrls = Annotated[bool, typer.Option(
    "--allow-image-urls", help="fetch http(s) URLs in image_url parts (10 s, 20 MiB each); "
    "off by default: the server would fetch whatever a client names, its own network too")]
CorsOrigin = Annotated[list[str] | None, typer.Option(
    metavar="ORIGIN", help="allow browser pages from this origin (repeatable); none by default")]


def serve_cmd(
    host: Host = None, port: Port = None, model: Models = None, api_key: ApiKey = None,
    keep_alive: KeepAlive = "5m", max_loaded: MaxLoaded = 1, queue: Queue = 64,
    cors_origin: CorsOrigin = None, ctx: gen.CtxC = None, gpu_layers: gen.GpuLayers = None,
    threads: gen.Threads = None, parallel: Parallel = None,
    allow_image_urls: AllowImageUrls = False,
) -> None:
    """Serve pulled models over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /v1/completions, /v1/embeddings, /v1/models, /health). Logs one line per request on
    stderr."""
    s = common.settings()
    host = host or s.host
    port = s.port if port is None else port
    key = api_key or s.api_key
    from ..server.security import is_loopback

    if not is_loopback(host) and not key:
        raise UsageError(f"refusing to listen on {host} without an API key",
                         hint="pass --api-key KEY (or set LLMRUN_API_KEY), or use the default "
                              "--host 127.0.0.1")
    if len(model or []) > max_loaded:
        raise UsageError(f"{len(model or [])} --model given but --max-loaded is {max_loaded}")
    idle = parse_duration(keep_alive)
    preload = [_resolve(name).name for name in model or []]  # unknown names fail here (exit 3)
    sock = _bind(host, port)
    _serve(sock, host, key, idle, max_loaded, queue, cors_origin or [],
           preload, ctx or s.ctx, gpu_layers if gpu_layers is not None else s.gpu_layers,
           threads or s.threads, s.debug, s.parallel if parallel is None else parallel,
           allow_image_urls)


def _bind(host: str, port: int) -> socket.socket:
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host.strip("[]"), port), family=family, backlog=256)
    except OSError as exc:
        raise LlmrunError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _serve(sock: socket.socket, host: str, key: str | None, keep_alive: float, max_loaded: int,
           queue: int, cors: list[str], preload: list[str], ctx: int | None,
           gpu_layers: int | None, threads: int | None, debug: bool, parallel: int,
           allow_image_urls: bool) -> None:
    import logging
    import sys

    import uvicorn

    from ..datatypes import LoadOptions
    from ..server.app import ServerConfig, create_app
    from ..server.models import engine_loader

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("llmrun.server")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    s = common.settings()
    opts = LoadOptions(n_ctx=ctx, n_gpu_layers=gpu_layers, n_threads=threads,
                       flash_attn=s.flash_attn, extra_buffers=s.cpu_extra_buffers,
                       state_dir=str(s.state_dir))
    config = ServerConfig(resolve=_resolve, list_models=_list_models,
                          load=engine_loader(opts, debug=debug, parallel=parallel), host=host,
                          port=sock.getsockname()[1], api_key=key, keep_alive=keep_alive,
                          max_loaded=max_loaded, queue=queue, cors_origins=cors, preload=preload,
                          allow_image_urls=allow_image_urls, parallel=parallel)
    shown = f"[{host}]" if ":" in host else host
    output.info(f"llmrun serve: listening on http://{shown}:{config.port}"
                + (" (API key required)" if key else ""))
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.stop_generating()  # Ctrl-C ends running streams at the next token
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                          timeout_graceful_shutdown=10, server_header=False)).run(sockets=[sock])
