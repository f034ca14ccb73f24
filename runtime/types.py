"""The runtime's request and output types, shared by the engine, the terminal chat and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; defaults are OpenAI's."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: up to the context window
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; N: the chosen token's logprob and the top N


@dataclass(frozen=True)
class Request:
    """One generation: a tokenized prompt and its sampling parameters."""

    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams = SamplingParams()


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), best first


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request: new tokens, their text, and whether it ended."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str  # the new text; never ends inside a UTF-8 character or a possible stop string
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache, not computed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_pages_used: int
    kv_pages_total: int
    extra: dict[str, float] = field(default_factory=dict)


class Executor(Protocol):
    """Runs the model on a paged KV cache: the compiled VM, or the numpy interpreter in tests.

    An executor whose cache is sized for a batch may also have `max_batch_size` (sequences per
    call) and `prefill_chunk_size` (tokens per call, a decode step's one per sequence included);
    the engine never exceeds them. One with `fork_sequence(parent, child, length)`, which starts
    `child` with `parent`'s first `length` tokens already cached, gets the engine's prefix cache.
    """

    vocab_size: int
    max_context: int  # tokens one sequence may hold
    page_size: int
    num_pages: int

    def add_sequence(self, seq_id: int) -> None: ...
    def remove_sequence(self, seq_id: int) -> None: ...
    def prefill(self, seq_ids: list[int], chunks: list[list[int]]) -> np.ndarray:
        """Append each chunk to its sequence; logits [len(seq_ids), vocab] of each chunk's last token."""
        ...

    def decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray:
        """Append one token per sequence; logits [len(seq_ids), vocab]."""
        ...

    def free_pages(self) -> int: ...
