"""Themes: the everyday one, and a red one for production, so nobody mistakes where they are.

A context is production when its JSON says `"production": true`, or its name says so (`prod`,
`production`, `prod-eu`, `eu-prod`...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from textual.theme import Theme

DEFAULT = Theme(
    name="infermesh",
    primary="#0178D4",
    secondary="#004578",
    accent="#ffa62b",
    warning="#ffa62b",
    error="#ba3c5b",
    success="#4EBF71",
    foreground="#e0e0e0",
    dark=True,
)
PRODUCTION = Theme(
    name="infermesh-production",
    primary="#C62828",
    secondary="#7f0000",
    accent="#ff8a65",
    warning="#ffa62b",
    error="#ff1744",
    success="#4EBF71",
    foreground="#f0e0e0",
    background="#1c0a0a",
    surface="#2a1010",
    panel="#3d1414",
    dark=True,
)
THEMES = (DEFAULT, PRODUCTION)

_PROD_NAME = re.compile(r"(^|[-_./:])prod(uction)?($|[-_./:])", re.IGNORECASE)


def is_production(name: str, extra: Mapping[str, Any]) -> bool:
    flag = extra.get("production")
    if isinstance(flag, bool):
        return flag
    return _PROD_NAME.search(name or "") is not None


def theme_name(production: bool) -> str:
    return PRODUCTION.name if production else DEFAULT.name
