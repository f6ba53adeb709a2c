"""The one error hierarchy of trackd. `api/errors.py` alone maps these to HTTP answers."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class TrackdError(Exception):
    """Base of every error trackd raises on purpose. `code` is the public `error` name."""

    code = "Error"
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationError(TrackdError):
    """Input that cannot be understood. `field` names where (e.g. `[3].position.lat`)."""

    code = "ValidationError"
    status = 422

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.reason = detail  # without the field name


class EnvelopeError(ValidationError):
    """A broken transport envelope (e.g. an X12 interchange): answered 400, not 422."""

    code = "MalformedEnvelope"
    status = 400


class PayloadTooLarge(TrackdError):
    code = "PayloadTooLarge"
    status = 413


class Unauthorized(TrackdError):
    code = "Unauthorized"
    status = 401


class NotFound(TrackdError):
    code = "NotFound"
    status = 404


class Conflict(TrackdError):
    code = "Conflict"
    status = 409


class RateLimited(TrackdError):
    code = "RateLimited"
    status = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(TrackdError):
    """A backing service (the database) is down: answered 503 with Retry-After."""

    code = "ServiceUnavailable"
    status = 503

    def __init__(self, detail: str, retry_after_s: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ConfigError(TrackdError):
    """A bad or missing setting: the process stops with one line on stderr."""

    code = "ConfigError"


def detached(exc: E) -> E:
    """`exc` without its traceback and the errors it was raised from, to keep for later (a
    quarantine row). A traceback holds the frames it passed through, and each frame the ones that
    called it: kept in a frame's list, an error would hold that frame itself, a cycle that only
    the cyclic collector frees, with everything the frame holds (a whole MQTT batch)."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc
