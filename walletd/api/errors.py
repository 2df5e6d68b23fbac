"""The one table from domain errors to the HTTP status and API code of api.md.

A public error is answered with the entry of its nearest class in the table (along its MRO:
`SessionFailed` is answered as `Unavailable`); any other error first becomes the public error
`walletd.errors.public_error` says, so the client never sees internals.
"""

from __future__ import annotations

from walletd.errors import (
    Capacity,
    Conflict,
    Forbidden,
    Internal,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PublicError,
    Timeout,
    TooLarge,
    Unavailable,
    WalletError,
    public_error,
)
from walletd.jsontypes import JsonObject

__all__ = ["STATUS_AND_CODE", "error_answer", "error_body", "status_and_code"]

STATUS_AND_CODE: dict[type[PublicError], tuple[int, str]] = {
    PublicError: (500, "internal"),
    Internal: (500, "internal"),
    InvalidRequest: (400, "invalid_request"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    Conflict: (409, "conflict"),
    NotReady: (409, "not_ready"),
    TooLarge: (413, "too_large"),
    Capacity: (503, "capacity"),
    Unavailable: (503, "unavailable"),
    WalletError: (502, "wallet_error"),
    Timeout: (504, "timeout"),
}


def status_and_code(error: PublicError) -> tuple[int, str]:
    """The HTTP status and API code `error` is answered with."""
    for cls in type(error).__mro__:
        if issubclass(cls, PublicError) and cls in STATUS_AND_CODE:
            return STATUS_AND_CODE[cls]
    raise AssertionError("unreachable: PublicError is in the table")  # pragma: no cover


def error_body(code: str, message: str) -> JsonObject:
    """The API error format of api.md."""
    return {"error": {"code": code, "message": message}}


def error_answer(exc: BaseException) -> tuple[int, JsonObject, PublicError]:
    """Status and JSON body for `exc`, and the public error they were made from."""
    error = public_error(exc)
    status, code = status_and_code(error)
    return status, error_body(code, error.message), error
