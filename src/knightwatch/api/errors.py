"""Domain errors to HTTP responses, in one place (routes never pick a status)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from knightwatch.api.fields import EMPTY_SELECTOR, UNSAFE_TEXT
from knightwatch.control.enrollment import AuthenticationError
from knightwatch.control.users import PermissionDeniedError, UserExistsError
from knightwatch.errors import (
    GateRefusedError,
    InvalidInputError,
    KnightwatchError,
    NotFoundError,
    PolicyRefusedError,
    StoreError,
    VerificationError,
)

__all__ = ["RequestTooLargeError", "error_body", "install_error_handlers", "status_for"]


class RequestTooLargeError(InvalidInputError):
    """A request body is larger than its route accepts; refused before it was read."""


_STATUS: tuple[tuple[type[KnightwatchError], int], ...] = (
    (RequestTooLargeError, 413),
    (NotFoundError, 404),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (UserExistsError, 409),
    (InvalidInputError, 400),
    (GateRefusedError, 409),
    (VerificationError, 422),
    (StoreError, 503),
)


def status_for(exc: KnightwatchError) -> int:
    """Return the HTTP status for a domain error."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(exc: KnightwatchError) -> dict[str, object]:
    """Return the JSON body describing a domain error to a client."""
    body: dict[str, object] = {
        "error": exc.message,
        "hint": exc.hint,
        "kind": type(exc).__name__,
        "exit_code": exc.exit_code,
    }
    if isinstance(exc, VerificationError):
        body["problems"] = exc.problems
    if isinstance(exc, PolicyRefusedError):
        body["action"] = exc.action
        body["refusals"] = [r.to_json() for r in exc.refusals]
    return body


_HINTS = {
    UNSAFE_TEXT: "type plain text: no terminal escapes, NUL or bidi controls",
    EMPTY_SELECTOR: "name nodes (--nodes node1,node2 or 'node*' or group=NAME), "
    "or leave the selector out for the whole fleet",
}


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from errors to responses on ``app``."""

    async def domain(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KnightwatchError)
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        unsafe = first.get("type") == UNSAFE_TEXT  # refused characters: 422, naming the field
        return JSONResponse(
            {
                "error": f"request refused: {message}",
                "hint": _HINTS.get(str(first.get("type"))),
                "kind": "InvalidInputError",
                "exit_code": 2,
            },
            status_code=422 if unsafe else 400,
        )

    app.add_exception_handler(KnightwatchError, domain)
    app.add_exception_handler(RequestValidationError, invalid)
