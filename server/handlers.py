"""One handler per endpoint: parse the body into a typed request, generate, answer as a stream or a whole.

The chat and completion handlers share one path: prompt ids -> engine requests (n per prompt)
-> a Generation -> choice events -> response chunks, which are either sent as server-sent events
or folded into one JSON object. A client that goes away (its handler is cancelled, or a write
fails) aborts its generation, which frees its KV pages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..errors import RequestError
from ..runtime.types import Request, SamplingParams
from .async_engine import Ended, Generation, QueueFull
from .errors import APIError, from_request_error, invalid
from .protocol import check_model, parse_chat, parse_completion
from .responses import (
    ChoiceEvent,
    Chunk,
    Meta,
    chat_chunks,
    choice_events,
    completion_chunks,
    fold_chat,
    fold_completion,
)
from .state import CHAT, ENGINE, METRICS, MODEL, SETTINGS, STATE, TOKEN_TEXT

_SURROGATE = re.compile("[\ud800-\udfff]")

# Render arguments a client's chat_template_kwargs may not override.
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_chat(await read_json(request))
    model = app[MODEL]
    check_model(req.model, model.name)
    if CHAT not in app:
        raise invalid(
            "this model has no chat template; send a plain prompt to /v1/completions",
            "messages",
            "no_chat_template",
        )
    kwargs = dict(req.template_kwargs or {})
    if reserved := sorted(RESERVED_TEMPLATE_KWARGS & kwargs.keys()):
        raise invalid(
            f"chat_template_kwargs may not set {', '.join(reserved)}", "chat_template_kwargs"
        )
    try:
        prompt = await asyncio.to_thread(
            app[CHAT].encode,
            req.messages,
            add_generation_prompt=req.add_generation_prompt,
            **kwargs,
        )
    except RequestError as e:  # the template refused the conversation
        raise from_request_error(e, "messages") from None
    meta = _meta(request, "chatcmpl")
    generation = _generate(request, meta, [prompt], req.params, req.n, "messages")
    chunks = chat_chunks(
        meta,
        _observed(request, choice_events(generation, _hidden(request)), req.n),
        n=req.n,
        text=app[TOKEN_TEXT],
        logprobs=req.logprobs,
        include_usage=req.include_usage or not req.stream,
    )
    if req.stream:
        return await _stream(request, generation, chunks)
    return await _whole(generation, fold_chat(meta, chunks))


async def completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_completion(await read_json(request))
    model = app[MODEL]
    check_model(req.model, model.name)
    tokenizer = model.tokenizer
    prompts = [
        list(p) if isinstance(p, tuple) else await asyncio.to_thread(tokenizer.encode, p)
        for p in req.prompts
    ]
    echo = None
    if req.echo:
        echo = [p if isinstance(p, str) else tokenizer.decode(p) for p in req.prompts]
    meta = _meta(request, "cmpl")
    generation = _generate(request, meta, prompts, req.params, req.n, "prompt")
    chunks = completion_chunks(
        meta,
        _observed(request, choice_events(generation, _hidden(request)), req.n),
        n=req.n,
        text=app[TOKEN_TEXT],
        logprobs=req.logprobs,
        include_usage=req.include_usage or not req.stream,
        echo=echo,
    )
    if req.stream:
        return await _stream(request, generation, chunks)
    return await _whole(generation, fold_completion(meta, chunks))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request)]})


async def get_model(request: web.Request) -> web.Response:
    check_model(request.match_info["model"], request.app[MODEL].name)
    return web.json_response(_model_card(request))


async def health(request: web.Request) -> web.Response:
    app = request.app
    engine, state, model = app[ENGINE], app[STATE], app[MODEL]
    stats = engine.stats()
    body = {
        "status": "draining" if state.draining else "ok",
        "model": model.name,
        "target": model.target,
        "uptime_s": round(time.time() - state.started, 3),
        "queue_depth": stats.waiting,
        "running": stats.running,
        "in_flight": engine.in_flight,  # sequences the server has handed the engine, not finished
        "kv_cache": {
            "pages_used": stats.kv_pages_used,
            "pages_total": stats.kv_pages_total,
            "usage": round(stats.kv_pages_used / max(stats.kv_pages_total, 1), 6),
        },
    }
    return web.json_response(body, status=503 if state.draining else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    # generate_latest writes the 0.0.4 text format, which every Prometheus version scrapes.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


# --- shared by the generating handlers ------------------------------------------------------


async def read_json(request: web.Request) -> object:
    """The body as JSON; malformed JSON or text that is not UTF-8 is a 400 (too large: 413)."""
    raw = await request.read()
    try:
        return _no_lone_surrogates(json.loads(raw))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise APIError(
            400, f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None


def _no_lone_surrogates(value: object) -> object:
    """JSON may escape half a UTF-16 pair, which no tokenizer or UTF-8 encoder takes: U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, list):
        return [_no_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    return value


def _meta(request: web.Request, prefix: str) -> Meta:
    model = request.app[MODEL]
    return Meta(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model.name, model.fingerprint)


def _model_card(request: web.Request) -> dict[str, Any]:
    app = request.app
    return {
        "id": app[MODEL].name,
        "object": "model",
        "created": int(app[STATE].started),
        "owned_by": "ferrumc",
        "max_model_len": app[MODEL].max_context,
    }


def _hidden(request: web.Request) -> frozenset[int]:
    return frozenset(request.app[MODEL].tokenizer.eos_token_ids)


def _generate(
    request: web.Request,
    meta: Meta,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    n: int,
    prompt_param: str,
) -> Generation:
    """Queue n sequences per prompt (choice k = prompt k // n); choice j's seed is seed + j."""
    app = request.app
    limit = app[MODEL].max_context
    for prompt in prompts:
        _check_context(len(prompt), params.max_tokens, limit, prompt_param)
    if app[STATE].draining:
        raise APIError(503, "the server is shutting down", code="shutting_down")
    requests = []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            seed = None if params.seed is None else (params.seed + j) % 2**64
            requests.append(
                Request(f"{meta.id}-{p * n + j}", tuple(prompt), replace(params, seed=seed))
            )
    try:
        return app[ENGINE].generate(requests)
    except QueueFull as e:
        retry = app[SETTINGS].retry_after_s
        raise APIError(
            503,
            f"the server is at capacity ({e}); retry in {retry} s",
            code="server_overloaded",
            headers={"Retry-After": str(retry)},
        ) from None
    except RequestError as e:
        raise from_request_error(e, prompt_param) from None


def _check_context(prompt: int, max_tokens: int | None, limit: int, param: str) -> None:
    where = "messages" if param == "messages" else "prompt"
    if prompt >= limit:
        raise invalid(
            f"this model's maximum context length is {limit} tokens, and your {where} "
            f"has {prompt} tokens, leaving no room for a completion; shorten the {where}",
            param,
            "context_length_exceeded",
        )
    if max_tokens is not None and prompt + max_tokens > limit:
        raise invalid(
            f"this model's maximum context length is {limit} tokens; you requested "
            f"{prompt + max_tokens} tokens ({prompt} in the {where}, {max_tokens} in the "
            f"completion); reduce the length of the {where} or the completion",
            param,
            "context_length_exceeded",
        )


async def _observed(
    request: web.Request, events: AsyncIterator[ChoiceEvent], n: int
) -> AsyncIterator[ChoiceEvent]:
    """The events, unchanged, with time to first token, inter-token latency and counts recorded."""
    metrics, start = request.app[METRICS], time.monotonic()
    seen: dict[int, int] = {}  # choice -> tokens so far
    last: dict[int, float] = {}
    async for event in events:
        now = time.monotonic()
        i = event.index
        if i not in seen and i % n == 0:
            metrics.prompt(event.prompt_tokens)  # once per prompt, however many choices
        new = event.completion_tokens - seen.get(i, 0)
        if new > 0:
            if i not in last:
                metrics.first_token(now - start)
            metrics.tokens(new, now - last[i] if i in last else None)
            last[i] = now
        seen[i] = event.completion_tokens
        if event.finish_reason is not None:
            metrics.finished(event.finish_reason, now - start)
        yield event


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def _stream(
    request: web.Request, generation: Generation, chunks: AsyncIterator[Chunk]
) -> web.StreamResponse:
    """Server-sent events: one `data:` per chunk, then `data: [DONE]`."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
        }
    )
    try:
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(_sse(chunk))
        except Ended as e:  # the status is sent already: report it in the stream
            await response.write(_sse(APIError(e.status, str(e), code=e.code).body()))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream
    finally:
        generation.abort()
    return response


async def _whole(generation: Generation, body: Awaitable[dict[str, Any]]) -> web.Response:
    try:
        return web.json_response(await body)
    except Ended as e:
        raise APIError(e.status, str(e), code=e.code) from None
    finally:
        generation.abort()
