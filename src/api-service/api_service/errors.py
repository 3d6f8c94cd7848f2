"""The service's errors: one enum of stable codes and one JSON body for all of them.

Every refusal, whether a route, an exception handler or an ASGI middleware answers
it, is `{"error": {"code", "message"}}` built by `error_body`, so clients parse one
shape and the codes cannot drift between the layers.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_service.inputs import InputError

log = logging.getLogger("api_service")


class ErrorCode(StrEnum):
    """The machine-readable `error.code` of every answer that is not a success."""

    BAD_REQUEST = "bad_request"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    OVERLOADED = "overloaded"
    TOO_MANY_FILES = "too_many_files"
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_SMALL = "image_too_small"


# Starlette's own HTTP errors (unknown route, wrong method) and the codes they get.
_STARLETTE_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


def error_body(code: ErrorCode | str, message: str) -> bytes:
    """The JSON error body, UTF-8: `{"error": {"code": code, "message": message}}`."""
    return orjson.dumps({"error": {"code": str(code), "message": message}})


def error_response(status: int, code: ErrorCode | str, message: str) -> Response:
    """An HTTP `status` answer carrying `error_body(code, message)`."""
    return Response(error_body(code, message), status_code=status, media_type="application/json")


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable code, answered as `error_body`."""

    def __init__(self, status_code: int, code: ErrorCode, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.code = code

    @classmethod
    def from_input(cls, exc: InputError, message: str | None = None) -> ApiError:
        """The refusal of an upload (`InputError`), optionally reworded."""
        return cls(exc.status, ErrorCode(exc.code), exc.message if message is None else message)


def http_error_response(exc: StarletteHTTPException) -> Response:
    """The answer to an HTTP error: its status, and its `ApiError` code or Starlette's."""
    code = getattr(exc, "code", None) or _STARLETTE_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
    return error_response(exc.status_code, code, str(exc.detail))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return http_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return error_response(422, ErrorCode.INVALID_REQUEST, problems)


def unexpected_error_response(exc: Exception) -> Response:
    """Log `exc` with its traceback and answer 500 `internal_error`."""
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL_ERROR, "internal error; see the server log")


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    # The access-log middleware answers these first, with the request id. This is what
    # is left: an error after the response started (the middleware re-raises it, and the
    # server cuts the connection) or one raised by that middleware itself.
    return unexpected_error_response(exc)


def add_error_handlers(app: FastAPI) -> None:
    """Answer HTTP errors, invalid requests and any unexpected exception as `error_body`."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
