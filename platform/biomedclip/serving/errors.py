"""Request errors and the JSON shape every error response has: {"error": {"status", "field", "message"}}.

Handlers turn every failure into JSON: bad input into its 4xx, a model replica that cannot answer into 503, and
anything unexpected into a 500 that carries no stack trace (the trace goes to the replica log).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ray.serve")


class RequestError(Exception):
    """A request the service refuses; `field` names the part of the request that was wrong."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


def error_body(status: int, field: str | None, message: str) -> dict:
    return {"error": {"status": status, "field": field, "message": message}}


def error_response(status: int, field: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, field, message), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return error_response(err.status, err.field, err.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, None, str(err.detail), err.headers)  # e.g. Allow on a 405

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        return error_response(422, field, first.get("msg", "invalid request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, None, f"internal error ({type(err).__name__}); the request was not processed")
