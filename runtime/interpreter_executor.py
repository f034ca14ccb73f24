"""An Executor over the numpy interpreter and the reference paged KV cache: for tests, and without TVM."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..errors import RequestError
from ..ir.graph import Graph, Module
from ..ir.interpreter import run_graph
from ..ir.kvcache_ref import PagedKVCache
from ..ir.types import KVCacheType
from ..passes.select_logit_rows import LOGIT_ROWS_INPUT


class InterpreterExecutor:
    """Runs a paged module's "prefill" and "decode" graphs with ir/interpreter on a PagedKVCache."""

    def __init__(
        self,
        module: Module,
        weights: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
        *,
        num_pages: int = 64,
        page_size: int = 16,
        max_context: int | None = None,
    ) -> None:
        for name in ("prefill", "decode"):
            if name not in module.graphs:
                raise RequestError(
                    f"the module has graphs {sorted(module.graphs)}, not {name!r}; "
                    "build it with passes.pipeline.optimize"
                )
        self.prefill_graph, self.decode_graph = module.graphs["prefill"], module.graphs["decode"]
        self.weights = weights if isinstance(weights, Mapping) else _memoized(weights)
        self.cache = PagedKVCache(_cache_type(self.prefill_graph), num_pages, page_size)
        self.page_size, self.num_pages = page_size, num_pages
        self.vocab_size = int(self.prefill_graph.outputs["logits"].tensor.shape[-1])
        # One sequence may at most fill the whole cache.
        self.max_context = min(max_context or num_pages * page_size, num_pages * page_size)

    def add_sequence(self, seq_id: int) -> None:
        self.cache.add_sequence(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        self.cache.remove_sequence(seq_id)

    def fork_sequence(self, parent: int, child: int, length: int) -> None:
        self.cache.fork_sequence(parent, child, length)

    def free_pages(self) -> int:
        return self.cache.num_free_pages

    def prefill(self, seq_ids: Sequence[int], chunks: Sequence[Sequence[int]]) -> np.ndarray:
        """Append chunks[i] to sequence seq_ids[i] in one ragged call; logits [B, V] of each last token."""
        lengths = [len(c) for c in chunks]
        if len(seq_ids) != len(chunks) or 0 in lengths:
            raise RequestError(
                f"prefill needs one non-empty chunk per sequence, got {len(seq_ids)} sequences "
                f"and chunk lengths {lengths}"
            )
        positions = [
            np.arange(n, dtype=np.int32) + self.cache.seq_len(s)
            for s, n in zip(seq_ids, lengths, strict=True)
        ]
        tokens = np.asarray([t for c in chunks for t in c], dtype=np.int32)
        last = (np.cumsum(lengths) - 1).astype(np.int32)
        logits = self._call(
            self.prefill_graph, list(seq_ids), lengths, tokens, np.concatenate(positions), last
        )
        return logits if logits.shape[0] == len(last) else logits[last]

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token per sequence; logits [B, V]."""
        if len(seq_ids) != len(tokens):
            raise RequestError(f"decode got {len(seq_ids)} sequences but {len(tokens)} tokens")
        positions = np.asarray([self.cache.seq_len(s) for s in seq_ids], dtype=np.int32)
        ones = [1] * len(seq_ids)
        return self._call(
            self.decode_graph, list(seq_ids), ones, np.asarray(tokens, np.int32), positions
        )

    def _call(
        self,
        graph: Graph,
        seq_ids: list[int],
        lengths: list[int],
        tokens: np.ndarray,
        positions: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        inputs: dict[str, object] = {"tokens": tokens, "positions": positions}
        for node in graph.inputs:
            if isinstance(node.op.type, KVCacheType):  # type: ignore[attr-defined]
                inputs[node.op.name] = self.cache  # type: ignore[attr-defined]
            elif node.op.name == LOGIT_ROWS_INPUT and rows is not None:  # type: ignore[attr-defined]
                inputs[LOGIT_ROWS_INPUT] = rows  # a select-logit-rows graph: the rows to compute
        self.cache.begin_forward(seq_ids, lengths)
        try:
            logits = run_graph(graph, inputs, self.weights)["logits"]
        finally:
            self.cache.end_forward()
        return logits.astype(np.float32)


def _cache_type(graph: Graph) -> KVCacheType:
    for node in graph.inputs:
        if isinstance(node.op.type, KVCacheType):  # type: ignore[attr-defined]
            return node.op.type  # type: ignore[attr-defined]
    raise RequestError(f"graph {graph.name} has no kvcache input; run the paged rewrite first")


def _memoized(load: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """Read each weight once, on first use (frontend loaders read and dequantize on every call)."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = load(name)
        return cache[name]

    return get
