"""The prefix cache: finished sequences kept in the KV cache and forked by later prompts that
start the same way, with the tokens unchanged, only the new tokens computed, and kept
sequences giving way whenever pages run short."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ferrumc.runtime.engine import Engine, run_to_completion
from ferrumc.runtime.interpreter_executor import InterpreterExecutor
from ferrumc.runtime.prefix_cache import PageLedger, PrefixCache
from ferrumc.runtime.types import Request, SamplingParams
from ferrumc.tests.runtime.fakes import CharTokenizer, FakeExecutor
from ferrumc.tests.runtime.tiny_model import NoText

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


def test_longest_shared_prefix_wins_and_one_token_is_left_to_compute() -> None:
    cache = PrefixCache(capacity=4, min_tokens=3)
    assert cache.add(1, [5, 6, 7, 8]) == []
    assert cache.add(2, [5, 6, 9, 9, 9]) == []
    assert cache.longest([5, 6, 7, 8, 1]) == (1, 4)
    assert cache.longest([5, 6, 9, 9, 9, 9]) == (2, 5)
    assert cache.longest([5, 6, 7, 8]) == (1, 3), "the prompt's last token is always computed"
    assert cache.longest([5, 6, 1, 1]) == (None, 0), "2 shared tokens are under min_tokens"


def test_an_entry_that_extends_another_replaces_it_and_capacity_drops_the_oldest() -> None:
    cache = PrefixCache(capacity=2, min_tokens=1)
    cache.add(1, [1, 2])
    cache.add(2, [7])
    assert cache.add(3, [1, 2, 3]) == [1], "3 holds all of 1's tokens"
    cache.touch(2)
    assert cache.add(4, [9]) == [3], "3 is now the least recently used"
    assert cache.pop_oldest(keep=2) == 4 and cache.pop_oldest(keep=2) is None
    assert len(cache) == 1


@dataclass
class ForkingExecutor(FakeExecutor):
    """FakeExecutor with forks that copy (like ir.kvcache_ref's reference cache)."""

    forks: list[tuple[int, int, int]] | None = None

    def fork_sequence(self, parent: int, child: int, length: int) -> None:
        assert 0 < length <= len(self.tokens[parent]) and child not in self.tokens
        self.forks = (self.forks or []) + [(parent, child, length)]
        self.tokens[child] = self.tokens[parent][:length]
        self.pages[child] = -(-length // self.page_size)
        assert self.free_pages() >= 0


def run(engine: Engine, request_id: str, prompt: list[int]):
    engine.add_request(Request(request_id, tuple(prompt), GREEDY))
    return run_to_completion(engine)[request_id]


def test_a_second_turn_computes_only_its_new_tokens_and_reports_them_cached() -> None:
    ex = ForkingExecutor(num_pages=16, page_size=4, max_context=64)
    engine = Engine(ex, CharTokenizer(), max_batch_size=2)
    first = run(engine, "a", [3, 1, 4, 1, 5, 9, 2, 6])
    assert first.cached_tokens == 0
    history = [3, 1, 4, 1, 5, 9, 2, 6, *first.token_ids, 7, 7]
    second = run(engine, "b", history)
    # The first sequence's cache holds its prompt and all its tokens but the last sampled.
    shared = 8 + len(first.token_ids) - 1
    assert second.cached_tokens == shared
    assert ex.forks == [(0, 1, shared)]
    assert ex.prefill_sizes()[-1] == [len(history) - shared]
    assert engine.stats().extra["cached_prompt_tokens"] == shared
    engine.clear_prefix_cache()
    assert ex.free_pages() == ex.num_pages


def test_kept_sequences_give_way_before_anything_is_preempted_or_refused() -> None:
    ex = ForkingExecutor(num_pages=6, page_size=4, max_context=24)
    engine = Engine(ex, CharTokenizer(), max_batch_size=2, prefix_cache_size=4)
    for i in range(5):  # distinct prompts of 3 pages each, one after another: 6 pages in all
        out = run(engine, str(i), [i + 1] * 10)
        assert out.finish_reason == "length" and out.completion_tokens == 6
    stats = engine.stats()
    assert stats.extra["preemptions"] == 0
    assert stats.kv_pages_used <= ex.num_pages
    engine.clear_prefix_cache()
    assert ex.free_pages() == ex.num_pages and not ex.tokens


def test_a_prompt_sharing_a_running_requests_prefix_forks_from_it() -> None:
    """A system prompt that concurrent requests share is computed once."""
    ex = ForkingExecutor(num_pages=16, page_size=4, max_context=64)
    engine = Engine(ex, CharTokenizer(), max_batch_size=2)
    system = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    engine.add_request(Request("a", (*system, 7), SamplingParams(temperature=0, max_tokens=8)))
    engine.step()  # a: prefilled, its first token sampled; still running
    engine.add_request(Request("b", (*system, 8, 8), SamplingParams(temperature=0, max_tokens=2)))
    done = run_to_completion(engine)
    assert ex.forks == [(0, 1, len(system))]  # a's cache holds system + 7: shared are system's
    assert done["b"].cached_tokens == len(system)
    assert ex.prefill_sizes() == [[len(system) + 1], [2]]
    engine.clear_prefix_cache()
    assert ex.free_pages() == ex.num_pages and not ex.tokens


def test_requests_arriving_together_compute_their_shared_prefix_once() -> None:
    """The second waits a step for the first's prefill, then forks it."""
    ex = ForkingExecutor(num_pages=16, page_size=4, max_context=64)
    engine = Engine(ex, CharTokenizer(), max_batch_size=2)
    system = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    params = SamplingParams(temperature=0, max_tokens=3)
    engine.add_request(Request("a", (*system, 7), params))
    engine.add_request(Request("b", (*system, 8, 8), params))
    done = run_to_completion(engine)
    assert ex.forks == [(0, 1, len(system))]
    assert ex.prefill_sizes() == [[len(system) + 1], [2]]
    assert (done["a"].cached_tokens, done["b"].cached_tokens) == (0, len(system))
    assert done["b"].completion_tokens == 3


@pytest.mark.parametrize("chunk", [512, 5])
def test_forked_prompts_give_the_tokens_of_prompts_computed_whole(tiny_llama, chunk) -> None:
    """The tiny Llama on the numpy interpreter: a conversation's turns with the prefix cache
    against the same turns without it (every prompt computed from its first token)."""
    module, weights = tiny_llama
    turns = [[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55], [60, 61], [7]]

    def conversation(cache_size: int) -> tuple[list[tuple[int, ...]], list[int]]:
        executor = InterpreterExecutor(module, weights, num_pages=32)
        engine = Engine(executor, NoText(), prefill_chunk_size=chunk, prefix_cache_size=cache_size)
        history: list[int] = []
        replies, cached = [], []
        for i, turn in enumerate(turns):
            history += turn
            out = run(engine, str(i), history)
            replies.append(out.token_ids)
            cached.append(out.cached_tokens)
            history += out.token_ids
        engine.clear_prefix_cache()
        assert executor.free_pages() == executor.num_pages
        return replies, cached

    with_cache, cached = conversation(8)
    without, none = conversation(0)
    assert with_cache == without
    assert none == [0, 0, 0]
    assert cached[0] == 0 and cached[1] >= 16 and cached[2] > cached[1]


@pytest.mark.parametrize("together", [False, True])
def test_concurrent_requests_sharing_a_prefix_give_the_tokens_computed_whole(
    tiny_llama, together
) -> None:
    """The tiny Llama on the numpy interpreter: two requests with the same 17-token start, the
    second sent with the first or while the first is decoding."""
    module, weights = tiny_llama
    start = [1, *range(40, 56)]
    prompts = [[*start, 60], [*start, 61, 62]]

    def both(cache_size: int) -> tuple[list[tuple[int, ...]], list[int]]:
        executor = InterpreterExecutor(module, weights, num_pages=32)
        engine = Engine(executor, NoText(), prefix_cache_size=cache_size)
        engine.add_request(Request("0", tuple(prompts[0]), GREEDY))
        if not together:
            engine.step()
        engine.add_request(Request("1", tuple(prompts[1]), GREEDY))
        done = run_to_completion(engine)
        engine.clear_prefix_cache()
        assert executor.free_pages() == executor.num_pages
        return [done[i].token_ids for i in "01"], [done[i].cached_tokens for i in "01"]

    with_cache, cached = both(8)
    assert with_cache == both(0)[0]
    assert cached == [0, len(start)]


def test_page_ledger_counts_what_only_kept_sequences_hold() -> None:
    ledger, kept = PageLedger(page_size=4), PrefixCache(capacity=4, min_tokens=1)
    ledger.add(1)
    ledger.grow(1, 10)  # 3 pages
    ledger.fork(1, 2, 9)  # shares 2 full pages, copies the partial third
    ledger.grow(2, 13)  # 4 pages
    kept.add(1, range(10))
    assert ledger.only_held_by(kept) == 1, "1's third page; its first two are 2's too"
    kept.add(2, [9] * 13)
    assert ledger.only_held_by(kept) == 5
    ledger.remove(1)
    kept.pop(1)
    assert ledger.only_held_by(kept) == 4


def test_kept_pages_count_as_free_in_the_stats(tiny_llama) -> None:
    """As vLLM's kv_cache_usage_perc: pages only kept sequences hold are free for the asking."""
    module, weights = tiny_llama
    executor = InterpreterExecutor(module, weights, num_pages=32)
    engine = Engine(executor, NoText())
    start = [1, *range(40, 60)]  # 21 tokens
    run(engine, "a", start)
    assert executor.free_pages() < executor.num_pages
    assert engine.stats().kv_pages_used == 0
    engine.add_request(Request("b", (*start[:18], 7), GREEDY))
    engine.step()  # b forked a's first 18 tokens: one full page shared, the partial one copied
    tables = executor.cache.page_tables
    (b,) = [s for s in tables if s != 0]
    assert engine.stats().kv_pages_used == len(tables[b]) == 2
    run_to_completion(engine)
    assert engine.stats().kv_pages_used == 0
    engine.clear_prefix_cache()
    assert executor.free_pages() == executor.num_pages


def test_a_fork_needs_only_the_pages_it_does_not_share(tiny_llama) -> None:
    """4 pages of 16 tokens: the kept first request holds 3; the second, sharing its first 40
    tokens (2 full pages), fits in the fourth page without giving up the prefix."""
    module, weights = tiny_llama
    executor = InterpreterExecutor(module, weights, num_pages=4)
    engine = Engine(executor, NoText())
    start = [1, *range(40, 79)]  # 40 tokens
    first = run(engine, "a", start)
    assert executor.free_pages() == 1  # 40 + 5 computed tokens in 3 pages, kept
    second = run(engine, "b", [*start, 7, 8, 9])
    assert second.cached_tokens == 40 and second.completion_tokens == first.completion_tokens
    engine.clear_prefix_cache()
    assert executor.free_pages() == executor.num_pages
