"""Talking to a running `llmrun serve` about its models: what is loaded (`llmrun ps`) and
unloading one now (`llmrun stop`). The server's address: the flag, else LLMRUN_ENDPOINT, else
http://LLMRUN_HOST:LLMRUN_PORT (127.0.0.1 when the server listens on every address)."""

from __future__ import annotations

from typing import Any

from .client import base_url
from .errors import AuthError, LlmrunError, NetworkError, NotFound
from .settings import Settings


def server_url(settings: Settings, endpoint: str | None) -> str:
    if endpoint:
        return base_url(endpoint)
    if settings.endpoint:
        return base_url(settings.endpoint)
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _call(method: str, url: str, api_key: str | None, json: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.request(method, url, json=json, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        where = url.rsplit("/api/", 1)[0]
        raise NetworkError(f"cannot reach llmrun serve at {where}: {type(exc).__name__}",
                           hint="start it with `llmrun serve`, or say where with --endpoint "
                                "URL") from None
    try:
        body = resp.json()
    except ValueError:
        body = {}
    said = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
    if resp.status_code in (401, 403):
        raise AuthError(f"{url}: {said or resp.status_code}",
                        hint="pass --api-key or set LLMRUN_API_KEY")
    if resp.status_code == 404:
        raise NotFound(said or f"{url}: not found (is this llmrun serve?)")
    if resp.status_code != 200:
        raise LlmrunError(f"{url}: {said or f'HTTP {resp.status_code}'}")
    return body


def ps(url: str, api_key: str | None) -> list[dict[str, Any]]:
    """The models loaded in the server at ``url``."""
    found = _call("GET", url + "/api/ps", api_key).get("models")
    return list(found or [])


def stop(url: str, api_key: str | None, model: str) -> str:
    """Unload ``model`` now; returns the name the server knows it by."""
    return str(_call("POST", url + "/api/stop", api_key, json={"model": model})["stopped"])
