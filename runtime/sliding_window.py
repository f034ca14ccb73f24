"""Exact sliding-window attention on TVM's paged KV cache: a window per sequence, small steps.

A query at position p sees the keys at p - W + 1 .. p. TVM 0.27's cache splits a forward into
the chunk's own tokens (a causal ragged kernel, with no window) and the sequence's cached
history (a paged kernel the runtime always calls with causal=0, so every cached key is
visible to every query of the chunk). With the sequence's cache window set to W - 1
(`attention_kv_cache_enable_sliding_window_for_seq`, attention sink 0) the history is the
last W - 1 tokens, and a forward is exact when, for each sequence in it, either
  - the chunk ends inside the first W positions (start + n <= W): nothing is out of any
    query's window yet, so causal attention is windowed attention; or
  - the chunk is one token: it sees the W - 1 cached tokens and itself.
Any longer chunk past the window would let its first query miss keys or its last see too
many (mlc-llm accepts that approximation; we do not). So a prompt longer than W is prefilled
in one call up to position W, then one token per call (each call still batches every
sequence that has tokens left). See codegen/NOTES.md for the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# (seq_ids, chunks, last_only) -> logits: one forward through the cache, one row per token in
# order, or with last_only one row per sequence (its chunk's last token).
Forward = Callable[[list[int], list[list[int]], bool], np.ndarray]


def cache_window(window: int) -> int:
    """The window a sequence's cache keeps: the W - 1 tokens before the current one."""
    return window - 1


def exact_steps(starts: Sequence[int], lengths: Sequence[int], window: int) -> list[list[int]]:
    """Per forward, how many tokens each sequence appends (0: not in that forward).

    starts[i] is sequence i's length before, lengths[i] the tokens it appends in all.
    """
    done = [0] * len(lengths)
    steps = []
    while any(d < n for d, n in zip(done, lengths, strict=True)):
        step = []
        for start, n, d in zip(starts, lengths, done, strict=True):
            position = start + d
            step.append(min(n - d, max(window - position, 1)))
        steps.append(step)
        done = [d + k for d, k in zip(done, step, strict=True)]
    return steps


def prefill_in_steps(
    forward: Forward,
    seq_ids: Sequence[int],
    chunks: Sequence[Sequence[int]],
    starts: Sequence[int],
    window: int,
    last_only: bool = False,
) -> np.ndarray:
    """Append chunks[i] to seq_ids[i] in the exact steps above; the logits of every token in
    order, or with last_only of each chunk's last token (as one forward would return them)."""
    rows: list[list[np.ndarray]] = [[] for _ in seq_ids]
    done = [0] * len(seq_ids)
    for step in exact_steps(starts, [len(c) for c in chunks], window):
        active = [i for i, k in enumerate(step) if k]
        logits = forward(
            [seq_ids[i] for i in active],
            [list(chunks[i][done[i] : done[i] + step[i]]) for i in active],
            last_only,
        )
        sizes = [1 if last_only else step[i] for i in active]
        for i, part in zip(active, np.split(logits, np.cumsum(sizes)[:-1]), strict=True):
            # With last_only a sequence's later step replaces its earlier row.
            rows[i] = [part] if last_only else [*rows[i], part]
            done[i] += step[i]
    return np.concatenate([part for parts in rows for part in parts])
