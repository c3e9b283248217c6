"""Where the console has been: `[` and `]` walk the history like a browser's back and forward,
`-` goes to the view before the current one (again: back and forth between two), `esc` goes
back. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    view: str
    param: str | None = None  # what a drilled view is about (an endpoint's key for replicas)

    def __str__(self) -> str:
        return self.view if self.param is None else f"{self.view}({self.param})"


class History:
    def __init__(self, first: Place, limit: int = 50) -> None:
        self.places = [first]
        self.pos = 0
        self.limit = limit

    @property
    def current(self) -> Place:
        return self.places[self.pos]

    def go(self, place: Place) -> Place:
        """A new visit: what was ahead of the current place is dropped."""
        if place == self.current:
            return place
        del self.places[self.pos + 1 :]
        self.places.append(place)
        if len(self.places) > self.limit:
            del self.places[0]
        self.pos = len(self.places) - 1
        return place

    def back(self) -> Place | None:
        if self.pos == 0:
            return None
        self.pos -= 1
        return self.current

    def forward(self) -> Place | None:
        if self.pos + 1 >= len(self.places):
            return None
        self.pos += 1
        return self.current

    def last(self) -> Place | None:
        """The place before the current one, visited anew (so `-` twice comes back)."""
        if self.pos == 0:
            return None
        return self.go(self.places[self.pos - 1])
