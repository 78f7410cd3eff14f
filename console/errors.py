"""The console's error shape, one for every route: ``{"error": "...", "parameter": "..."}``.

Raise :class:`ApiError` (or one of the helpers) anywhere in a route or dependency; the handlers
installed by :func:`install_handlers` turn it, FastAPI's validation errors (400, never 422),
Starlette's 404/405, ClickHouse outages (503) and a Manage action whose event Kafka did not
acknowledge (503 with ``Retry-After``: it may or may not be written, and a retry with the same
``Idempotency-Key`` is safe because every id it publishes is derived from the key) into that JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from consumers.clickhouse.errors import ClickHouseError
from pipeline.infra.logs import fields
from pipeline.infra.publish import PublishError

__all__ = [
    "PUBLISH_RETRY_AFTER_SECONDS",
    "ApiError",
    "bad_parameter",
    "conflict",
    "error_response",
    "forbidden",
    "install_handlers",
    "not_found",
    "unauthorized",
]

log = logging.getLogger(__name__)

#: When to try a Manage action again after Kafka did not acknowledge its event.
PUBLISH_RETRY_AFTER_SECONDS: Final = 5


class ApiError(Exception):
    """An answer other than success: status, message, and for a 400 the parameter at fault."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        parameter: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.parameter = parameter
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.parameter is not None:
            out["parameter"] = self.parameter
        return {**out, **self.extra}


def bad_parameter(parameter: str, error: str) -> ApiError:
    """400 naming ``parameter``; ``error`` says what is wrong and what to give instead."""
    return ApiError(400, f"{parameter}: {error}", parameter=parameter)


def unauthorized(error: str) -> ApiError:
    return ApiError(401, error, headers={"WWW-Authenticate": 'Bearer realm="metering"'})


def forbidden(reason: str, error: str) -> ApiError:
    return ApiError(403, error, extra={"reason": reason})


def not_found(error: str) -> ApiError:
    return ApiError(404, error)


def conflict(error: str) -> ApiError:
    return ApiError(409, error)


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"Cache-Control": "no-store", **exc.headers}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Every error of ``app`` in the product's shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(_from_validation(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}: see /api/v1/openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not supported on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(ApiError(exc.status_code, message, headers=exc.headers or {}))

    async def clickhouse_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("console: ClickHouse failed", extra=fields(path=request.url.path, error=str(exc)))
        return error_response(ApiError(503, f"the billing database did not answer: {exc}. Try again shortly."))

    async def publish_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("console: Kafka did not acknowledge an event", extra=fields(path=request.url.path, error=str(exc)))
        error = ApiError(
            503,
            f"the change could not be confirmed: {exc}. It may or may not have been recorded: send the same request "
            f"again with the same Idempotency-Key in {PUBLISH_RETRY_AFTER_SECONDS} s or later (safe: what it records "
            "is identified by that key, so it counts once)",
            extra={"retry_safe_with": "Idempotency-Key"},
            headers={"Retry-After": str(PUBLISH_RETRY_AFTER_SECONDS)},
        )
        return error_response(error)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PublishError, publish_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClickHouseError, clickhouse_error)


def _from_validation(errors: Sequence[Any]) -> ApiError:
    """The first validation error as a 400 naming its parameter (a body field by its name)."""
    if not errors:
        return ApiError(400, "the request is not valid", parameter="request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    where, names = (loc[0], loc[1:]) if loc else ("request", [])
    parameter = ".".join(names) if names else where  # a body field by its path, a query parameter by name
    message = str(first.get("msg", "not valid"))
    if first.get("type") == "json_invalid":
        parameter, message = "body", "is not valid JSON: send a JSON object"
    elif first.get("type") == "missing":
        message = "is required"
    return bad_parameter(parameter, message)
