"""`create_app(engine, model)`: the OpenAI-compatible HTTP API, every route in one place.

The app holds its state under typed AppKeys; the engine thread lives exactly as long as the app
(cleanup_ctx), so aiohttp's shutdown drains in-flight requests before the engine stops.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

from aiohttp import web

from ..runtime.chat_template import ChatEncoder
from . import handlers
from .async_engine import AsyncEngine, EngineLike
from .errors import APIError, Handler, errors_middleware
from .metrics import Metrics
from .state import (
    CHAT,
    ENGINE,
    METRICS,
    MODEL,
    SETTINGS,
    STATE,
    TOKEN_TEXT,
    ServedModel,
    ServerSettings,
    ServerState,
)
from .token_text import TokenText

__all__ = ["ServedModel", "ServerSettings", "create_app"]


def create_app(
    engine: EngineLike, model: ServedModel, settings: ServerSettings | None = None
) -> web.Application:
    settings = settings or ServerSettings()
    app = web.Application(
        middlewares=[metrics_middleware, errors_middleware, auth_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[MODEL], app[SETTINGS] = model, settings
    app[METRICS], app[STATE] = Metrics(model.name), ServerState()
    app[TOKEN_TEXT] = TokenText(model.tokenizer.hf)
    if model.info.chat_template:
        app[CHAT] = ChatEncoder(model.tokenizer.hf, model.info)

    async def engine_thread(app: web.Application) -> AsyncIterator[None]:
        app[ENGINE] = AsyncEngine(engine, max_waiting=settings.max_waiting)
        app[ENGINE].start()
        app[METRICS].attach(app[ENGINE])
        yield
        app[METRICS].attach(None)
        await app[ENGINE].stop()

    async def start_draining(app: web.Application) -> None:
        app[STATE].draining = True

    app.cleanup_ctx.append(engine_thread)
    app.on_shutdown.append(start_draining)

    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model:.+}", handlers.get_model)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics", handlers.metrics)
    return app


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an API key set, the /v1 routes need it as a bearer token (health and metrics stay open)."""
    key = request.app[SETTINGS].api_key
    if key is not None and request.path.startswith("/v1"):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), key):
            raise APIError(
                401,
                "missing or incorrect API key: send it as `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    request.app[METRICS].request(name, request.method, response.status)
    return response
