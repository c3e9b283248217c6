"""Numbers as people read them in tables, events and messages."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """45s, 12m, 3h20m, 2d4h: precise enough for people, short enough for a table cell (the
    reverse of `infermesh.sli.parse_duration`, within its precision)."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"
