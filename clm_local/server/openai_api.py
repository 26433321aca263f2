"""The OpenAI request and response shapes: JSON bodies in, GenerationRequest out, and back.

Only the fields that change the answer are read; other fields the OpenAI clients send (user,
logit_bias, ...) are ignored, as by other local servers. The CLM fields sit at the top level of the
body, where the `openai` client's `extra_body` puts them: `alpha` (alias `control`, the paper's
name) and `mode`. Every refusal is an ApiError, answered in OpenAI's error shape.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from clm_local.chat.sampling import RANDOM_SEED, SamplingParams
from clm_local.errors import ClmError
from clm_local.runtime.model import check_alpha, check_mode
from clm_local.server.scheduler import GenerationRequest

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_CHARS = 512  # each stop string; matching is linear in the answer whatever the length
MAX_INT = 2**31 - 1  # llama.cpp's int32 parameters (top_k)
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """A refused request: HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Defaults:
    """What a request gets for the fields it leaves out, and the limits it must respect."""

    alpha: float
    mode: str
    n_ctx: int
    model_id: str


# -- requests -------------------------------------------------------------------------------------


def parse_chat(body: dict[str, Any], defaults: Defaults) -> tuple[GenerationRequest, bool]:
    """A /v1/chat/completions body as a request, and whether to stream it."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > defaults.n_ctx:  # each message is at least one token of the prompt
        raise ApiError(400, f"{len(messages)} messages cannot fit a context of {defaults.n_ctx} tokens",
                       param="messages")  # fmt: skip
    return _generation(body, defaults, messages=[_message(m, i) for i, m in enumerate(messages)])


def parse_completion(body: dict[str, Any], defaults: Defaults) -> tuple[GenerationRequest, bool]:
    """A /v1/completions body as a request, and whether to stream it."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise ApiError(400, "'prompt' is required", param="prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
    return _generation(body, defaults, prompt=_text(prompt, "prompt"))


def _generation(body: dict[str, Any], defaults: Defaults, **prompt: Any) -> tuple[GenerationRequest, bool]:
    if _integer(body, "n", 1, 1, 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if "alpha" in body and "control" in body and body["alpha"] != body["control"]:
        raise ApiError(400, "'alpha' and its alias 'control' disagree", param="alpha")
    alpha_name = "alpha" if "alpha" in body else "control"
    mode = body.get("mode", defaults.mode)
    if not isinstance(mode, str):
        raise ApiError(400, f"'mode' must be a string, got {type(mode).__name__}", param="mode")
    try:
        alpha = check_alpha(_number(body, alpha_name, defaults.alpha))  # also within llama.cpp's float
        check_mode(mode)
    except ClmError as error:
        raise ApiError(400, str(error), param=alpha_name if "alpha" in str(error) else "mode") from None
    given = body.get("max_completion_tokens") is not None  # a null one leaves max_tokens in force
    max_tokens_name = "max_completion_tokens" if given else "max_tokens"
    max_tokens = _integer(body, max_tokens_name, None, 1, defaults.n_ctx)
    try:
        sampling = SamplingParams(
            temp=_number(body, "temperature", SamplingParams.temp, 0.0, 2.0),
            top_p=_number(body, "top_p", SamplingParams.top_p, 0.0, 1.0),
            top_k=_integer(body, "top_k", SamplingParams.top_k, 0, MAX_INT),
            min_p=_number(body, "min_p", SamplingParams.min_p, 0.0, 1.0),
            repeat_penalty=_number(body, "repeat_penalty", SamplingParams.repeat_penalty, 0.0, None),
            seed=_integer(body, "seed", RANDOM_SEED, 0, RANDOM_SEED),
        )
    except ClmError as error:
        raise ApiError(400, str(error)) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    request = GenerationRequest(
        alpha=alpha, mode=mode, sampling=sampling, max_tokens=max_tokens, stop=_stop(body), **prompt
    )
    return request, stream


def include_usage(body: dict[str, Any]) -> bool:
    """Whether a stream ends with a usage chunk (stream_options.include_usage)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _message(message: Any, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{param} must be an object with 'role' and 'content'", param=param)
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(400, f"{param}.role must be one of {', '.join(ROLES)}, got {role!r}", param=param)
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        if not all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            raise ApiError(400, f"{param}.content: only text parts (with a string 'text') are supported",
                           param=param)  # fmt: skip
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{param}.content must be a string", param=param)
    content = _text(content, f"{param}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


def _text(value: str, param: str) -> str:
    """The string, refused unless it is Unicode scalar values: JSON's escapes can spell a lone
    surrogate (\\ud800), which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(
            400, f"'{param}' is not valid Unicode text (a lone surrogate at character {error.start})",
            param=param,
        ) from None  # fmt: skip
    return value


def _number(
    body: dict[str, Any], name: str, default: float, low: float | None = None, high: float | None = None
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"'{name}' must be a finite number, got {_short(value)}", param=name)
    try:
        value = float(value)  # an integer of 400 digits is beyond a float: OverflowError
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number, got {_short(body.get(name))}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], got {value!r}", param=name)
    return value


def _integer(body: dict[str, Any], name: str, default: Any, low: int, high: int | None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {_short(value)}", param=name)
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"'{name}' must be {limit}, got {_short(value)}", param=name)
    return value


def _short(value: Any) -> str:
    """A value for an error message, cut short (a field may hold a megabyte)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise ApiError(
            400,
            f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS}, each of 1 to {MAX_STOP_CHARS} "
            "characters",
            param="stop",
        )
    return tuple(_text(s, "stop") for s in stops)


# -- responses ------------------------------------------------------------------------------------


class Reply:
    """The common fields of every response and chunk of one request, chat or text completion."""

    def __init__(self, chat: bool, request: GenerationRequest, defaults: Defaults) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.head = {
            "id": self.id,
            "created": self.created,
            "model": defaults.model_id,
            "alpha": request.alpha,
            "mode": request.mode,
        }

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text}
            kind = "text_completion"
        choice |= {"finish_reason": finish_reason, "logprobs": None}
        return {"object": kind, **self.head, "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict:
        """A streamed piece; the first chat chunk carries the role, the last the finish reason."""
        if self.chat:
            delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or ""}
            kind = "text_completion"
        choice |= {"finish_reason": finish_reason, "logprobs": None}
        return {"object": kind, **self.head, "choices": [choice]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"object": kind, **self.head, "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
