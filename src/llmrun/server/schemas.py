"""Request and response shapes of the OpenAI-compatible API.

Every parameter that reaches the engine has bounds here (reliability.md S14, T27): a request that
fails validation is a 400 in the OpenAI error envelope, never a 500. Unknown fields are ignored
(clients send newer OpenAI fields), but known features llmrun cannot honour (n > 1, logprobs,
logit_bias) are refused rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..datatypes import SAMPLING_KEYS, Result, Sampling, layer_sampling
from ..formats import Delta

if TYPE_CHECKING:
    import numpy as np

MAX_STOP = 4
MAX_STOP_LEN = 256
MAX_TOKENS_CAP = 1 << 20  # a static ceiling; the pool also checks against the model's n_ctx
MAX_MESSAGES = 4096
MAX_NAME = 256


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, frozen=True)


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LEN)]


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ImageUrl(_Req):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None  # accepted; mtmd sizes images itself


class ImagePart(_Req):
    """OpenAI's image part; ``image_url`` also as a plain string, as some clients send it.
    The URL is checked and the image decoded in server/images.py."""

    type: Literal["image_url"]
    image_url: ImageUrl | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


FUNCTION_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"  # OpenAI's rule for function names
MAX_TOOLS = 128


class FunctionCall(_Req):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(max_length=1 << 20)  # JSON text, as OpenAI sends it


class ToolCallIn(_Req):
    id: str = Field(min_length=1, max_length=MAX_NAME)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Req):
    role: Literal["system", "user", "assistant", "developer", "tool"]  # developer: new system
    content: str | list[Part] | None = None
    name: str | None = Field(None, max_length=MAX_NAME)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=MAX_NAME)
    reasoning_content: str | None = None  # DeepSeek's and vLLM's name for the trace

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        """A part of a type llmrun does not take is named (not a union's first mismatch)."""
        if isinstance(v, list):
            for j, part in enumerate(v):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url"):
                    raise ValueError(f"content[{j}]: parts of type {kind!r} are not supported "
                                     "(text and image_url are)")
        return v

    @model_validator(mode="after")
    def _roles(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs tool_call_id")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role != "user" and self.images():
            raise ValueError(f"only user messages can carry images, not {self.role} messages")
        return self

    def images(self) -> list[tuple[int, ImagePart]]:
        """The image parts, with their index in ``content``."""
        if not isinstance(self.content, list):
            return []
        return [(j, p) for j, p in enumerate(self.content) if isinstance(p, ImagePart)]

    def as_dict(self) -> dict[str, Any]:
        """The message as OpenAI sends it (formats.messages.for_template adapts it to the
        template), without the fields that are not set."""
        return self.model_dump(exclude_none=True, by_alias=True)


class FunctionDef(_Req):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> FunctionDef:
        if self.parameters is not None:
            if len(json.dumps(self.parameters)) > MAX_SCHEMA_BYTES:
                raise ValueError(f"parameters of {self.name} are larger than "
                                 f"{MAX_SCHEMA_BYTES // 1024} KiB")
            _check_schema(self.parameters)
            if self.parameters.get("type", "object") != "object":
                raise ValueError(f"parameters of {self.name} must be a JSON schema of an object")
        return self


class Tool(_Req):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Req):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(_Req):
    type: Literal["function"]
    function: NamedFunction


class ChatTemplateKwargs(_Req):
    enable_thinking: bool | None = None  # vLLM's and llama.cpp's way to turn thinking off
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class StreamOptions(_Req):
    include_usage: bool = False


class JsonSchemaFormat(_Req):
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


_SCHEMA_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties",
                  "maxProperties")
MAX_SCHEMA_COUNT = 4096  # each unit becomes grammar rules llama.cpp must parse (S14)
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32


def _check_schema(node: Any, depth: int = 0) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _SCHEMA_COUNTS and isinstance(value, int) and value > MAX_SCHEMA_COUNT:
                raise ValueError(f"JSON schema {key} {value} is over {MAX_SCHEMA_COUNT}")
            _check_schema(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _check_schema(value, depth + 1)


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _needs_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None
                                           or self.json_schema.schema_ is None):
            raise ValueError("response_format json_schema needs json_schema.schema")
        if self.json_schema is not None and self.json_schema.schema_ is not None:
            if len(json.dumps(self.json_schema.schema_)) > MAX_SCHEMA_BYTES:
                raise ValueError(f"JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
            _check_schema(self.json_schema.schema_)
        return self


class GenerateRequest(_Req):
    model: str = Field(min_length=1, max_length=MAX_NAME)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1000)  # llama.cpp extensions
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, ge=0.01, le=5)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    user: str | None = Field(None, max_length=MAX_NAME)

    @model_validator(mode="after")
    def _supported(self) -> GenerateRequest:
        if self.n not in (None, 1):
            raise ValueError("n: only n=1 is supported")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported; "
                             "use repeat_penalty")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def limit(self) -> int | None:
        return self.max_tokens

    def sampling(self, defaults: dict[str, float | int]) -> Sampling:
        """Request value > registry default > llmrun default (datatypes.layer_sampling)."""
        s = layer_sampling({k: getattr(self, k) for k in SAMPLING_KEYS}, defaults)
        s.seed, s.max_tokens = self.seed, self.limit()
        s.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return s


class ChatRequest(GenerateRequest):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "low", "medium", "high"] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    think: bool | None = None  # Ollama's name for turning thinking on or off
    reasoning_budget: int | None = Field(None, ge=0, le=MAX_TOKENS_CAP)  # trace tokens

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatRequest:
        if self.logprobs:
            raise ValueError("logprobs is not supported")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, NamedToolChoice) and (
                self.tool_choice.function.name not in names):
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is "
                             "not among the tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        if self.tools and self.response_format is not None and (
                self.response_format.type != "text"):
            raise ValueError("response_format and tools cannot be combined")
        return self

    def tool_list(self) -> list[dict[str, Any]]:
        return [t.model_dump(exclude_none=True) for t in self.tools or []]

    def choice(self) -> str:
        """auto, none, required, or the name of the function that must be called."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    def thinking(self) -> bool | str | None:
        """None (the model's default), False, True, or an effort level."""
        kw = self.chat_template_kwargs
        if self.reasoning_effort == "none" or self.think is False or (
                kw is not None and kw.enable_thinking is False):
            return False
        effort = self.reasoning_effort or (kw.reasoning_effort if kw else None)
        if effort is not None:
            return effort
        if self.think or (kw is not None and kw.enable_thinking):
            return True
        return None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self, defaults: dict[str, float | int]) -> Sampling:
        s = super().sampling(defaults)
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            s.json_any = True
        elif fmt is not None and fmt.json_schema is not None:
            s.json_schema = fmt.json_schema.schema_
        return s


class CompletionRequest(GenerateRequest):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: exactly one prompt per request")
        if self.echo or self.suffix or self.logprobs or self.best_of not in (None, 1):
            raise ValueError("echo, suffix, logprobs and best_of are not supported")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request
TOKEN_IDS = ("token ids are not accepted: send text (each model has its own tokenizer; "
             "LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))")


class EmbeddingRequest(_Req):
    model: str = Field(min_length=1, max_length=MAX_NAME)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=1 << 16)
    user: str | None = Field(None, max_length=MAX_NAME)
    task: Literal["query", "document"] | None = None  # llmrun's: the registry's prefix

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v:
                raise ValueError("must not be empty")
            return v
        if not isinstance(v, list):
            raise ValueError("must be a string or an array of strings")
        if not v:
            raise ValueError("must not be an empty array")
        if len(v) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        if any(isinstance(x, int | list) and not isinstance(x, bool) for x in v):
            raise ValueError(TOKEN_IDS)
        for i, x in enumerate(v):
            if not isinstance(x, str):
                raise ValueError(f"item {i} is not a string")
            if not x:
                raise ValueError(f"item {i} is empty")
        return v

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse(cls: type[_Req], body: bytes) -> Any:
    """Validate a JSON body; any failure is a 400 naming the first bad parameter."""
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "json_invalid":
            raise ApiError(400, f"invalid JSON body: {first['msg']}") from None
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ApiError(400, f"{loc}: {msg}" if loc else msg, param=loc or None,
                       code="invalid_value") from None


# ---- responses ----------------------------------------------------------------------------
class PromptDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV the model already held (prefix reuse)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails

    @classmethod
    def of(cls, r: Result) -> Usage:
        cached = max(0, r.prompt_tokens - r.prompt_evaluated)
        return cls(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                   total_tokens=r.prompt_tokens + r.completion_tokens,
                   prompt_tokens_details=PromptDetails(cached_tokens=cached))


class Renderer:
    """Builds the JSON of one response (chat or text completion), whole or as SSE chunks."""

    def __init__(self, kind: Literal["chat", "text"], model: str) -> None:
        self.kind, self.model = kind, model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.calls = 0  # tool calls streamed so far (their delta index)

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def whole(self, r: Result) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant",
                                       "content": r.text if r.text or not r.tool_calls else None}
            if r.reasoning:
                message["reasoning_content"] = r.reasoning
            if r.tool_calls:
                message["tool_calls"] = r.tool_calls
            choice: dict[str, Any] = {"index": 0, "finish_reason": r.finish_reason,
                                      "message": message, "logprobs": None}
            body = self._envelope("chat.completion", [choice])
        else:
            body = self._envelope("text_completion", [
                {"index": 0, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}])
        body["usage"] = Usage.of(r).model_dump()
        return body

    def chunk(self, *, delta: Delta | None = None, finish: str | None = None,
              first: bool = False, usage: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            out: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if delta is not None:
                if delta.reasoning:
                    out["reasoning_content"] = delta.reasoning
                if delta.content:
                    out["content"] = delta.content
                if delta.tool_calls:  # each call whole, once complete: never malformed
                    out["tool_calls"] = [
                        {"index": self.calls + i, "id": c.id, "type": "function",
                         "function": {"name": c.name, "arguments": c.arguments}}
                        for i, c in enumerate(delta.tool_calls)]
                    self.calls += len(delta.tool_calls)
            choice: dict[str, Any] = {"index": 0, "delta": out, "finish_reason": finish,
                                      "logprobs": None}
            body = self._envelope("chat.completion.chunk", [choice])
        else:
            text = delta.content if delta is not None else ""
            body = self._envelope("text_completion", [
                {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}])
        if usage:
            body["usage"] = None
        return body

    def usage_chunk(self, r: Result) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        body = self._envelope(obj, [])
        body["usage"] = Usage.of(r).model_dump()
        return body


def embedding_response(model: str, vectors: np.ndarray, tokens: int,
                       encoding_format: str) -> dict[str, Any]:
    """OpenAI's embeddings response; base64 is the float32 little-endian bytes (what the
    official client decodes)."""
    from ..embeddings import b64

    data = [{"object": "embedding", "index": i,
             "embedding": b64(v) if encoding_format == "base64" else v.astype("f8").tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
