"""What the app shares between handlers: the served model, settings and state, under typed AppKeys."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from .. import __version__
from ..frontend.model import TokenizerInfo
from ..runtime.chat_template import ChatEncoder
from ..runtime.tokenizer import Tokenizer
from .async_engine import AsyncEngine
from .metrics import Metrics
from .token_text import TokenText


@dataclass(frozen=True)
class ServedModel:
    """The model behind the API: its name for clients, tokenizer and limits."""

    name: str
    tokenizer: Tokenizer
    info: TokenizerInfo
    max_context: int  # tokens one sequence may hold, prompt and completion
    target: str = "llvm"  # what /health reports: a TVM target, or "interpreter"

    @property
    def fingerprint(self) -> str:
        return f"ferrumc-{__version__}-{self.target}"


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    max_body_bytes: int = 4 * 1024 * 1024
    max_waiting: int = 64  # sequences queued beyond the engine's batch before a 503
    retry_after_s: int = 1


@dataclass
class ServerState:
    started: float = field(default_factory=time.time)
    draining: bool = False


ENGINE = web.AppKey("engine", AsyncEngine)
MODEL = web.AppKey("model", ServedModel)
CHAT = web.AppKey("chat", ChatEncoder)  # absent when the model has no chat template
TOKEN_TEXT = web.AppKey("token_text", TokenText)
SETTINGS = web.AppKey("settings", ServerSettings)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", ServerState)
