"""`ferrumc serve`: open the model, start the engine, and serve the API until Ctrl-C or SIGTERM.

On either signal aiohttp stops accepting connections, lets in-flight requests finish (up to
`drain_timeout_s`), then the app's cleanup stops the engine thread, and the process exits 0.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass, field

import click
from aiohttp import web

from ..runtime.engine import Engine
from ..runtime.launch import LaunchOptions, launch
from .app import ServedModel, ServerSettings, create_app

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the one bound is printed)
    served_name: str | None = None  # what clients send as `model`; default: the MODEL argument
    drain_timeout_s: float = 30.0
    settings: ServerSettings = field(default_factory=ServerSettings)


def serve(ref: str, launch_options: LaunchOptions, options: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opened = launch(ref, launch_options)
    engine = Engine(opened.executor, opened.tokenizer, max_batch_size=launch_options.max_batch_size)
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
    print(
        f"ferrumc: serving {model.name!r} ({opened.kind}, {model.target}, loaded in "
        f"{opened.load_seconds:.1f} s) on http://{host}:{port}/v1",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(
        app,
        sock=sock,
        shutdown_timeout=options.drain_timeout_s,
        handler_cancellation=True,  # a client that disconnects aborts its generation
        access_log=None,
        print=None,
    )
    print("ferrumc: stopped", file=sys.stderr, flush=True)


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
