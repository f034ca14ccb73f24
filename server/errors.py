"""HTTP errors in OpenAI's shape, and the middleware that turns every failure into one (never a traceback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from ..errors import RequestError

log = logging.getLogger("ferrumc.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# OpenAI's error `type` per status, as its API and SDK use them.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error for the client: status, message, and the param it concerns."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> APIError:
    """A 400 naming the offending param."""
    return APIError(400, message, param=param, code=code)


def from_request_error(e: RequestError, param: str | None = None) -> APIError:
    """The engine's or the chat template's refusal of a request, as a 400."""
    return APIError(
        400, str(e), param=getattr(e, "param", None) or param, code=getattr(e, "code", None)
    )


def _from_http_exception(e: web.HTTPException, request: web.Request) -> APIError:
    if e.status == 413:
        return APIError(
            413,
            f"the request body is too large: {e.text} Send a shorter prompt.",
            code="request_too_large",
        )
    if e.status == 404:
        return APIError(404, f"no route {request.method} {request.path}", code="not_found")
    if e.status == 405:
        allowed = ", ".join(sorted(getattr(e, "allowed_methods", ()) or ()))
        return APIError(
            405,
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            code="method_not_allowed",
            headers={"Allow": allowed},
        )
    return APIError(e.status, e.text or e.reason, code=None)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as an OpenAI-shaped error; an unexpected one is logged and a generic 500."""
    try:
        return await handler(request)
    except APIError as e:
        return e.response()
    except RequestError as e:
        return from_request_error(e).response()
    except web.HTTPException as e:
        if e.status < 400:  # redirects and the like pass through
            raise
        return _from_http_exception(e, request).response()
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away: nobody to answer
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return APIError(
            500, "the server had an internal error; it has been logged", code="internal_error"
        ).response()
