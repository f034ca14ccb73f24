"""Prefill and decode with a compiled library and TVM's paged KV cache, through the Relax VM.

The library's `create_kv_cache` makes the cache; it is driven by the `vm.builtin.kv_state_*`
global functions: add a sequence, declare each call's batch with `begin_forward(ids, lengths)`
(which reserves the tokens' slots), call `prefill` or `decode`, then `end_forward`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen.tvm_import import tvm
from ..errors import BundleError, RequestError
from ..passes.select_logit_rows import LOGIT_ROWS_INPUT as LOGIT_ROWS
from .library import Library
from .sliding_window import cache_window, prefill_in_steps

_SHAPE = tvm.runtime.ShapeTuple

# TVM's TIR cache kernels are specialized on pages of 16 tokens (their `page_size` default);
# creating the cache with another size fails at the first append.
PAGE_SIZE = 16


@functools.cache
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
        max_context: int | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        # metadata: a bundle manifest's Manifest.library_metadata(); None reads the build sidecar.
        self.library = Library(library, weights, device, metadata)
        c = self.cache_config = cache or CacheConfig()
        layout = self.library.metadata["kv_cache"] or {}
        # A window every layer shares is the cache's, per sequence (runtime/sliding_window.py).
        self.sliding_window: int | None = layout.get("sliding_window")
        self.kv_cache = self.library.entry("create_kv_cache")(
            _SHAPE([c.max_batch_size]),
            _SHAPE([c.max_total_seq_len]),
            _SHAPE([c.prefill_chunk_size]),
            _SHAPE([PAGE_SIZE]),
            _SHAPE([int(self.sliding_window is not None)]),
        )
        self.lengths: dict[int, int] = {}
        # Layers with different windows run full attention, exact up to the smallest (kv_cache.py).
        self.max_sequence_length: int | None = layout.get("max_sequence_length")
        # What the engine reads (runtime/types.Executor); max_context is the model's window.
        self.vocab_size = _vocab_size(self.library.metadata)
        self.page_size = PAGE_SIZE
        self.num_pages = self.free_pages()
        self.max_batch_size, self.prefill_chunk_size = c.max_batch_size, c.prefill_chunk_size
        limits = [c.max_total_seq_len, max_context, self.max_sequence_length]
        self.max_context = min(n for n in limits if n is not None)

    def free_pages(self) -> int:
        return int(_builtin("attention_kv_cache_get_num_available_pages")(self.kv_cache))

    def add_sequence(self, seq_id: int) -> None:
        _builtin("kv_state_add_sequence")(self.kv_cache, seq_id)
        self.lengths[seq_id] = 0
        if self.sliding_window is not None:
            _builtin("attention_kv_cache_enable_sliding_window_for_seq")(
                self.kv_cache, seq_id, cache_window(self.sliding_window), 0
            )

    def remove_sequence(self, seq_id: int) -> None:
        self._length(seq_id)
        _builtin("kv_state_remove_sequence")(self.kv_cache, seq_id)
        del self.lengths[seq_id]

    def fork_sequence(self, parent: int, child: int, length: int) -> None:
        """Start `child` with `parent`'s first `length` tokens: TVM's cache shares their full
        pages and copies a partial last one."""
        if self.sliding_window is not None:
            raise RequestError("sequences with a sliding window cannot be forked")
        if not 0 <= length <= self._length(parent) or child in self.lengths:
            raise RequestError(
                f"cannot fork sequence {child} from the first {length} tokens of sequence "
                f"{parent} ({self._length(parent)} tokens)"
            )
        _builtin("kv_state_fork_sequence")(self.kv_cache, parent, child, length)
        self.lengths[child] = length

    def prefill(
        self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]], *, last_only: bool = True
    ) -> np.ndarray:
        """Append chunks[i] to sequence seq_ids[i], all in one ragged call (with a sliding
        window: in the exact steps of runtime/sliding_window.py).

        Returns logits [len(seq_ids), vocab], each chunk's last token (what runtime/types.Executor
        promises); with last_only=False [sum of chunk lengths, vocab], rows in token order.
        """
        if len(seq_ids) != len(chunks) or any(len(c) == 0 for c in chunks):
            raise RequestError(
                f"prefill needs one non-empty chunk per sequence, got {len(seq_ids)} sequences "
                f"and chunk lengths {[len(c) for c in chunks]}"
            )
        if self.sliding_window is None:
            return self._prefill_call(list(seq_ids), [list(c) for c in chunks], last_only)
        starts = [self._length(s) for s in seq_ids]
        window = self.sliding_window
        return prefill_in_steps(self._prefill_call, seq_ids, chunks, starts, window, last_only)

    def _prefill_call(
        self, seq_ids: list[int], chunks: list[list[int]], last_only: bool = False
    ) -> np.ndarray:
        """Logits of each chunk's last token (last_only), else of every token in order."""
        lengths = [len(c) for c in chunks]
        starts = [self._length(s) for s in seq_ids]
        positions = np.concatenate(
            [np.arange(p, p + n, dtype=np.int32) for p, n in zip(starts, lengths, strict=True)]
        )
        tokens = [t for c in chunks for t in c]
        last = np.cumsum(lengths) - 1
        if LOGIT_ROWS not in self.library.metadata["functions"]["prefill"]["inputs"]:
            logits = self._forward("prefill", seq_ids, lengths, tokens, positions)
            return logits[last] if last_only else logits
        # The compiled prefill projects only these rows to the vocabulary (select-logit-rows).
        rows = last if last_only else np.arange(len(tokens))
        extra = {LOGIT_ROWS: rows.astype(np.int32)}
        return self._forward("prefill", seq_ids, lengths, tokens, positions, extra)

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
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        # The cache was created for these sizes; past them TVM fails deep inside a view.
        if len(seq_ids) > self.max_batch_size or sum(lengths) > self.prefill_chunk_size:
            raise RequestError(
                f"{entry} of {len(seq_ids)} sequences and {sum(lengths)} tokens exceeds the "
                f"cache's max_batch_size {self.max_batch_size} or prefill_chunk_size "
                f"{self.prefill_chunk_size}: split the call (the engine does), or create the "
                f"executor with a larger CacheConfig"
            )
        limit = self.max_sequence_length
        for seq_id, n in zip(seq_ids, lengths, strict=True):
            if limit is not None and self.lengths[seq_id] + n > limit:
                raise RequestError(
                    f"sequence {seq_id} would grow to {self.lengths[seq_id] + n} tokens; this "
                    f"model's layers use different sliding windows, which TVM's cache cannot "
                    f"keep per layer, so sequences are limited to {limit} tokens (the smallest)"
                )
        inputs = {
            "tokens": np.asarray(tokens, dtype=np.int32),
            "positions": positions,
            "kv_cache": self.kv_cache,
            **(extra or {}),
        }
        _builtin("kv_state_begin_forward")(self.kv_cache, _SHAPE(seq_ids), _SHAPE(lengths))
        # begin_forward has reserved the new tokens' slots: from here on they count.
        for seq_id, n in zip(seq_ids, lengths, strict=True):
            self.lengths[seq_id] += n
        try:
            return self.library.run(entry, inputs)["logits"]
        finally:
            _builtin("kv_state_end_forward")(self.kv_cache)


# Weights with a row per token, as float or int4 (codes) tables: the first one present counts.
VOCAB_WEIGHTS = ("lm_head.weight", "embed.weight", "lm_head.qweight", "embed.qweight")


def _vocab_size(metadata: Mapping[str, object]) -> int:
    """Rows of the output projection (or of the tied embedding) listed in the library's weights."""
    if "vocab_size" in metadata:  # a bundle's manifest says it (weight names vary with dtype)
        return int(metadata["vocab_size"])  # type: ignore[call-overload]
    shapes = {w["name"]: w["shape"] for w in metadata["weights"]}  # type: ignore[index,union-attr]
    for name in VOCAB_WEIGHTS:
        if name in shapes:
            return int(shapes[name][0])
    raise BundleError(f"the library lists none of {', '.join(VOCAB_WEIGHTS)}; has {sorted(shapes)}")
