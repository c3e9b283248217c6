"""The `/` filter of every table, as k9s has it.

- `/gpu-[0-9]` keeps the rows whose text matches the regex anywhere (case-insensitive unless
  the pattern has an upper-case letter);
- `/!pattern` keeps the rows that do *not* match;
- `/key=value` keeps the rows whose label `key`, or column `key` (its header, any case), matches
  `value` whole (a regex); several pairs separated by commas must all match; `key!=value`
  negates one pair, and `/!key=value` the whole filter.

Pure: parse once (`parse`), match per row (`Filter.matches`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_PAIR = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(!?=)(.*)$")


class FilterError(ValueError):
    """A filter that does not parse (a bad regex); the message says which part."""


@dataclass(frozen=True)
class Pair:
    key: str
    value: re.Pattern[str]
    negate: bool

    def matches(self, labels: Mapping[str, str], cells: Mapping[str, str]) -> bool:
        found = labels[self.key] if self.key in labels else cells.get(self.key.upper())
        hit = found is not None and self.value.fullmatch(found) is not None
        return hit != self.negate


@dataclass(frozen=True)
class Filter:
    text: str  # as typed, without the leading `/`
    invert: bool = False
    pattern: re.Pattern[str] | None = None
    pairs: tuple[Pair, ...] = ()

    def matches(self, labels: Mapping[str, str], cells: Mapping[str, str]) -> bool:
        """Whether a row (its object's labels and its cells by column header) is kept."""
        if self.pairs:
            hit = all(p.matches(labels, cells) for p in self.pairs)
        elif self.pattern is not None:
            hit = any(self.pattern.search(v) for v in cells.values())
        else:
            hit = True
        return hit != self.invert


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    flags = 0 if any(c.isupper() for c in pattern) else re.IGNORECASE
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise FilterError(f"{what}: not a valid regex ({exc})") from None


def parse(text: str) -> Filter | None:
    """The filter typed after `/` (a leading `/` is ignored); None for an empty one."""
    raw = text[1:] if text.startswith("/") else text
    if not raw.strip():
        return None
    body, invert = raw, False
    if body.startswith("!"):
        body, invert = body[1:], True
    if not body.strip():
        raise FilterError("'!' needs a pattern after it, e.g. /!Ready")
    terms = [t for t in body.split(",") if t.strip()]
    matches = [_PAIR.match(t) for t in terms]
    if terms and all(m is not None for m in matches):
        pairs = tuple(
            Pair(
                m.group(1),
                _compile(m.group(3).strip(), f"value of {m.group(1)}"),
                m.group(2) == "!=",
            )
            for m in matches
            if m is not None
        )
        return Filter(raw, invert, None, pairs)
    return Filter(raw, invert, _compile(body, "filter"))
