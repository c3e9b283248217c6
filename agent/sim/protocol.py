"""The OpenAI API as vLLM serves it: request validation, output planning and response shapes.

Validation follows vLLM: a bad body is 400 `BadRequestError`, a model other than the served one
is 404 `NotFoundError` ("The model `x` does not exist."), errors are
`{"error": {"message", "type", "param", "code"}}`. Unknown fields are ignored. Differences from
vLLM: `n` must be 1; `logprobs` are never returned; a completion takes one prompt.

How many tokens a reply has: `max_tokens` (or `max_completion_tokens`) when given, all of them,
finishing with "length" (as if `ignore_eos` were always set, which keeps benchmarks exact);
otherwise a natural length drawn from the request's generator, finishing with "stop". Both are
capped by the context (`max_model_len`). Completions default to 16 tokens, as in the OpenAI API.
A `stop` string found in the text ends the reply there with "stop" (the stop string is left out;
a match spanning tokens may have streamed its first part already).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from infermesh.agent.sim.tokens import chat_prompt_tokens, completion_prompt_tokens

COMPLETION_DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "param": self.param,
                "code": self.status,
            }
        }


def error_type(status: int) -> str:
    """vLLM's error type names: BadRequestError, NotFoundError, InternalServerError, ..."""
    if status == 500:
        return "InternalServerError"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "InternalServerError" if status >= 500 else "BadRequestError"
    return "".join(word.capitalize() for word in phrase.replace("-", " ").split()) + "Error"


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


@dataclass(frozen=True)
class GenerationRequest:
    kind: str  # "chat" or "completion"
    prompt: list[Hashable]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    seed: int | None


def parse_chat(body: Any, served_model: str) -> GenerationRequest:
    body = _object(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: Field required", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of messages", "messages")
    turns = [_message(m, i) for i, m in enumerate(messages)]
    max_tokens = _max_tokens(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _max_tokens(body, "max_tokens")
    return _finish(body, served_model, "chat", chat_prompt_tokens(turns), max_tokens)


def parse_completion(body: Any, served_model: str) -> GenerationRequest:
    body = _object(body)
    if "prompt" not in body or body["prompt"] is None:
        raise bad_request("prompt: Field required", "prompt")
    prompt = _prompt(body["prompt"])
    max_tokens = (
        _max_tokens(body, "max_tokens") if "max_tokens" in body else COMPLETION_DEFAULT_MAX_TOKENS
    )
    return _finish(body, served_model, "completion", completion_prompt_tokens(prompt), max_tokens)


def plan_output(
    request: GenerationRequest, max_model_len: int, natural_tokens: int
) -> tuple[int, str]:
    """How many tokens to generate and the finish reason they end with; 400 if out of context."""
    prompt = len(request.prompt)
    if prompt >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt} input tokens. Please reduce the length of the input messages.",
            "messages" if request.kind == "chat" else "prompt",
        )
    room = max_model_len - prompt
    if request.max_tokens is not None:
        if request.max_tokens > room:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt + request.max_tokens} tokens ({prompt} in the messages, "
                f"{request.max_tokens} in the completion). Please reduce the length of the "
                "messages or completion.",
                "max_tokens",
            )
        return request.max_tokens, "length"
    if natural_tokens > room:
        return room, "length"
    return natural_tokens, "stop"


class StopChecker:
    """Accumulates generated text and cuts it at the first stop string."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.text = ""
        self.stop_reason: str | None = None

    def push(self, piece: str) -> str:
        """Add one token's text; return the new text to send (empty after a cut)."""
        before = len(self.text)
        text = self.text + piece
        cut = -1
        for s in self.stop:
            at = text.find(s, max(0, before - len(s) + 1))
            if at != -1 and (cut == -1 or at < cut):
                cut, self.stop_reason = at, s
        if cut != -1:
            text = text[:cut]
        self.text = text
        return text[before:]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def chat_response(
    rid: str, created: int, model: str, text: str, finish: str, stop: str | None, used: dict
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "tool_calls": []}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop,
    }
    return _envelope(rid, "chat.completion", created, model, [choice]) | {"usage": used}


def completion_response(
    rid: str, created: int, model: str, text: str, finish: str, stop: str | None, used: dict
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop,
    }
    return _envelope(rid, "text_completion", created, model, [choice]) | {"usage": used}


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    stop: str | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = stop
    return _envelope(rid, "chat.completion.chunk", created, model, [choice])


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str | None = None,
    stop: str | None = None,
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop,
    }
    return _envelope(rid, "text_completion", created, model, [choice])


def usage_chunk(kind: str, rid: str, created: int, model: str, used: dict) -> dict[str, Any]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return _envelope(rid, obj, created, model, []) | {"usage": used}


def _envelope(rid: str, obj: str, created: int, model: str, choices: list) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _finish(
    body: dict[str, Any], served: str, kind: str, prompt: list[Hashable], max_tokens: int | None
) -> GenerationRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    if model is not None and model != served:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    n = _typed(body, "n", int)
    if n is not None and n != 1:
        raise bad_request("n must be 1: the simulator returns one choice per request", "n")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _typed(body, name, int | float)
    temperature = body.get("temperature")
    if temperature is not None and temperature < 0:
        raise bad_request("temperature must be >= 0", "temperature")
    stream = bool(_typed(body, "stream", bool))
    options = _typed(body, "stream_options", dict)
    if options is not None and not stream:
        raise bad_request(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    include_usage = bool(options and _typed(options, "include_usage", bool, "stream_options."))
    _typed(body, "user", str)
    return GenerationRequest(
        kind=kind,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        stop=_stop(body.get("stop")),
        seed=_typed(body, "seed", int),
    )


def _typed(body: dict[str, Any], name: str, kind: Any, prefix: str = "") -> Any:
    """body[name] if it is None or of `kind` (bool is never a number); a 400 otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        noun = {bool: "a boolean", str: "a string", int: "an integer", dict: "an object"}.get(
            kind, "a number"
        )
        raise bad_request(f"{prefix}{name} must be {noun}", prefix + name)
    return value


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    value = _typed(body, name, int)
    if value is not None and value < 1:
        raise bad_request(f"{name} must be at least 1, got {value}.", name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise bad_request("stop must be a string or a list of strings", "stop")


def _message(message: Any, index: int) -> tuple[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with role and content", where)
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise bad_request(f"{where}.role: Field required (a string)", f"{where}.role")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return role, content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{where}.content parts must be objects with a type", where)
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}.content text parts need a text string", where)
                texts.append(part["text"])
        return role, "\n".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of parts", f"{where}.content")


def _prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return prompt
        if len(prompt) == 1 and isinstance(prompt[0], str | list):
            return _prompt(prompt[0])
        if all(isinstance(p, str | list) for p in prompt):
            raise bad_request("the simulator takes one prompt per request", "prompt")
    raise bad_request(
        "prompt must be a string, a list of token ids, or a list holding one of them", "prompt"
    )
