"""Token counting and generated text: deterministic stand-ins for a tokenizer and a model.

Tokenizer approximation (close to a BPE tokenizer on English, about 4 characters a token):
a run of up to 5 letters with the space before it is one token, so are up to 3 digits, and each
other symbol; other whitespace runs are one token each. "Hello, world!" is 4 tokens.

Chat prompts are counted in the shape of the Llama-3 chat template: a begin-of-text token,
4 header tokens and an end-of-turn token around each message, and 4 tokens for the assistant
header that asks for the reply. Completion prompts get the begin-of-text token; prompts given as
token ids are taken as they are.

Generated text is pseudo-English drawn from a per-request random generator, each piece exactly
one token. A reply that ends on its own (no `max_tokens`) ends with an end-of-sequence token
whose text is empty, and which counts as a completion token, as in vLLM.
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Sequence

_TOKEN = re.compile(r" ?[^\W\d_]{1,5}| ?\d{1,3}| ?(?:[^\w\s]|_)|\s+")

BOS = "<|begin_of_text|>"
_HEADER = ("<|start_header_id|>", "<|end_header_id|>", "\n\n")
_EOT = "<|eot_id|>"

# Lengths of replies that end on their own (no max_tokens): uniform in this range, EOS included.
NATURAL_LENGTH = (16, 256)

_VOCABULARY = (
    "the of and to in is it that for you was with on as have be at not this but they from "
    "or by one had all word were there can an use each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has "
    "look two more write go see way could no than first been call who its now find long "
    "down day did get come made may part over new sound take only place year live back "
    "give most very after thing our just name good great where help think much mean "
    "line right too any same tell boy three want air well also play small end put "
    "home read hand port large spell add even land here must big high such act why "
    "ask men went light kind off need house try us again point world near build "
    "self earth"
)
_WORDS = tuple(_VOCABULARY.split())


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def chat_prompt_tokens(messages: Sequence[tuple[str, str]]) -> list[str]:
    """Tokens of (role, text) messages laid out by the chat template, reply header included."""
    tokens = [BOS]
    for role, text in messages:
        tokens += [_HEADER[0], role, *_HEADER[1:], *tokenize(text), _EOT]
    tokens += [_HEADER[0], "assistant", *_HEADER[1:]]
    return tokens


def completion_prompt_tokens(prompt: str | Sequence[int]) -> list[Hashable]:
    if isinstance(prompt, str):
        return [BOS, *tokenize(prompt)]
    return list(prompt)


def request_rng(seed: int, prompt: Sequence[Hashable]) -> random.Random:
    """The generator of one request's output: the same seed and prompt give the same reply."""
    return random.Random(f"{seed}:{''.join(map(str, prompt))}")


def natural_length(rng: random.Random) -> int:
    return rng.randint(*NATURAL_LENGTH)


def next_piece(rng: random.Random) -> str:
    """The text of one generated token."""
    roll = rng.random()
    if roll < 0.06:
        return "."
    if roll < 0.1:
        return ","
    return " " + rng.choice(_WORDS)
