"""ASGI: POST /v1/predict answered before FastAPI's router.

The prediction itself (form parsing, checks, the batcher, the JSON body) is a small
part of what a request costs on the event loop: FastAPI's routing, its exception
and exit-stack layers, dependency solving and request/response wrappers cost more
(about a quarter of the server process's CPU per request under load). This layer,
innermost of the app's middleware, answers the hot route with the same handler
(`routes.predict_response`) and the same error bodies, so the access log, the HTTP
metrics, CORS and the upload guard around it see no difference. The route stays
registered: it documents the endpoint in OpenAPI and answers where this layer
steps aside (a `root_path`, another method).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api_service.errors import http_error_response
from api_service.routes import PREDICT_PATH, predict_response, router


class PredictFastPath:
    """Answer POST `PREDICT_PATH` with `predict_response`; pass anything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(
            r for r in router.routes if isinstance(r, APIRoute) and r.path == PREDICT_PATH
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PREDICT_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")  # the router strips it; leave such requests to it
        ):
            await self.app(scope, receive, send)
            return
        # What routing would have stored: the access log and the HTTP metrics label
        # the request with the matched route's path.
        scope["route"] = self.route
        request = Request(scope, receive, send)
        try:
            response = await predict_response(request)
        except HTTPException as exc:  # what the app's ExceptionMiddleware would answer
            response = http_error_response(exc)
        # Anything else propagates: the access-log middleware answers it with a 500.
        await response(scope, receive, send)
