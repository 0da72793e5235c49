"""Who may talk to the server: Host and Origin checks (DNS rebinding, S8, T32), the API key
(S9, T31) and CORS (S15). All plain ASGI middleware; every refusal is an OpenAI-style error.

Host rule: a request is served only when its ``Host`` names this machine in a way a hostile web
page cannot choose: ``localhost`` (and ``*.localhost``), an IP address literal, the address the
server is bound to, or this machine's own hostname. DNS rebinding needs a name the attacker
controls (``evil.example``), so it always fails; this holds for every bind address, 0.0.0.0
included (unlike Ollama, which skips the check there).

Origin rule: browsers send ``Origin`` on cross-site requests, including "simple" POSTs that
need no preflight. One is accepted only from a ``--cors-origin`` or a page on localhost.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .schemas import error_body

PUBLIC_PATHS = frozenset({"/health"})  # answered without an API key (still Host-checked)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


class HostGuard:
    def __init__(self, app: ASGIApp, *, bound_host: str, cors_origins: Iterable[str]) -> None:
        self.app = app
        names = {"localhost", split_host(bound_host)}
        try:
            me = socket.gethostname().lower()
            names |= {me, me.split(".")[0], f"{me.split('.')[0]}.local"}
        except OSError:  # pragma: no cover
            pass
        self.names = frozenset(n for n in names if n)
        self.origins = frozenset(o.rstrip("/") for o in cors_origins)

    def host_ok(self, host: str) -> bool:
        name = split_host(host)
        return (name in self.names or name.endswith(".localhost") or _ip_literal(name)) and (
            bool(name))

    def origin_ok(self, origin: str) -> bool:
        origin = origin.rstrip("/")
        if "*" in self.origins or origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and is_loopback(parts.hostname or "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host", ""), headers.get("origin")
        if not self.host_ok(host):
            message = f"Host {host[:100]!r} is not allowed (this server answers to localhost)"
        elif origin is not None and not self.origin_ok(origin):
            message = f"Origin {origin[:100]!r} is not allowed; see --cors-origin"
        else:
            await self.app(scope, receive, send)
            return
        await JSONResponse(error_body(message, code="forbidden"), 403)(scope, receive, send)


class ApiKeyGuard:
    """``Authorization: Bearer KEY``, compared in constant time."""

    def __init__(self, app: ASGIApp, *, key: str) -> None:
        self.app, self.key = app, key.encode("utf-8")

    def allowed(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or (
                scope["method"] == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"]
                       if k == b"authorization"), None)
        if self.allowed(header):
            await self.app(scope, receive, send)
            return
        body = error_body("missing or incorrect API key (send Authorization: Bearer KEY)",
                          code="invalid_api_key")
        await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(
            scope, receive, send)


def install(app: Starlette, *, bound_host: str, api_key: str | None,
            cors_origins: list[str]) -> None:
    """Host/Origin check outermost, then CORS (only when asked for), then the API key."""
    if api_key:
        app.add_middleware(ApiKeyGuard, key=api_key)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"],
                           allow_credentials=False, max_age=600)
    app.add_middleware(HostGuard, bound_host=bound_host, cors_origins=cors_origins)
