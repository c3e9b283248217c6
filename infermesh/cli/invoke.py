"""`mesh invoke`: call an endpoint through the router, as an application would."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from infermesh.cli.common import CliState, pass_state, warn
from infermesh.errors import BadRequest
from infermesh.invoke import Answer, RouterClient


def request_body(data: str | None, prompt: str | None) -> dict[str, Any]:
    """The body from `-d` (JSON, @FILE or - for stdin) and/or `--prompt`."""
    body: dict[str, Any] = {}
    if data is not None:
        if data == "-":
            text = sys.stdin.read()
        elif data.startswith("@"):
            try:
                text = Path(data[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise BadRequest(f"-d {data}: cannot read the file: {exc.strerror}") from None
        else:
            text = data
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"-d: not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise BadRequest('-d: the body must be a JSON object, e.g. {"messages": [...]}')
        body = parsed
    if prompt is not None:
        if "messages" in body or "prompt" in body:
            raise BadRequest("give the prompt once: in -d (messages or prompt) or with --prompt")
        body["messages"] = [{"role": "user", "content": prompt}]
    if not body:
        raise BadRequest("give a request body with -d JSON, or a prompt with --prompt TEXT")
    return body


def _route(answer: Answer) -> None:
    for key in ("target", "strategy", "revision"):
        warn(f"{key + ':':<10}{getattr(answer, key) or '<none>'}")


def _usage(answer: Answer, started: float, first: float | None) -> None:
    if answer.usage:
        counts = (f"{k}={v}" for k, v in answer.usage.items() if isinstance(v, int | float))
        warn(f"{'usage:':<10}" + " ".join(counts))
    took = f"{time.monotonic() - started:.3f}s"
    if first is not None:
        took += f" (first token after {first - started:.3f}s)"
    warn(f"{'time:':<10}{took}")


@click.command()
@click.argument("endpoint")
@click.option(
    "-d",
    "--data",
    metavar="JSON",
    help="Request body (an OpenAI chat or completion body): JSON, @FILE, or - for stdin.",
)
@click.option("--prompt", metavar="TEXT", help="Send TEXT as the user's chat message.")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
@click.option("--domain-hint", metavar="DOMAIN", help="Domain to prefer (X-Domain-Hint).")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Idempotency-Key: a repeat with the same key gets the first answer, not a new one.",
)
@click.option(
    "--router",
    "router_url",
    metavar="URL",
    help="Router URL (env INFERMESH_ROUTER; default: the context's).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="On stderr: the node, strategy and revision that answered, token usage, time taken.",
)
@pass_state
def invoke(
    state: CliState,
    endpoint: str,
    data: str | None,
    prompt: str | None,
    stream: bool,
    domain_hint: str | None,
    idempotency_key: str | None,
    router_url: str | None,
    verbose: bool,
) -> None:
    """Call ENDPOINT through the router and print its answer.

    \b
    mesh invoke chat-pro --prompt "Say hi"
    mesh invoke chat-pro --stream -d '{"messages": [...], "max_tokens": 64}'
    """
    body = request_body(data, prompt)
    ctx = state.context
    if router_url:
        ctx.router_url = router_url.rstrip("/")
    options = {"domain_hint": domain_hint, "idempotency_key": idempotency_key}
    started = time.monotonic()
    with RouterClient.from_context(ctx) as client:
        if not stream:
            answer = client.invoke(endpoint, body, **options)
            if verbose:
                _route(answer)
            has_text = bool(answer.body.get("choices"))
            click.echo(answer.text if has_text else json.dumps(answer.body, indent=2))
            if verbose:
                _usage(answer, started, None)
            return
        with client.stream(endpoint, body, **options) as streamed:
            if verbose:
                _route(streamed)
            first = None
            try:
                for text in streamed:
                    first = first or time.monotonic()
                    click.echo(text, nl=False)
            finally:
                click.echo()  # end the line, also before an error that cut the stream short
            if verbose:
                _usage(streamed, started, first)


COMMANDS = [invoke]
