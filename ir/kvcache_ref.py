"""The reference paged KV cache, in numpy: what the PagedAttention kernel of the interpreter calls.

Keys and values live in real pages, `[num_pages, page_size, Hkv, D]` per layer; a page index
names the same page in every layer. Each sequence owns a page table and a length. A graph call
is bracketed by `begin_forward` (which sequences, how many new tokens each, in token order;
pages are allocated here) and `end_forward` (the new tokens become part of the sequences).
"""

from __future__ import annotations

import numpy as np

from ..errors import RequestError
from .interpreter import causal_attention
from .types import DType, KVCacheType


class PagedKVCache:
    """Pages of keys and values for every layer, a free-page list and per-sequence page tables."""

    def __init__(self, type_: KVCacheType, num_pages: int, page_size: int = 16) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(
                f"need num_pages >= 1 and page_size >= 1, got {num_pages}, {page_size}"
            )
        self.type = type_
        self.page_size = page_size
        shape = (num_pages, page_size, type_.num_kv_heads, type_.head_dim)
        self.keys = [np.zeros(shape, type_.dtype.numpy) for _ in range(type_.num_layers)]
        self.values = [np.zeros(shape, type_.dtype.numpy) for _ in range(type_.num_layers)]
        self.free_pages: list[int] = list(range(num_pages - 1, -1, -1))  # pop() gives page 0 first
        self.refs = [0] * num_pages  # sequences holding each page (forks share full pages)
        self.page_tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self._batch: list[tuple[int, int]] | None = None

    @classmethod
    def create(
        cls,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: DType = DType.f32,
        *,
        num_pages: int,
        page_size: int = 16,
    ) -> PagedKVCache:
        return cls(KVCacheType(num_layers, num_kv_heads, head_dim, dtype), num_pages, page_size)

    @property
    def num_free_pages(self) -> int:
        return len(self.free_pages)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # --- sequences -------------------------------------------------------------------------------

    def add_sequence(self, seq_id: int) -> None:
        if seq_id in self.lengths:
            raise RequestError(f"sequence {seq_id} is already in the KV cache")
        self.page_tables[seq_id] = []
        self.lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        """Drop a sequence, its pages going back to the free list."""
        self._known(seq_id)
        if self._batch is not None and any(s == seq_id for s, _ in self._batch):
            raise RequestError(f"sequence {seq_id} is in the forward in progress; end it first")
        for page in reversed(self.page_tables.pop(seq_id)):
            self.refs[page] -= 1
            if self.refs[page] == 0:
                self.free_pages.append(page)
        del self.lengths[seq_id]

    def fork_sequence(self, parent: int, child: int, length: int | None = None) -> None:
        """Start `child` with `parent`'s first `length` tokens (all of them by default), as TVM's
        cache does: their full pages shared, a partial last page copied."""
        self._known(parent)
        if child in self.lengths:
            raise RequestError(f"sequence {child} is already in the KV cache")
        length = self.lengths[parent] if length is None else length
        if not 0 <= length <= self.lengths[parent]:
            raise RequestError(
                f"cannot fork {child} from the first {length} tokens of sequence {parent}, "
                f"which holds {self.lengths[parent]}"
            )
        full, partial = divmod(length, self.page_size)
        shared = self.page_tables[parent][:full]
        copied = self._allocate(int(partial > 0), f"fork {parent} into {child}")
        for page in shared:
            self.refs[page] += 1
        if copied:
            source = self.page_tables[parent][full]
            for layer in range(self.type.num_layers):
                self.keys[layer][copied[0]] = self.keys[layer][source]
                self.values[layer][copied[0]] = self.values[layer][source]
        self.page_tables[child] = shared + copied
        self.lengths[child] = length

    def seq_len(self, seq_id: int) -> int:
        self._known(seq_id)
        return self.lengths[seq_id]

    # --- one graph call -----------------------------------------------------------------------------

    def begin_forward(self, seq_ids: list[int], lengths: list[int]) -> None:
        """Announce the next call's tokens: lengths[i] new tokens of seq_ids[i], in that order."""
        if self._batch is not None:
            raise RequestError("begin_forward called twice without end_forward")
        if len(seq_ids) != len(lengths) or len(set(seq_ids)) != len(seq_ids):
            raise RequestError(
                f"begin_forward needs distinct seq_ids and one length each, got {seq_ids}, {lengths}"
            )
        for s, n in zip(seq_ids, lengths, strict=True):
            self._known(s)
            if n < 1:
                raise RequestError(f"sequence {s}: a forward needs at least one new token, got {n}")
        need = {
            s: self.pages_for(self.lengths[s] + n) - len(self.page_tables[s])
            for s, n in zip(seq_ids, lengths, strict=True)
        }
        self._check_free(sum(need.values()), f"a forward of {sum(lengths)} tokens")
        for s, n in need.items():
            self.page_tables[s].extend(self._allocate(n, f"sequence {s}"))
        self._batch = list(zip(seq_ids, lengths, strict=True))

    def end_forward(self) -> None:
        if self._batch is None:
            raise RequestError("end_forward called without begin_forward")
        for s, n in self._batch:
            self.lengths[s] += n
        self._batch = None

    def attend(
        self,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        scale: float,
        sliding_window: int | None,
    ) -> np.ndarray:
        """Store this call's k, v [T, Hkv, D] in `layer`'s pages, then attend each query token to
        its own sequence's tokens up to itself; q [T, Hq, D] -> [T, Hq, D] in q's dtype."""
        if self._batch is None:
            raise RequestError("attend called outside begin_forward/end_forward")
        total = sum(n for _, n in self._batch)
        if q.shape[0] != total or k.shape[0] != total:
            raise RequestError(
                f"attend got {q.shape[0]} tokens but begin_forward announced {total}"
            )
        keys, values = self.keys[layer], self.values[layer]
        out = np.empty(q.shape, q.dtype)
        start = 0
        for s, n in self._batch:
            past, table = self.lengths[s], np.asarray(self.page_tables[s])
            pos = np.arange(past, past + n)
            pages, slots = table[pos // self.page_size], pos % self.page_size
            keys[pages, slots] = k[start : start + n].astype(keys.dtype)
            values[pages, slots] = v[start : start + n].astype(values.dtype)
            cached_k = keys[table].reshape(-1, *keys.shape[2:])[: past + n]  # [past+n, Hkv, D]
            cached_v = values[table].reshape(-1, *values.shape[2:])[: past + n]
            out[start : start + n] = causal_attention(
                q[start : start + n], cached_k, cached_v, scale, sliding_window, past
            )
            start += n
        return out

    # --- helpers ---------------------------------------------------------------------------------

    def _known(self, seq_id: int) -> None:
        if seq_id not in self.lengths:
            known = sorted(self.lengths)
            raise RequestError(f"sequence {seq_id} is not in the KV cache (known: {known})")

    def _check_free(self, count: int, what: str) -> None:
        if count > len(self.free_pages):
            raise RequestError(
                f"KV cache out of pages: {what} needs {count} more pages of {self.page_size} "
                f"tokens, {len(self.free_pages)} free; remove finished sequences or enlarge the cache"
            )

    def _allocate(self, count: int, what: str) -> list[int]:
        self._check_free(count, what)
        if count == 0:
            return []
        taken = self.free_pages[-count:][::-1]
        del self.free_pages[-count:]
        for page in taken:
            self.refs[page] = 1
        return taken
