"""Client mode: `run` and `chat` against any OpenAI-compatible server (vLLM, llama-server,
TGI, another `llmrun serve`) instead of a local model. Same flags, streaming and exit codes:
it mirrors Session's interface, so the CLI code does not care which one it drives."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .datatypes import Result, Sampling
from .errors import AuthError, ContextOverflow, LlmrunError, NetworkError, NotFound, UsageError
from .formats import Delta
from .session import Message, Turn

if TYPE_CHECKING:
    from .images import Image

EXTRA_SAMPLING = ("top_k", "min_p", "repeat_penalty")  # llama.cpp/vLLM fields, not OpenAI's


def _parse(body: str, status: int) -> tuple[str, str | None]:
    """The server's error message, on one line, and its error code if it gave one."""
    code = None
    try:
        err = json.loads(body).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
        code = err.get("code") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        message = body
    return " ".join(str(message or f"HTTP {status}").split())[:300], code


def _error(status: int, body: str, url: str) -> LlmrunError:
    """A server's refusal as llmrun's error: the server's own message, and an exit code that
    says whose fault it is (a rejected request is not a network fault)."""
    said, code = _parse(body, status)
    message = f"{url}: {said}"
    if status == 401 or status == 403:
        return AuthError(message, hint="pass --api-key or set LLMRUN_API_KEY")
    if status == 404:
        return NotFound(message, hint="GET /v1/models on the server lists its models")
    if code == "context_length_exceeded":
        return ContextOverflow(message, hint="shorten the input")
    if status in (408, 429, 502, 503, 504):
        return NetworkError(message, hint="re-run to retry")
    if 400 <= status < 500:
        return UsageError(message)  # the server refused this request: exit 2
    return LlmrunError(f"{message} (HTTP {status})")  # the server failed: exit 1


def base_url(endpoint: str) -> str:
    """The server's root: the base URL that OpenAI's and vLLM's docs print ends in /v1, and
    llmrun's request paths start with it, so a trailing /v1 (or /v1/) is taken off."""
    url = endpoint.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class RemoteSession:
    """``overrides`` holds only what the user set (the server's and the model's own defaults
    apply to the rest): temperature, top_p, top_k, min_p, repeat_penalty, seed."""

    endpoint: str
    model_name: str
    sampling: Sampling
    api_key: str | None = None
    system: str | None = None
    raw: bool = False
    trim: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    warn: Callable[[str], None] | None = None
    messages: list[Message] = field(default_factory=list)
    last: Result | None = None
    _dropped: set[str] = field(default_factory=set)  # extra fields this server refused
    _schema_as_object: bool = False  # the server takes a schema only with json_object
    think: bool | str | None = None  # sent only when set: the server's default stands

    def _payload(self, text: str) -> tuple[str, dict[str, Any]]:
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model_name, "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": s.max_tokens,
            **{k: v for k, v in self.overrides.items() if k not in self._dropped},
        }
        if s.stop:
            body["stop"] = s.stop
        if s.json_schema is not None:
            body["response_format"] = (
                {"type": "json_object", "schema": s.json_schema} if self._schema_as_object
                else {"type": "json_schema", "json_schema": {
                    "name": "output", "schema": s.json_schema, "strict": True}})
        elif s.json_any:
            body["response_format"] = {"type": "json_object"}
        if self.think is not None and not self.raw:  # the conventions of llama.cpp's
            # server, vLLM and llmrun serve: a switch for the template, or an effort level
            if isinstance(self.think, str):
                body["reasoning_effort"] = self.think
            else:
                body["chat_template_kwargs"] = {"enable_thinking": self.think}
        body = {k: v for k, v in body.items() if v is not None}
        if self.raw:
            return "/v1/completions", {**body, "prompt": text}
        head = [{"role": "system", "content": self.system}] if self.system else []
        return "/v1/chat/completions", {**body, "messages": head + self.messages}

    def ask(self, text: str, images: list[Image] | None = None) -> Turn:
        """``images`` go to the server as data: URLs in image_url parts, before the text."""
        result = self.last = Result(usage_known=False)
        if images and self.raw:
            raise UsageError("images need the chat template: drop --raw")
        if images:
            parts: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": image.data_url()}}
                for image in images]
            self.messages.append({"role": "user",
                                  "content": [*parts, {"type": "text", "text": text}]})
        elif not self.raw:
            self.messages.append({"role": "user", "content": text})
        return Turn(self._stream(text, result), result)

    def _open(self, client: Any, text: str) -> Any:
        """Send the request; on a refusal, adapt once to what this server takes (a schema as
        json_object, no llama.cpp sampling fields) and send it again."""
        url = base_url(self.endpoint)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        for _attempt in range(3):
            path, body = self._payload(text)
            request = client.build_request("POST", url + path, json=body, headers=headers)
            resp = client.send(request, stream=True)
            if resp.status_code == 200:
                return resp
            error_body = resp.read().decode("utf-8", "replace")
            resp.close()
            if resp.status_code not in (400, 422, 500):
                break
            said, _ = _parse(error_body, resp.status_code)
            if any(k in body and k in said for k in EXTRA_SAMPLING):
                # a server that refuses one of llama.cpp's extra fields takes none of them
                extras = [k for k in EXTRA_SAMPLING if k in body]
                self._dropped.update(extras)
                if self.warn is not None:
                    self.warn(f"the server does not take {', '.join(extras)}; sent without")
                continue
            if (self.sampling.json_schema is not None and not self._schema_as_object
                    and ("response_format" in said or "json_schema" in said)):
                self._schema_as_object = True  # llama-cpp-python's server, for one
                continue
            break
        raise _error(resp.status_code, error_body, url + path)

    def _stream(self, text: str, result: Result) -> Iterator[Delta]:
        import httpx

        start = time.perf_counter()
        first: float | None = None
        calls: dict[int, dict[str, Any]] = {}  # streamed tool calls, merged by index
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0, read=600.0)) as client:
                resp = self._open(client, text)
                try:
                    for line in resp.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            raise _error(500, data, str(resp.url))
                        usage = chunk.get("usage")
                        if isinstance(usage, dict) and "completion_tokens" in usage:
                            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                            result.completion_tokens = int(usage["completion_tokens"])
                            result.usage_known = True
                            # OpenAI, llmrun serve: prompt tokens whose KV the server held
                            details = usage.get("prompt_tokens_details")
                            cached = details.get("cached_tokens") if isinstance(
                                details, dict) else None
                            result.prompt_evaluated = max(0, result.prompt_tokens - (
                                cached if isinstance(cached, int) else 0))
                        for choice in chunk.get("choices") or []:
                            delta = self._delta(choice, calls)
                            if delta:
                                first = first or time.perf_counter()
                                result.text += delta.content
                                result.reasoning += delta.reasoning
                                yield delta
                            if choice.get("finish_reason"):
                                result.finish_reason = choice["finish_reason"]
                finally:
                    resp.close()
        except httpx.HTTPError as exc:
            raise NetworkError(f"cannot reach {base_url(self.endpoint)}: {type(exc).__name__}",
                               hint="is the server running? check --endpoint") from None
        finally:
            now = time.perf_counter()
            result.prompt_s = (first or now) - start
            result.gen_s = now - (first or now)
            result.tool_calls = [calls[i] for i in sorted(calls)]
            if not self.raw and result.text:
                self.messages.append({"role": "assistant", "content": result.text.strip()})

    def _delta(self, choice: dict[str, Any], calls: dict[int, dict[str, Any]]) -> Delta:
        """One streamed choice as a Delta: the trace under either name servers use
        (``reasoning_content``: DeepSeek, llama.cpp, llmrun; ``reasoning``: newer vLLM), and
        tool calls merged from their fragments (reported whole in the Result)."""
        if self.raw:
            return Delta(content=str(choice.get("text") or ""))
        d = choice.get("delta") or {}
        for frag in d.get("tool_calls") or []:
            call = calls.setdefault(int(frag.get("index", len(calls))), {
                "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = frag.get("id") or call["id"]
            fn = frag.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""
        trace = d.get("reasoning_content") or d.get("reasoning") or ""
        return Delta(reasoning=str(trace), content=str(d.get("content") or ""))

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
