"""A request's state inside the engine, and a whole request's output merged from its step outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .detokenizer import IncrementalDetokenizer, StopStrings
from .types import FinishReason, Request, RequestOutput, TokenLogprob


class EngineTokenizer(Protocol):
    """What the engine needs of runtime.tokenizer.Tokenizer."""

    eos_token_ids: tuple[int, ...]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...


@dataclass(eq=False)
class SequenceState:
    """One request inside the engine: its tokens, where its KV cache stands, its text pipeline."""

    request: Request
    ids: list[int]  # prompt, then generated tokens
    rng: np.random.Generator
    detokenizer: IncrementalDetokenizer
    stops: StopStrings
    seq_id: int = -1  # the executor's id while admitted
    computed: int = 0  # tokens in the KV cache
    cached_tokens: int = 0  # prompt tokens forked from the prefix cache at admission
    prefilling: bool = True  # until its next token is sampled after (re)admission
    finish_reason: FinishReason | None = None
    # What the current step produced, handed out as one RequestOutput.
    new_ids: list[int] = field(default_factory=list)
    new_text: list[str] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.ids) - self.prompt_len

    def take_output(self) -> RequestOutput:
        """What this step produced, as one RequestOutput; the step's buffers start over."""
        out = RequestOutput(
            request_id=self.request.request_id,
            token_ids=tuple(self.new_ids),
            text="".join(self.new_text),
            logprobs=tuple(self.new_logprobs),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_len,
            completion_tokens=self.num_generated,
            cached_tokens=self.cached_tokens,
        )
        self.new_ids, self.new_text, self.new_logprobs = [], [], []
        return out


@dataclass
class Completion:
    """A whole request's output, merged from its step outputs."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def add(self, out: RequestOutput) -> None:
        self.token_ids.extend(out.token_ids)
        self.text += out.text
        self.logprobs.extend(out.logprobs)
        self.finish_reason = out.finish_reason
        self.prompt_tokens = out.prompt_tokens
        self.cached_tokens = out.cached_tokens
