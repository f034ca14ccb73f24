"""Prefill and decode with a compiled library and TVM's paged KV cache, through the Relax VM.

The library's `create_kv_cache` makes the cache; it is driven by the `vm.builtin.kv_state_*`
global functions: add a sequence, declare each call's batch with `begin_forward(ids, lengths)`
(which reserves the tokens' slots), call `prefill` or `decode`, then `end_forward`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from ..errors import RequestError
from .library import Library

_SHAPE = tvm.runtime.ShapeTuple

# TVM's TIR cache kernels are specialized on pages of 16 tokens (their `page_size` default);
# creating the cache with another size fails at the first append.
PAGE_SIZE = 16


def _builtin(name: str) -> tvm.ffi.Function:
    return tvm.get_global_func(f"vm.builtin.{name}")


@dataclass(frozen=True)
class CacheConfig:
    """Sizes the KV cache is created with, in sequences and tokens."""

    max_batch_size: int = 4
    max_total_seq_len: int = 2048
    prefill_chunk_size: int = 512


class VMExecutor:
    """One loaded library with its weights and one KV cache; sequences are added and removed."""

    def __init__(
        self,
        library: Path,
        weights: Mapping[str, np.ndarray],
        cache: CacheConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.library = Library(library, weights, device)
        c = self.cache_config = cache or CacheConfig()
        self.kv_cache = self.library.entry("create_kv_cache")(
            _SHAPE([c.max_batch_size]),
            _SHAPE([c.max_total_seq_len]),
            _SHAPE([c.prefill_chunk_size]),
            _SHAPE([PAGE_SIZE]),
            _SHAPE([0]),  # no sliding window
        )
        self.lengths: dict[int, int] = {}
        # Sliding-window models run full attention, exact only up to the window (codegen/kv_cache.py).
        layout = self.library.metadata["kv_cache"] or {}
        self.max_sequence_length: int | None = layout.get("max_sequence_length")

    def add_sequence(self, seq_id: int) -> None:
        _builtin("kv_state_add_sequence")(self.kv_cache, seq_id)
        self.lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        self._length(seq_id)
        _builtin("kv_state_remove_sequence")(self.kv_cache, seq_id)
        del self.lengths[seq_id]

    def prefill(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> np.ndarray:
        """Append chunks[i] to sequence seq_ids[i], all in one ragged call.

        Returns logits [sum of chunk lengths, vocab], rows in token order.
        """
        if len(seq_ids) != len(chunks) or any(len(c) == 0 for c in chunks):
            raise RequestError(
                f"prefill needs one non-empty chunk per sequence, got {len(seq_ids)} sequences "
                f"and chunk lengths {[len(c) for c in chunks]}"
            )
        lengths = [len(c) for c in chunks]
        starts = [self._length(s) for s in seq_ids]
        positions = np.concatenate(
            [np.arange(p, p + n, dtype=np.int32) for p, n in zip(starts, lengths, strict=True)]
        )
        tokens = [t for c in chunks for t in c]
        return self._forward("prefill", list(seq_ids), lengths, tokens, positions)

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """One token per sequence; returns logits [len(seq_ids), vocab]."""
        if len(seq_ids) != len(tokens):
            raise RequestError(f"decode got {len(seq_ids)} sequences but {len(tokens)} tokens")
        positions = np.array([self._length(s) for s in seq_ids], dtype=np.int32)
        return self._forward("decode", list(seq_ids), [1] * len(seq_ids), tokens, positions)

    def _length(self, seq_id: int) -> int:
        if seq_id not in self.lengths:
            raise RequestError(f"sequence {seq_id} was not added; active: {sorted(self.lengths)}")
        return self.lengths[seq_id]

    def _forward(
        self,
        entry: str,
        seq_ids: list[int],
        lengths: list[int],
        tokens: Sequence[int],
        positions: np.ndarray,
    ) -> np.ndarray:
        limit = self.max_sequence_length
        for seq_id, n in zip(seq_ids, lengths, strict=True):
            if limit is not None and self.lengths[seq_id] + n > limit:
                raise RequestError(
                    f"sequence {seq_id} would grow to {self.lengths[seq_id] + n} tokens; this "
                    f"model's sliding window limits sequences to {limit} tokens for now"
                )
        inputs = {
            "tokens": np.asarray(tokens, dtype=np.int32),
            "positions": positions,
            "kv_cache": self.kv_cache,
        }
        _builtin("kv_state_begin_forward")(self.kv_cache, _SHAPE(seq_ids), _SHAPE(lengths))
        # begin_forward has reserved the new tokens' slots: from here on they count.
        for seq_id, n in zip(seq_ids, lengths, strict=True):
            self.lengths[seq_id] += n
        try:
            return self.library.run(entry, inputs)["logits"]
        finally:
            _builtin("kv_state_end_forward")(self.kv_cache)
