"""A scripted executor under the real engine, and the tiny models' tokenizer, to test the server without a model.

Every sequence answers REPLY token by token (then EOS), whatever its prompt: logits are one-hot
and steep, so sampling at any temperature picks the scripted token. `delay_s` slows each
executor call to keep streams running while a test disconnects or floods the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ferrumc.frontend.model import TokenizerInfo
from ferrumc.runtime.engine import Engine
from ferrumc.runtime.tokenizer import Tokenizer
from ferrumc.server.app import ServedModel
from ferrumc.tests.tiny_checkpoints import (
    BOS_ID,
    CHATML_TEMPLATE,
    IM_END_ID,
    SPECIAL_TOKENS,
    build_tokenizer,
)

REPLY_TEXT = "The capital of France is Paris."
PAGE_SIZE = 16


def tiny_tokenizer() -> Tokenizer:
    return Tokenizer(
        TokenizerInfo(
            tokenizer_json=build_tokenizer().to_str(),
            chat_template=CHATML_TEMPLATE,
            bos_token=SPECIAL_TOKENS[BOS_ID],
            eos_token=SPECIAL_TOKENS[IM_END_ID],
            bos_token_id=BOS_ID,
            eos_token_ids=(IM_END_ID,),
            template_vars={"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
        )
    )


@dataclass
class ScriptedExecutor:
    """Pages counted as a paged cache would; the logits of call k of a sequence pick reply[k]."""

    reply: tuple[int, ...]
    then_eos: bool = True  # False: repeat the reply forever (for max_tokens and disconnects)
    vocab_size: int = 256
    num_pages: int = 64
    page_size: int = PAGE_SIZE
    max_context: int = 256
    delay_s: float = 0.0
    lengths: dict[int, int] = field(default_factory=dict)
    decoded: dict[int, int] = field(default_factory=dict)

    def add_sequence(self, seq_id: int) -> None:
        self.lengths[seq_id], self.decoded[seq_id] = 0, 0

    def remove_sequence(self, seq_id: int) -> None:
        del self.lengths[seq_id], self.decoded[seq_id]

    def free_pages(self) -> int:
        used = sum(-(-n // self.page_size) for n in self.lengths.values())
        return self.num_pages - used

    def prefill(self, seq_ids: list[int], chunks: list[list[int]]) -> np.ndarray:
        for s, chunk in zip(seq_ids, chunks, strict=True):
            self.lengths[s] += len(chunk)
        return self._logits(seq_ids)

    def decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray:
        for s in seq_ids:
            self.lengths[s] += 1
            self.decoded[s] += 1
        return self._logits(seq_ids)

    def _logits(self, seq_ids: list[int]) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        rows = np.zeros((len(seq_ids), self.vocab_size), np.float32)
        for i, s in enumerate(seq_ids):
            k = self.decoded[s]
            if k < len(self.reply) or not self.then_eos:
                token = self.reply[k % len(self.reply)]
            else:
                token = IM_END_ID
            rows[i, token] = 40.0
            rows[i, (token + 1) % self.vocab_size] = 20.0  # a runner-up, for top_logprobs
        return rows


def served_model(tokenizer: Tokenizer, max_context: int = 256) -> ServedModel:
    return ServedModel(
        name="tiny",
        tokenizer=tokenizer,
        info=tokenizer.info,
        max_context=max_context,
        target="test",
    )


def scripted_engine(
    tokenizer: Tokenizer, *, then_eos: bool = True, delay_s: float = 0.0, max_batch_size: int = 4
) -> tuple[Engine, ScriptedExecutor]:
    reply = tuple(tokenizer.encode(REPLY_TEXT, add_bos=False))
    executor = ScriptedExecutor(reply, then_eos=then_eos, delay_s=delay_s)
    return Engine(executor, tokenizer, max_batch_size=max_batch_size), executor
