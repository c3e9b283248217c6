"""One inference request as the router reads it: which endpoint, which payload, which headers.

Pure parsing; every error names what is wrong and is raised before any runtime is touched.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from infermesh.errors import BadRequest, PayloadTooLarge

Kind = Literal["chat", "completion"]
UPSTREAM_PATH: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
PREFIX_CHARS = 256  # prompts that share this many leading characters share a KV-cache prefix


@dataclass(slots=True)
class Invocation:
    endpoint: str
    project: str
    kind: Kind
    body: dict[str, Any]
    stream: bool
    idempotency_key: str | None = None
    domain_hint: str | None = None
    traceparent: str | None = None
    session: str | None = None
    explain: bool = False
    fingerprint: str = ""  # of the raw body, to tell a reused Idempotency-Key apart
    _prompt: str | None = field(default=None, repr=False)  # prompt_text, built once

    @property
    def upstream_path(self) -> str:
        return UPSTREAM_PATH[self.kind]

    @property
    def max_tokens(self) -> int:
        value = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return value if isinstance(value, int) and value > 0 else 16

    def prompt_text(self) -> str:
        if self._prompt is None:
            self._prompt = self._build_prompt_text()
        return self._prompt

    def _build_prompt_text(self) -> str:
        if self.kind == "completion":
            prompt = self.body.get("prompt")
            return prompt if isinstance(prompt, str) else json.dumps(prompt)[: PREFIX_CHARS * 4]
        parts: list[str] = []
        for message in self.body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            parts.append(content if isinstance(content, str) else json.dumps(content))
        return "\n".join(parts)

    def prefix_key(self) -> int | None:
        text = self.prompt_text()
        return zlib.crc32(text[:PREFIX_CHARS].encode()) if text else None

    def session_key(self) -> int | None:
        session = self.session or self.body.get("user")
        return zlib.crc32(session.encode()) if isinstance(session, str) and session else None

    def prompt_tokens_estimate(self) -> int:
        return max(1, len(self.prompt_text()) // 4)  # ~4 characters per token in English


def parse_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"request body is {len(raw)} bytes; the limit is {max_bytes}",
            {"limit": max_bytes, "size": len(raw)},
        )
    if not raw:
        raise BadRequest("request body is empty; send an OpenAI chat or completions payload (JSON)")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def kind_of(body: dict[str, Any], route_kind: Kind | None) -> Kind:
    """The payload's kind: the route's, or for `:invoke` whichever of messages/prompt it has."""
    if route_kind == "chat" or (route_kind is None and "messages" in body):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: required, a non-empty list", {"field": "messages"})
        return "chat"
    if route_kind == "completion" or "prompt" in body:
        if body.get("prompt") in (None, "", []):
            raise BadRequest("prompt: required", {"field": "prompt"})
        return "completion"
    raise BadRequest(
        "the body needs 'messages' (chat) or 'prompt' (completions)", {"field": "messages"}
    )


def read_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream: must be true or false, got {stream!r}", {"field": "stream"})
    return stream
