"""The engine on its own thread, with an asyncio face: requests in, per-request queues of outputs back.

One background thread loops `engine.step()` while any request is unfinished and sleeps on the
engine's work signal when idle, so generation never blocks the event loop. Each step's outputs
cross to the loop in one `call_soon_threadsafe` and are routed to the queue of the HTTP request
that asked for them. The engine admits first come, first served; in front of it the server
bounds how many sequences may be in flight, and refuses more with QueueFull (a 503).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from ..runtime.types import EngineStats, Request, RequestOutput

log = logging.getLogger("ferrumc.server")

# How often the idle engine thread checks whether it should stop, in seconds.
IDLE_POLL_S = 0.25


class EngineLike(Protocol):
    """What the server needs of runtime.engine.Engine (tests pass a fake)."""

    max_batch_size: int

    def add_request(self, request: Request) -> None: ...
    def abort(self, request_id: str) -> None: ...
    def step(self) -> list[RequestOutput]: ...
    def has_unfinished(self) -> bool: ...
    def wait_for_work(self, timeout: float | None = None) -> bool: ...
    def stats(self) -> EngineStats: ...


class QueueFull(Exception):
    """More sequences are in flight than the server admits; retry later."""


class Ended(Exception):
    """Requests were ended before they finished: the engine raised, or the server is stopping now.

    Carries the HTTP status and OpenAI error code the handlers answer with.
    """

    def __init__(self, message: str, *, status: int = 500, code: str = "engine_failed") -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Generation:
    """One HTTP request's sequences (its n choices, per prompt), and the queue their outputs arrive on."""

    def __init__(self, engine: AsyncEngine, request_ids: Sequence[str]) -> None:
        self.request_ids = tuple(request_ids)
        self._engine = engine
        self._queue: asyncio.Queue[tuple[int, RequestOutput] | Ended] = asyncio.Queue()
        self._open = set(range(len(request_ids)))

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(choice index, output) as steps produce them, until every sequence has finished."""
        while self._open:
            item = await self._queue.get()
            if isinstance(item, Ended):
                self._open.clear()
                raise item
            index, out = item
            if out.finished:
                self._open.discard(index)
            yield index, out

    def abort(self) -> None:
        """Stop the sequences still running (the client went away); their KV pages are freed."""
        for index in sorted(self._open):
            self._engine.abort(self.request_ids[index])
        self._open.clear()

    @property
    def finished(self) -> bool:
        return not self._open

    def _deliver(self, item: tuple[int, RequestOutput] | Ended) -> None:
        self._queue.put_nowait(item)


class AsyncEngine:
    """Owns the engine thread; `generate` and `abort` are called from the event loop."""

    def __init__(self, engine: EngineLike, *, max_waiting: int = 64) -> None:
        self.engine = engine
        # In flight: running in the engine, waiting in its queue, or not yet taken in.
        self.capacity = engine.max_batch_size + max_waiting
        self._routes: dict[str, tuple[Generation, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="ferrumc-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Abort what is left and join the thread (the server drains requests before this)."""
        for request_id in list(self._routes):
            self.engine.abort(request_id)
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def in_flight(self) -> int:
        return len(self._routes)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def generate(self, requests: Sequence[Request]) -> Generation:
        """Queue requests as one Generation; raises QueueFull, or RequestError if one is invalid."""
        if self.in_flight + len(requests) > self.capacity:
            raise QueueFull(
                f"{self.in_flight} sequences are in flight and this server admits {self.capacity}"
            )
        generation = Generation(self, [r.request_id for r in requests])
        for index, request in enumerate(requests):
            try:
                self.engine.add_request(request)
            except Exception:
                generation._open = set(range(index))
                generation.abort()
                raise
            self._routes[request.request_id] = (generation, index)
        return generation

    def abort(self, request_id: str) -> None:
        if self._routes.pop(request_id, None) is not None:
            self.engine.abort(request_id)

    # --- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.engine.wait_for_work(IDLE_POLL_S):
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                log.exception("the engine failed in step(); failing its requests")
                self._call(self.end_all, Ended(f"the engine failed: {type(e).__name__}: {e}"))
                self._stop.wait(IDLE_POLL_S)  # no hot loop if it keeps failing
                continue
            if outputs:
                self._call(self._dispatch, outputs)

    def _call(self, fn: object, arg: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, arg)  # type: ignore[arg-type]
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            self._stop.set()

    # --- back on the event loop ---------------------------------------------------------------

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:
                continue  # aborted by its client meanwhile
            generation, index = route
            if out.finished:
                del self._routes[out.request_id]
            generation._deliver((index, out))

    def end_all(self, error: Ended) -> None:
        """End every request in flight with `error` and free its KV pages."""
        for request_id, (generation, _) in list(self._routes.items()):
            self.engine.abort(request_id)
            generation._deliver(error)
        self._routes.clear()
