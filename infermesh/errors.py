"""Errors users see, one class per HTTP status, in the JSON shape of DESIGN.md.

Servers raise these; clients rebuild them from the response body, so the CLI and the SDK show
the same message the server wrote.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MeshError(Exception):
    """An error with a stable code, an HTTP status and a message that names what is wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "Internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @classmethod
    def from_json(cls, status: int, body: Any) -> MeshError:
        """Rebuild the error a server sent; unknown shapes become a generic error of that status."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            exc = _BY_STATUS.get(status, MeshError)(f"HTTP {status}: {str(body)[:300]}")
            return exc
        klass = _BY_CODE.get(str(err.get("code")), _BY_STATUS.get(status, MeshError))
        return klass(str(err.get("message", "")), err.get("details") or {})


class BadRequest(MeshError):
    status, code = 400, "BadRequest"


class Unauthorized(MeshError):
    status, code = 401, "Unauthorized"


class Forbidden(MeshError):
    status, code = 403, "Forbidden"


class NotFound(MeshError):
    status, code = 404, "NotFound"


class MethodNotAllowed(MeshError):
    status, code = 405, "MethodNotAllowed"


class Conflict(MeshError):
    status, code = 409, "Conflict"


class PayloadTooLarge(MeshError):
    status, code = 413, "PayloadTooLarge"


class Invalid(MeshError):
    """Well-formed input that breaks the schema; `details["errors"]` lists field paths."""

    status, code = 422, "Invalid"


class TooManyRequests(MeshError):
    status, code = 429, "TooManyRequests"


class BadGateway(MeshError):
    """An upstream (a runtime behind the router) failed or could not be reached."""

    status, code = 502, "BadGateway"


class Unavailable(MeshError):
    status, code = 503, "Unavailable"


class EtcdUnavailable(Unavailable):
    code = "EtcdUnavailable"


_BY_CODE: dict[str, type[MeshError]] = {
    k.code: k
    for k in (
        MeshError,
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        Invalid,
        TooManyRequests,
        BadGateway,
        Unavailable,
        EtcdUnavailable,
    )
}
_BY_STATUS: dict[int, type[MeshError]] = {
    k.status: k
    for k in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        Invalid,
        TooManyRequests,
        BadGateway,
        Unavailable,
    )
}
