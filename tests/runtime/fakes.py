"""A scripted Executor and a one-character-per-token tokenizer, to test the engine without a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ferrumc.errors import RequestError

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?"
EOS = len(ALPHABET)  # decodes to "" like a special token


def count_up(history: Sequence[int]) -> int:
    """The default script: the token after the last one, in the alphabet (never EOS)."""
    return (history[-1] + 1) % len(ALPHABET)


@dataclass
class FakeExecutor:
    """Pages as TVM's cache counts them; logits one-hot on script(tokens of the sequence so far)."""

    vocab_size: int = len(ALPHABET) + 1
    num_pages: int = 16
    page_size: int = 4
    max_context: int = 64
    script: Callable[[Sequence[int]], int] = count_up
    tokens: dict[int, list[int]] = field(default_factory=dict)
    pages: dict[int, int] = field(default_factory=dict)
    calls: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # kind, ids, sizes

    def add_sequence(self, seq_id: int) -> None:
        assert seq_id not in self.tokens, f"sequence {seq_id} added twice"
        self.tokens[seq_id], self.pages[seq_id] = [], 0

    def remove_sequence(self, seq_id: int) -> None:
        del self.tokens[seq_id], self.pages[seq_id]

    def free_pages(self) -> int:
        return self.num_pages - sum(self.pages.values())

    def prefill(self, seq_ids: list[int], chunks: list[list[int]]) -> np.ndarray:
        self.calls.append(("prefill", list(seq_ids), [len(c) for c in chunks]))
        return self._append(seq_ids, chunks)

    def decode(self, seq_ids: list[int], tokens: list[int]) -> np.ndarray:
        self.calls.append(("decode", list(seq_ids), [1] * len(tokens)))
        return self._append(seq_ids, [[t] for t in tokens])

    def _append(self, seq_ids: list[int], chunks: list[list[int]]) -> np.ndarray:
        need = {
            s: -(-(len(self.tokens[s]) + len(c)) // self.page_size) - self.pages[s]
            for s, c in zip(seq_ids, chunks, strict=True)
        }
        if sum(need.values()) > self.free_pages():
            raise RequestError(f"out of pages: need {sum(need.values())}, {self.free_pages()} free")
        rows = np.zeros((len(seq_ids), self.vocab_size), np.float32)
        for i, (s, chunk) in enumerate(zip(seq_ids, chunks, strict=True)):
            self.pages[s] += need[s]
            self.tokens[s].extend(chunk)
            assert len(self.tokens[s]) <= self.max_context, "engine overran the context"
            rows[i, self.script(self.tokens[s])] = 10.0
        return rows

    def prefill_sizes(self) -> list[list[int]]:
        return [sizes for kind, _, sizes in self.calls if kind == "prefill"]

    def decode_batches(self) -> list[list[int]]:
        return [ids for kind, ids, _ in self.calls if kind == "decode"]


class CharTokenizer:
    """Token i is ALPHABET[i]; EOS is special (decodes to nothing)."""

    eos_token_ids = (EOS,)

    def encode(self, text: str) -> list[int]:
        return [ALPHABET.index(c) for c in text]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(
            ALPHABET[i] if i < EOS else ("" if skip_special_tokens else "<eos>") for i in ids
        )
