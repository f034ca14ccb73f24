"""`ferrumc serve`: open the model, start the engine, and serve the API until Ctrl-C or SIGTERM.

On the first signal the server stops accepting connections, lets in-flight requests finish (up
to `drain_timeout_s`), then the app's cleanup stops the engine thread, and the process exits 0.
A second signal, or the drain timing out, ends the requests still running at once, each with a
503 `server_stopping` error (inside the stream, for streams), and the process exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field

import click
from aiohttp import web

from ..runtime.engine import Engine
from ..runtime.launch import LaunchOptions, launch
from .app import ServedModel, ServerSettings, create_app
from .async_engine import Ended
from .state import ENGINE

DEFAULT_MODEL = "smollm2"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPING = "the server is stopping; retry the request"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the one bound is printed)
    served_name: str | None = None  # what clients send as `model`; default: the MODEL argument
    drain_timeout_s: float = 30.0
    settings: ServerSettings = field(default_factory=ServerSettings)
    prefix_cache_size: int = 8  # finished requests kept for prefixes: runtime/prefix_cache.py


def serve(ref: str, launch_options: LaunchOptions, options: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opened = launch(ref, launch_options)
    engine = Engine(
        opened.executor,
        opened.tokenizer,
        max_batch_size=launch_options.max_batch_size,
        prefix_cache_size=options.prefix_cache_size,
    )
    model = ServedModel(
        name=options.served_name or ref,
        tokenizer=opened.tokenizer,
        info=opened.tokenizer_info,
        max_context=opened.executor.max_context,
        target="interpreter" if opened.kind == "interpreter" else launch_options.target,
    )
    app = create_app(engine, model, options.settings)
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    # Tests and scripts wait for this line (or poll /health).
    _say(
        f"serving {model.name!r} ({opened.kind}, {model.target}, loaded in "
        f"{opened.load_seconds:.1f} s) on http://{host}:{port}/v1"
    )
    drained = asyncio.run(_run(app, sock, options.drain_timeout_s))
    _say("stopped")
    if not drained:
        sys.exit(1)


async def _run(app: web.Application, sock: socket.socket, drain_timeout_s: float) -> bool:
    """Serve until a signal, then drain; True if every in-flight request ran to its end."""
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours, below: the first signal drains, a second stops now
        # aiohttp's own limit, a backstop: past the drain we end requests with an error first.
        shutdown_timeout=drain_timeout_s + 10,
        handler_cancellation=True,  # a client that disconnects aborts its generation
        access_log=None,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    cleanup: asyncio.Future[None] | None = None
    try:
        await web.SockSite(runner, sock).start()
        first = await signals.get()
        engine = app[ENGINE]
        _say(
            f"{first.name}: finishing {_sequences(engine.in_flight)} in flight (up to "
            f"{drain_timeout_s:g} s); signal again to end them now"
        )
        cleanup = asyncio.ensure_future(runner.cleanup())  # stops listening, waits for handlers
        again = asyncio.ensure_future(signals.get())
        done, _ = await asyncio.wait(
            (cleanup, again), timeout=drain_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        again.cancel()
        drained = cleanup in done
        if not drained:
            why = f"{again.result().name} again" if again in done else "the drain timed out"
            _say(f"{why}: ending {_sequences(engine.in_flight)} now")
            engine.end_all(Ended(STOPPING, status=503, code="server_stopping"))
        await cleanup
        return drained
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if cleanup is None:
            await runner.cleanup()


def _sequences(n: int) -> str:
    return f"{n} sequence" + ("" if n == 1 else "s")


def _say(message: str) -> None:
    print(f"ferrumc: {message}", file=sys.stderr, flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections queue from now on, even before the loop accepts them
    except OSError as e:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {e.strerror}; choose another --host or --port"
        ) from None
    return sock
