"""Errors a request can cause, each with the HTTP status it is answered with."""
from __future__ import annotations

from core.errors import SvcError


class RequestError(SvcError):
    """A bad request: its message goes back to the client as JSON with `status`."""
    status: int = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class PayloadTooLarge(RequestError):
    status = 413


class UnknownModel(RequestError):
    status = 404


def status_of(error: SvcError) -> int:
    """The HTTP status for a user error: its own for a RequestError, 400 for any other SvcError."""
    return error.status if isinstance(error, RequestError) else 400
