"""Reference generation with the numpy interpreter: the ground truth compiled runs are tested against.

`forward_logits` runs the plain "forward" graph (tokens, positions; no cache) on a whole
sequence. `generate` and `generate_batch` run a paged module ("prefill" and "decode" graphs
taking tokens, positions and a KV cache): prefill the prompts in one ragged call, then decode
greedily, one token per sequence per call. Each graph call fetches its weights afresh, so pass
a dict (or a caching loader) when a loader is slow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import RequestError
from .graph import Graph, Module
from .interpreter import Weights, run_graph
from .kvcache_ref import PagedKVCache
from .types import KVCacheType


@dataclass
class Generation:
    """The greedy continuation of one prompt."""

    tokens: list[int]
    # logits[i] ([vocab], f32) is the distribution tokens[i] was chosen from.
    logits: np.ndarray


def forward_logits(
    graph: Graph, weights: Weights, token_ids: Sequence[int], page_size: int = 16
) -> np.ndarray:
    """Logits [T, vocab] of every position of `token_ids`, through a cache-less forward graph or
    through a paged prefill graph on a fresh cache."""
    tokens = np.asarray(token_ids, dtype=np.int32)
    positions = np.arange(len(tokens), dtype=np.int32)
    if not any(isinstance(n.op.type, KVCacheType) for n in graph.inputs):  # type: ignore[attr-defined]
        return run_graph(graph, {"tokens": tokens, "positions": positions}, weights)["logits"]
    cache = PagedKVCache(_cache_type(graph), -(-len(tokens) // page_size), page_size)
    cache.add_sequence(0)
    return _call(graph, weights, cache, [0], [len(tokens)], tokens, positions)


def generate(
    module: Module, weights: Weights, prompt: Sequence[int], steps: int, page_size: int = 16
) -> Generation:
    """Prefill `prompt`, then decode greedily until `steps` tokens are generated."""
    return generate_batch(module, weights, [prompt], steps, page_size)[0]


def generate_batch(
    module: Module,
    weights: Weights,
    prompts: Sequence[Sequence[int]],
    steps: int,
    page_size: int = 16,
) -> list[Generation]:
    """Prefill all prompts in one ragged call, then decode them together (batch = len(prompts))."""
    if steps < 1 or not prompts or any(len(p) == 0 for p in prompts):
        raise RequestError(f"need steps >= 1 and non-empty prompts, got {steps} steps")
    prefill, decode = _graph(module, "prefill"), _graph(module, "decode")
    seq_ids = list(range(len(prompts)))
    num_pages = sum(-(-(len(p) + steps) // page_size) for p in prompts)
    cache = PagedKVCache(_cache_type(prefill), num_pages, page_size)
    for s in seq_ids:
        cache.add_sequence(s)

    lengths = [len(p) for p in prompts]
    tokens = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts])
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    logits = _last_rows(
        _call(prefill, weights, cache, seq_ids, lengths, tokens, positions), lengths
    )
    history = [logits]
    for step in range(1, steps):
        tokens = np.argmax(history[-1], axis=-1).astype(np.int32)
        positions = np.asarray([n + step - 1 for n in lengths], dtype=np.int32)
        ones = [1] * len(seq_ids)
        history.append(_call(decode, weights, cache, seq_ids, ones, tokens, positions))
    chosen = np.stack(history, axis=1)  # [B, steps, vocab]
    return [
        Generation([int(t) for t in np.argmax(chosen[b], axis=-1)], chosen[b])
        for b in range(len(prompts))
    ]


def _graph(module: Module, name: str) -> Graph:
    if name not in module.graphs:
        raise RequestError(
            f"paged module lacks graph {name!r}; has {sorted(module.graphs)} (run the paged rewrite)"
        )
    return module.graphs[name]


def _cache_type(graph: Graph) -> KVCacheType:
    for node in graph.inputs:
        if isinstance(node.op.type, KVCacheType):  # type: ignore[attr-defined]
            return node.op.type  # type: ignore[attr-defined]
    raise RequestError(f"graph {graph.name} has no kvcache input")


def _call(
    graph: Graph,
    weights: Weights,
    cache: PagedKVCache,
    seq_ids: list[int],
    lengths: list[int],
    tokens: np.ndarray,
    positions: np.ndarray,
) -> np.ndarray:
    """One graph call bracketed by the cache's begin/end_forward; returns its logits."""
    inputs: dict[str, object] = {"tokens": tokens, "positions": positions}
    for node in graph.inputs:
        if isinstance(node.op.type, KVCacheType):  # type: ignore[attr-defined]
            inputs[node.op.name] = cache  # type: ignore[attr-defined]
    cache.begin_forward(seq_ids, lengths)
    logits = run_graph(graph, inputs, weights)["logits"]
    cache.end_forward()
    return logits.astype(np.float32)


def _last_rows(logits: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Each sequence's last-token logits, whether prefill returned every token's or only the last."""
    if logits.shape[0] == sum(lengths):
        return logits[np.cumsum(lengths) - 1]
    if logits.shape[0] == len(lengths):
        return logits
    raise RequestError(
        f"prefill returned {logits.shape[0]} rows of logits for {len(lengths)} sequences "
        f"of {sum(lengths)} tokens; expected one per token or one per sequence"
    )
