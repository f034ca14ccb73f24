"""Sliding-window attention on llvm: exact past the window through TVM's per-sequence window.

The step plan (runtime/sliding_window.py) is checked on its own; then the tiny mistral
(window 8) runs prompts of up to 20 tokens and 32 greedy steps against the interpreter and
transformers' goldens, alone, in a ragged batch and in prefill chunks split across calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrumc.codegen.kv_cache import cache_layout
from ferrumc.ir import ops
from ferrumc.ir.reference import forward_logits, generate_batch
from ferrumc.runtime.sliding_window import exact_steps
from ferrumc.runtime.vm import VMExecutor
from ferrumc.tests.codegen.test_llvm_frontend import compiled
from ferrumc.tests.codegen.tiny_paged import tiny_paged_module, vm_greedy_batch

GOLDEN = Path(__file__).parents[1] / "goldens" / "mistral.npz"
WINDOW = 8
ATOL = 1e-3


@pytest.mark.parametrize(
    ("starts", "lengths", "steps"),
    [
        ([0], [5], [[5]]),  # inside the window: one call
        ([0], [8], [[8]]),
        ([0], [11], [[8], [1], [1], [1]]),  # up to the window, then one token per call
        ([3], [7], [[5], [1], [1]]),  # a later chunk finishes the window first
        ([9], [2], [[1], [1]]),
        ([0, 6, 20], [3, 4, 1], [[3, 2, 1], [0, 1, 0], [0, 1, 0]]),
    ],
)
def test_exact_steps(starts, lengths, steps):
    assert exact_steps(starts, lengths, WINDOW) == steps


def _windowed(windows: dict[int, int | None]):
    module = tiny_paged_module()
    for graph in module.graphs.values():
        for node in graph.nodes:
            if isinstance(node.op, ops.PagedAttention):
                window = windows[node.op.layer]
                node.op = ops.PagedAttention(**{**node.op.attrs(), "sliding_window": window})
    return cache_layout(module)


def test_a_shared_window_is_the_caches():
    layout = _windowed({0: 6, 1: 6})
    assert (layout.sliding_window, layout.max_sequence_length) == (6, None)


@pytest.mark.parametrize("windows", [{0: 6, 1: 9}, {0: 6, 1: None}, {0: 1, 1: 1}])
def test_other_windows_limit_the_sequence_length(windows):
    layout = _windowed(windows)
    assert layout.sliding_window is None
    assert layout.max_sequence_length == min(w for w in windows.values() if w is not None)


@pytest.fixture(scope="module")
def mistral(tiny_checkpoint, tmp_path_factory):
    module, weights, built = compiled(tiny_checkpoint, "mistral", tmp_path_factory.mktemp("sw"))
    assert built.lowered.kv_cache.sliding_window == WINDOW
    return module, weights, VMExecutor(built.library, weights)


def test_mistral_matches_transformers_past_the_window(mistral):
    """Prompts of 5, 12 and 20 tokens, then 32 greedy tokens (52 in all, window 8)."""
    _, _, ex = mistral
    golden = np.load(GOLDEN)
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"].tolist()
        expected = golden[f"greedy_ids_{i}"].tolist()
        ex.add_sequence(i)
        prefill = ex.prefill([i], [ids], last_only=False)
        rows = golden[f"logit_positions_{i}"]
        assert np.abs(prefill[rows] - golden[f"logits_{i}"]).max() <= ATOL, f"prompt {i}"
        tokens = [int(np.argmax(prefill[-1]))]
        while len(tokens) < len(expected):
            tokens.append(int(np.argmax(ex.decode([i], [tokens[-1]])[0])))
        ex.remove_sequence(i)
        assert tokens == expected, f"prompt {i}: greedy tokens differ"


def test_mistral_batch_matches_the_interpreter(mistral):
    """A 20-token and a 6-token prompt prefilled together, then 16 decode steps together."""
    module, weights, ex = mistral
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, 256, n).tolist() for n in (20, 6)]
    steps = 16
    want = generate_batch(module, weights, prompts, steps)
    got = vm_greedy_batch(ex, [20, 21], prompts, steps)  # [B, steps, vocab]
    for b, gen in enumerate(want):
        assert np.argmax(got[b], axis=-1).tolist() == gen.tokens
        assert np.abs(got[b] - gen.logits).max() <= ATOL


def test_mistral_prefill_in_chunks_matches_one_forward(mistral):
    """A 20-token prompt given in chunks of 3, 9 and 8 tokens: every position's logits."""
    module, weights, ex = mistral
    prompt = np.random.default_rng(12).integers(0, 256, 20).tolist()
    want = forward_logits(module.graphs["prefill"], weights, prompt)
    ex.add_sequence(30)
    parts = [prompt[:3], prompt[3:12], prompt[12:]]
    got = np.concatenate([ex.prefill([30], [p], last_only=False) for p in parts])
    ex.remove_sequence(30)
    assert np.abs(got - want).max() <= ATOL
