"""Fixtures: an app over the scripted engine, served through aiohttp's test client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient

from ferrumc.runtime.tokenizer import Tokenizer
from ferrumc.server.app import ServerSettings, create_app
from ferrumc.tests.server.fakes import (
    ScriptedExecutor,
    scripted_engine,
    served_model,
    tiny_tokenizer,
)


@dataclass
class Served:
    client: TestClient
    executor: ScriptedExecutor


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return tiny_tokenizer()


@pytest.fixture
def serve(aiohttp_client, tokenizer) -> Callable[..., Awaitable[Served]]:
    """`await serve(settings=..., then_eos=..., delay_s=..., max_batch_size=..., max_context=...)`."""

    async def make(
        settings: ServerSettings | None = None,
        *,
        then_eos: bool = True,
        delay_s: float = 0.0,
        max_batch_size: int = 4,
        max_context: int = 256,
    ) -> Served:
        engine, executor = scripted_engine(
            tokenizer, then_eos=then_eos, delay_s=delay_s, max_batch_size=max_batch_size
        )
        executor.max_context = max_context
        app = create_app(engine, served_model(tokenizer, max_context), settings)
        return Served(await aiohttp_client(app), executor)

    return make
