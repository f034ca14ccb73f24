"""A tiny paged decoder compiled for llvm and run by the Relax VM matches the numpy interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ferrumc.codegen.build import BuildResult, build
from ferrumc.codegen.targets import TARGETS
from ferrumc.errors import BundleError, RequestError
from ferrumc.ir.reference import generate, generate_batch
from ferrumc.runtime.vm import CacheConfig, VMExecutor
from ferrumc.tests.codegen.tiny_paged import random_weights, tiny_paged_module

ATOL = 1e-3
PROMPT = [3, 14, 15, 9, 2, 6, 5, 35, 8]
STEPS = 5  # the prefill's last row, then 4 greedy decode steps


@pytest.fixture(scope="module")
def module():
    return tiny_paged_module()


@pytest.fixture(scope="module")
def weights(module):
    return random_weights(module)


@pytest.fixture(scope="module")
def built(module, tmp_path_factory) -> BuildResult:
    return build(module, TARGETS["llvm"], tmp_path_factory.mktemp("llvm"))


def greedy(ex: VMExecutor, prompts: list[list[int]], steps: int) -> np.ndarray:
    """Prefill all prompts in one ragged call, then decode them together; logits [B, steps, V]."""
    seq_ids = list(range(len(prompts)))
    for s in seq_ids:
        ex.add_sequence(s)
    history = [ex.prefill(seq_ids, prompts)]
    for _ in range(steps - 1):
        history.append(ex.decode(seq_ids, np.argmax(history[-1], axis=-1).tolist()))
    return np.stack(history, axis=1)


def test_prefill_and_decode_match_the_interpreter(built, module, weights):
    want = generate(module, weights, PROMPT, STEPS)
    got = greedy(VMExecutor(built.library, weights), [PROMPT], STEPS)[0]
    assert np.argmax(got, axis=-1).tolist() == want.tokens
    assert np.abs(got - want.logits).max() <= ATOL


def test_ragged_batch_matches_the_interpreter(built, module, weights):
    # The last prompt spans two of the cache's 16-token pages, then a third while decoding.
    prompts = [PROMPT, [7, 1, 40], list(range(30, 60))]
    want = generate_batch(module, weights, prompts, STEPS)
    ex = VMExecutor(built.library, weights, CacheConfig(max_batch_size=3, max_total_seq_len=256))
    got = greedy(ex, prompts, STEPS)
    for b, gen in enumerate(want):
        assert np.argmax(got[b], axis=-1).tolist() == gen.tokens
        assert np.abs(got[b] - gen.logits).max() <= ATOL


def test_every_prefill_row_matches(built, module, weights):
    from ferrumc.ir.interpreter import run_graph
    from ferrumc.ir.kvcache_ref import PagedKVCache

    cache = PagedKVCache(module.graphs["prefill"].inputs[2].op.type, num_pages=4)
    cache.add_sequence(0)
    cache.begin_forward([0], [len(PROMPT)])
    inputs = {
        "tokens": np.asarray(PROMPT, np.int32),
        "positions": np.arange(len(PROMPT), dtype=np.int32),
        "kv_cache": cache,
    }
    want = run_graph(module.graphs["prefill"], inputs, weights)["logits"]
    ex = VMExecutor(built.library, weights)
    ex.add_sequence(0)
    assert np.abs(ex.prefill([0], [PROMPT], last_only=False) - want).max() <= ATOL


def test_sequences_can_be_removed_and_reused(built, weights):
    ex = VMExecutor(built.library, weights)
    ex.add_sequence(0)
    first = ex.prefill([0], [PROMPT])
    ex.remove_sequence(0)
    ex.add_sequence(0)
    assert np.array_equal(ex.prefill([0], [PROMPT]), first)
    with pytest.raises(RequestError, match="sequence 5 was not added"):
        ex.decode([5], [1])


def test_missing_or_misshapen_weights_are_named(built, weights):
    with pytest.raises(BundleError, match=r"'norm\.weight' required by the library is missing"):
        VMExecutor(built.library, {k: v for k, v in weights.items() if k != "norm.weight"})
    bad = {**weights, "lm_head.weight": weights["lm_head.weight"][:10]}
    with pytest.raises(BundleError, match=r"'lm_head.weight' is float32\[10, 32\]"):
        VMExecutor(built.library, bad)


@pytest.mark.slow
def test_library_loads_in_a_fresh_process(built, weights, tmp_path: Path):
    np.savez(tmp_path / "weights.npz", **weights)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from ferrumc.runtime.vm import VMExecutor
        weights = dict(np.load({str(tmp_path / "weights.npz")!r}))
        ex = VMExecutor({str(built.library)!r}, weights)
        ex.add_sequence(0)
        logits = ex.prefill([0], [{PROMPT!r}])
        np.save({str(tmp_path / "out.npy")!r}, logits)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    ex = VMExecutor(built.library, weights)
    ex.add_sequence(0)
    assert np.array_equal(np.load(tmp_path / "out.npy"), ex.prefill([0], [PROMPT]))


@pytest.mark.slow
def test_cuda_target_compiles_without_a_gpu(module, tmp_path: Path):
    result = build(module, TARGETS["cuda"], tmp_path)
    assert result.library.stat().st_size > 0
