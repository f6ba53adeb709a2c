"""The one place errors become HTTP answers: `{"error": "<CodeName>", "detail": "..."}`."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from trackd.errors import RateLimited, TrackdError, Unavailable

log = logging.getLogger("trackd.api")

_HTTP_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "RateLimited",
    503: "ServiceUnavailable",
}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONBody:
    return JSONBody({"error": code, "detail": detail}, status_code=status, headers=headers)


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(TrackdError)
    async def _trackd(_r: Request, exc: TrackdError) -> JSONBody:
        headers = None
        if isinstance(exc, RateLimited | Unavailable):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(exc.status, exc.code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> JSONBody:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error_response(422, "ValidationError", f"{_field(tuple(first['loc']))}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONBody:
        code = _HTTP_NAMES.get(exc.status_code, "Error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONBody:
        log.exception("unhandled error: %s", type(exc).__name__)
        return error_response(500, "InternalError", "an unexpected error occurred; it has been logged")


class JSONBody(Response):
    """JSON rendered with orjson (datetimes as ISO 8601)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, default=str)
