"""Finished sequences kept in the KV cache, so that a prompt which starts like one of them is
forked from it instead of computed again (a chat's next turn re-sends the whole conversation).

The engine owns the policy: it evicts the oldest entry whenever it is short of pages, before
it would preempt or refuse anything, so kept sequences only ever use pages nobody needs. It
also forks from sequences still running (a system prompt that concurrent requests share), and a
request that arrives with one whose prefill will hold its prefix waits for that prefill.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """Sequence ids the engine no longer runs, with the tokens their KV holds; least recently
    used first."""

    def __init__(self, capacity: int, min_tokens: int) -> None:
        if capacity < 1 or min_tokens < 1:
            raise ValueError(
                f"need capacity >= 1 and min_tokens >= 1, got {capacity}, {min_tokens}"
            )
        self.capacity = capacity
        self.min_tokens = min_tokens  # shorter shared prefixes are computed again
        self._entries: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: Sequence[int]) -> tuple[int | None, int]:
        """(sequence id, tokens shared) of the entry sharing the longest prefix with `ids`,
        leaving at least ids' last token to compute (its logits are the next token's); (None, 0)
        if none shares `min_tokens`."""
        best, best_len = None, 0
        for seq_id, tokens in self._entries.items():
            shared = common_prefix(tokens, ids, len(ids) - 1)
            if shared > best_len:
                best, best_len = seq_id, shared
        return (best, best_len) if best_len >= self.min_tokens else (None, 0)

    def add(self, seq_id: int, tokens: Sequence[int]) -> list[int]:
        """Keep `seq_id` holding `tokens`; returns the ids to remove from the KV cache: entries
        whose tokens this one starts with (it serves them all), then the oldest past capacity."""
        tokens = tuple(tokens)
        dropped = [s for s, t in self._entries.items() if tokens[: len(t)] == t]
        for s in dropped:
            del self._entries[s]
        self._entries[seq_id] = tokens
        while len(self._entries) > self.capacity:
            dropped.append(self._entries.popitem(last=False)[0])
        return dropped

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._entries

    def touch(self, seq_id: int) -> None:
        """`seq_id` was just forked from: the last to evict."""
        self._entries.move_to_end(seq_id)

    def pop_oldest(self, keep: int | None = None) -> int | None:
        """Forget the least recently used entry but `keep`; its id, for the KV cache to remove."""
        for seq_id in self._entries:
            if seq_id != keep:
                del self._entries[seq_id]
                return seq_id
        return None

    def pop(self, seq_id: int) -> None:
        del self._entries[seq_id]


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens a and b share, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PageLedger:
    """Which KV pages each sequence holds, as TVM's cache shares them: a fork takes its parent's
    full pages and a copy of a partial last one; new tokens take new pages. It answers how many
    pages only kept sequences hold: pages that dropping them would free, which the engine
    reports as free (vLLM's kv_cache_usage_perc counts cached, unreferenced blocks as free)."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._pages: dict[int, list[int]] = {}
        self._next_page = 0

    def add(self, seq_id: int) -> None:
        self._pages[seq_id] = []

    def fork(self, parent: int, child: int, tokens: int) -> None:
        self.grow(parent, tokens)  # it holds at least these (a running parent's lag)
        self._pages[child] = self._pages[parent][: tokens // self.page_size]
        self.grow(child, tokens)

    def grow(self, seq_id: int, tokens: int) -> None:
        """`seq_id` now holds `tokens` tokens."""
        pages = self._pages[seq_id]
        while len(pages) * self.page_size < tokens:
            pages.append(self._next_page)
            self._next_page += 1

    def remove(self, seq_id: int) -> None:
        del self._pages[seq_id]

    def only_held_by(self, kept: PrefixCache) -> int:
        """Pages no sequence outside `kept` holds."""
        live = {p for s, pages in self._pages.items() if s not in kept for p in pages}
        return len({p for s, pages in self._pages.items() if s in kept for p in pages} - live)
