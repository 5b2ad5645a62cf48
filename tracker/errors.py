"""The API's errors: every one is `{"error": "<Code>", "detail": "..."}` JSON, never HTML or a traceback.

(Announce and scrape answer with bencoded failure reasons instead: tracker/announce.py `failure`.)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hfbt.manifest import ManifestError
from tracker.requestlog import redact_path
from tracker.unavailable import StoreUnavailable

# The logger of the tracker's HTTP surface: request lines and route errors share one name to filter on.
log = logging.getLogger("tracker.app")

_HTTP_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "TooLarge",
    422: "BadRequest",
}


class ApiError(Exception):
    """Raised anywhere below a route: answered as `status` with `{"error": code, "detail": detail}`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.detail, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return error_response(422, "BadRequest", "; ".join(parts) or "invalid request")


async def _manifest_error(request: Request, exc: ManifestError) -> JSONResponse:
    return error_response(422, "BadRequest", str(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "HTTPError"), str(exc.detail))


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A shared store (Redis, PostgreSQL) is down or slow: the caller retries, the tracker stays up.
    log.warning("event=store_unavailable path=%s detail=%r", redact_path(request.url.path), str(exc))
    return error_response(503, "Unavailable", f"{exc}; retry later", {"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this handler, so uvicorn logs the traceback; this line names the route.
    log.error("event=internal_error path=%s error=%s", redact_path(request.url.path), type(exc).__name__)
    return error_response(500, "Internal", "internal error in the tracker; see its log")


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in (
        (ApiError, _api_error),
        (RequestValidationError, _validation_error),
        (ManifestError, _manifest_error),
        (StarletteHTTPException, _http_error),
        (StoreUnavailable, _store_unavailable),
        (Exception, _unexpected),
    ):
        app.exception_handler(exc_type)(handler)
