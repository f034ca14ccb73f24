"""The engine over a compiled tiny model (llvm, Relax VM, TVM's paged cache) matches the interpreter."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ferrumc.errors import RequestError
from ferrumc.runtime.interpreter_executor import InterpreterExecutor
from ferrumc.tests.runtime.tiny_model import PROMPTS, run_greedy

if importlib.util.find_spec("tvm") is None:
    pytest.skip("needs TVM (the `compile` extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def executor(tiny_llama, tmp_path_factory):
    from ferrumc.codegen.build import build
    from ferrumc.codegen.targets import TARGETS
    from ferrumc.runtime.vm import CacheConfig, VMExecutor

    module, weights = tiny_llama
    library = build(module, TARGETS["llvm"], tmp_path_factory.mktemp("vm")).library
    cache = CacheConfig(max_batch_size=4, max_total_seq_len=256, prefill_chunk_size=32)
    return VMExecutor(library, weights, cache, max_context=200)


def test_vm_executor_reports_what_the_engine_needs(executor):
    assert executor.vocab_size == 256 and executor.page_size == 16
    assert executor.num_pages == executor.free_pages() == 256 // 16 + 1
    assert executor.max_context == 200
    assert (executor.max_batch_size, executor.prefill_chunk_size) == (4, 32)
    executor.add_sequence(99)
    every_row = executor.prefill([99], [PROMPTS[0]], last_only=False)
    executor.remove_sequence(99)
    executor.add_sequence(99)
    last = executor.prefill([99], [PROMPTS[0]])
    executor.remove_sequence(99)
    assert every_row.shape == (len(PROMPTS[0]), 256)
    # Projecting one row (a GEMV) or all of them (a GEMM) sums in a different order.
    np.testing.assert_allclose(last, every_row[-1:], rtol=1e-5, atol=1e-5)
    assert executor.free_pages() == executor.num_pages


def test_calls_past_the_cache_sizes_are_refused_with_the_limit_named(executor):
    ids = [90, 91, 92, 93, 94]
    for s in ids:
        executor.add_sequence(s)
    try:
        with pytest.raises(RequestError, match="prefill_chunk_size 32"):
            executor.prefill([90], [list(range(33))])
        with pytest.raises(RequestError, match="max_batch_size 4"):
            executor.decode(ids, [1] * 5)
        # Nothing was reserved by the refused calls: the sequences are still empty.
        assert executor.prefill([90], [list(range(32))]).shape == (1, 256)
        assert [executor.lengths[s] for s in ids] == [32, 0, 0, 0, 0]
    finally:
        for s in ids:
            executor.remove_sequence(s)
    assert executor.free_pages() == executor.num_pages


def test_engine_on_the_vm_matches_the_interpreter(executor, tiny_llama):
    want, _ = run_greedy(InterpreterExecutor(*tiny_llama, num_pages=32), PROMPTS)
    # Asked for more than the cache was built for, the engine stays within it.
    got, _ = run_greedy(executor, PROMPTS, chunk=64, batch=8)
    assert got == want


def test_a_forked_sequence_matches_one_computed_whole(executor):
    """TVM's fork (the prefix cache's): full pages shared, a partial last page copied."""
    prompt = PROMPTS[3]  # 31 tokens: a full page and a partial one
    executor.add_sequence(70)
    executor.prefill([70], [prompt])
    free = executor.free_pages()
    executor.fork_sequence(70, 71, 20)
    assert free - executor.free_pages() == 1, "only tokens 16..19's page is copied"
    forked = executor.prefill([71], [prompt[20:]])
    executor.add_sequence(72)
    whole = executor.prefill([72], [prompt])
    np.testing.assert_allclose(forked, whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(RequestError, match="first 40 tokens of sequence 70"):
        executor.fork_sequence(70, 73, 40)
    for s in (70, 71, 72):
        executor.remove_sequence(s)
    assert executor.free_pages() == executor.num_pages
