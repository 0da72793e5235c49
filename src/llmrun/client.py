"""Client mode: `run` and `chat` against any OpenAI-compatible server (vLLM, llama-server,
TGI, another `llmrun serve`) instead of a local model. Same flags, streaming and exit codes:
it mirrors Session's interface, so the CLI code does not care which one it drives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import Result, Sampling
from .errors import AuthError, ContextOverflow, LlmrunError, NetworkError, NotFound, UsageError
from .session import Message, Turn


def _error(status: int, body: str, url: str) -> LlmrunError:
    try:
        err = json.loads(body).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
        code = err.get("code") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        message, code = body[:200], None
    message = f"{url}: {message or f'HTTP {status}'}"
    if status == 401 or status == 403:
        return AuthError(message, hint="pass --api-key or set LLMRUN_API_KEY")
    if status == 404:
        return NotFound(message, hint="GET /v1/models on the server lists its models")
    if code == "context_length_exceeded":
        return ContextOverflow(message, hint="shorten the input")
    if status in (400, 422):
        return UsageError(message)
    return NetworkError(message, hint="re-run to retry" if status >= 500 else None)


@dataclass
class RemoteSession:
    endpoint: str
    model_name: str
    sampling: Sampling
    api_key: str | None = None
    system: str | None = None
    raw: bool = False
    trim: bool = False
    messages: list[Message] = field(default_factory=list)
    last: Result | None = None

    def _payload(self, text: str) -> tuple[str, dict[str, Any]]:
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model_name, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": s.temperature,
            "top_p": s.top_p, "seed": s.seed, "max_tokens": s.max_tokens,
        }
        if s.stop:
            body["stop"] = s.stop
        if s.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": s.json_schema, "strict": True}}
        elif s.json_any:
            body["response_format"] = {"type": "json_object"}
        body = {k: v for k, v in body.items() if v is not None}
        if self.raw:
            return "/v1/completions", {**body, "prompt": text}
        head = [{"role": "system", "content": self.system}] if self.system else []
        return "/v1/chat/completions", {**body, "messages": head + self.messages}

    def ask(self, text: str) -> Turn:
        result = self.last = Result()
        if not self.raw:
            self.messages.append({"role": "user", "content": text})
        path, body = self._payload(text)
        return Turn(self._stream(path, body, result), result)

    def _stream(self, path: str, body: dict[str, Any], result: Result) -> Iterator[str]:
        import httpx

        url = self.endpoint.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        start = time.perf_counter()
        first: float | None = None
        try:
            with httpx.stream("POST", url, json=body, headers=headers,
                              timeout=httpx.Timeout(30.0, read=600.0)) as resp:
                if resp.status_code != 200:
                    raise _error(resp.status_code, resp.read().decode("utf-8", "replace"), url)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _error(500, data, url)
                    if chunk.get("usage"):
                        result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                        result.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") if not self.raw \
                            else choice.get("text")
                        if piece:
                            first = first or time.perf_counter()
                            result.text += piece
                            yield piece
                        if choice.get("finish_reason"):
                            result.finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise NetworkError(f"cannot reach {url}: {type(exc).__name__}",
                               hint="is the server running? check --endpoint") from None
        finally:
            now = time.perf_counter()
            result.prompt_s = (first or now) - start
            result.gen_s = now - (first or now)
            if not self.raw and result.text:
                self.messages.append({"role": "assistant", "content": result.text.strip()})

    def prepare(self) -> None:
        """Nothing to do ahead of time: the server evaluates the prompt."""

    def offer(self, draft: str) -> None:
        """Nothing to read ahead: the server sees the message only when it is sent."""

    def settle(self) -> None:
        """No background work to wait for."""

    def abort(self) -> None:
        """No background work to stop."""

    def clear(self) -> None:
        self.messages.clear()

    def save(self, path: Path) -> None:
        data = {"model": self.model_name, "system": self.system, "messages": self.messages}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def load(self, path: Path) -> None:
        from .session import load_transcript

        self.system, self.messages = load_transcript(path, self.system)
