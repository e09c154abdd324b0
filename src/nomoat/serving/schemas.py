"""Request bodies of the OpenAI routes, validated before any work starts.

Types come from pydantic (unknown fields are ignored, as OpenAI-compatible servers do, so clients that send
``user`` or ``presence_penalty`` still work); limits that depend on :class:`nomoat.config.ServeConfig` are
checked by :func:`generation_config`. Every failure is a :class:`BadRequest` naming the parameter, never
echoing the value (it may be huge).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nomoat.config import GenerationConfig, ServeConfig
from nomoat.settings import SettingError, generation_settings

Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]


class BadRequest(Exception):
    """HTTP 400 in OpenAI's shape: ``message`` says what to fix; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Request):
    include_usage: Bool = False


class _Sampling(_Request):
    model: str
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    n: Int | None = None
    stop: str | list[str] | None = None
    seed: Int | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Float | None = None  # accepted for compatibility, not used (llama.cpp's repeat penalty is)
    frequency_penalty: Float | None = None
    logprobs: Any = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None
    tools: list[Any] | None = None

    def chat_messages(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Bool = False
    suffix: str | None = None
    best_of: Int | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise BadRequest("prompt: give one prompt per request (a string or a list of one string)", "prompt")
        return self.prompt[0]


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


def parse(schema: type[_Request], body: bytes) -> Any:
    """Validate a JSON body against ``schema``. Raises BadRequest with the first problem."""
    try:
        return schema.model_validate_json(body or b"{}")
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "json_invalid":
            raise BadRequest("the body is not valid JSON") from None
        raise BadRequest(f"{where}: {error['msg']}" if where else error["msg"], where or None) from None


def generation_config(request: ChatRequest | CompletionRequest, config: ServeConfig) -> GenerationConfig:
    """The request's sampling settings within the server's limits. Raises BadRequest naming the parameter."""
    if request.n not in (None, 1):
        raise BadRequest("n: only n=1 is supported (one model generates one answer at a time)", "n")
    if request.logprobs not in (None, False):
        raise BadRequest("logprobs: not supported", "logprobs")
    if isinstance(request, ChatRequest) and request.tools:
        raise BadRequest("tools: function calling is not supported", "tools")
    if isinstance(request, CompletionRequest) and (request.echo or request.suffix or request.best_of not in (None, 1)):
        raise BadRequest("echo, suffix and best_of are not supported", "echo")
    name, max_tokens = "max_tokens", request.max_tokens
    if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
        name, max_tokens = "max_completion_tokens", request.max_completion_tokens  # OpenAI's newer name
    if max_tokens is None:
        max_tokens = GenerationConfig.max_tokens  # a request without max_tokens gets the CLI's default
    if not 1 <= max_tokens <= config.max_tokens:
        raise BadRequest(f"{name}: must be between 1 and {config.max_tokens}", name)
    for penalty in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, penalty)
        if value is not None and not -2 <= value <= 2:
            raise BadRequest(f"{penalty}: must be between -2 and 2", penalty)
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > config.max_stop or any(not 0 < len(s) <= 64 for s in stops):
        raise BadRequest(f"stop: at most {config.max_stop} strings of 1-64 characters", "stop")
    try:
        gen = generation_settings(GenerationConfig(max_tokens=max_tokens), temperature=request.temperature,
                                  top_p=request.top_p, seed=request.seed, stop=tuple(stops))  # fmt: skip
    except SettingError as exc:
        raise BadRequest(f"{exc.param}: {exc.rule}", exc.param) from None
    if isinstance(request, ChatRequest) and len(request.messages) > config.max_messages:
        raise BadRequest(f"messages: at most {config.max_messages} messages", "messages")
    return gen
