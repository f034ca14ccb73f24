"""The whole path on the tiny Hugging Face checkpoints: frontend, passes, codegen, Relax VM.

Each model is loaded, optimized into prefill and decode graphs, its weight-only subgraphs
lifted and computed by the interpreter (as the bundle writer does), compiled for llvm, and
its greedy generation compared with the interpreter's.
"""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.codegen.build import build
from ferrumc.codegen.targets import TARGETS
from ferrumc.frontend.hf import load_hf
from ferrumc.ir.interpreter import run_graph
from ferrumc.ir.reference import generate
from ferrumc.ir.types import DType
from ferrumc.passes.lift_weight_transforms import lift_weight_transforms
from ferrumc.passes.pipeline import CompileOptions, optimize
from ferrumc.runtime.vm import VMExecutor

ATOL = 1e-3
# Low-precision runs round at the same points as the interpreter but may differ by an ulp or
# two of the largest logits (|logits| ~ 40 here): tolerances relative to that magnitude.
RTOL = {DType.f16: 2e-3, DType.bf16: 2.5e-2}
# mistral past its 8-token window: tests/codegen/test_sliding_window_llvm.py.
PROMPT = [5, 17, 33, 140]
STEPS = 5


def compiled(
    tiny_checkpoint, name: str, out_dir, dtype: DType = DType.f32, kv_dtype: DType | None = None
):
    loaded = load_hf(tiny_checkpoint(name, dtype.value))
    options = CompileOptions(dtype, kv_dtype=kv_dtype)
    module, transforms = lift_weight_transforms(optimize(loaded.graph(), options))
    weights = {n: loaded.weights.load(n) for n in loaded.weights.types}
    for derived, graph in transforms.items():
        weights[derived] = run_graph(graph, {}, weights)[derived]
    return module, weights, build(module, TARGETS["llvm"], out_dir)


@pytest.mark.parametrize(
    "name",
    [
        "llama",
        pytest.param("qwen2", marks=pytest.mark.slow),
        pytest.param("qwen3", marks=pytest.mark.slow),
        pytest.param("llama_linear", marks=pytest.mark.slow),
        pytest.param("mistral", marks=pytest.mark.slow),
    ],
)
def test_greedy_generation_matches_the_interpreter(tiny_checkpoint, tmp_path, name):
    module, weights, built = compiled(tiny_checkpoint, name, tmp_path)
    want = generate(module, weights, PROMPT, STEPS)
    got = _greedy(VMExecutor(built.library, weights))
    assert np.argmax(got, axis=-1).tolist() == want.tokens
    assert np.abs(got - want.logits).max() <= ATOL


def _greedy(ex: VMExecutor) -> np.ndarray:
    ex.add_sequence(0)
    logits = [ex.prefill([0], [PROMPT])[-1]]
    for _ in range(STEPS - 1):
        logits.append(ex.decode([0], [int(np.argmax(logits[-1]))])[0])
    return np.stack(logits).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
def test_low_precision_generation_matches_the_interpreter(tiny_checkpoint, tmp_path, dtype):
    module, weights, built = compiled(tiny_checkpoint, "llama", tmp_path, dtype)
    want = generate(module, weights, PROMPT, STEPS)
    got = _greedy(VMExecutor(built.library, weights))
    assert np.argmax(got, axis=-1).tolist() == want.tokens
    assert np.abs(got - want.logits).max() <= RTOL[dtype] * np.abs(want.logits).max()


@pytest.mark.parametrize(
    ("dtype", "kv_dtype"),
    [(DType.f32, DType.f16), pytest.param(DType.f16, DType.f32, marks=pytest.mark.slow)],
)
def test_kv_cache_in_another_dtype_matches_the_interpreter(
    tiny_checkpoint, tmp_path, dtype, kv_dtype
):
    """--kv-dtype: TVM's cache stores (and attends in) its own dtype, the graph around it keeps
    the compute dtype. The interpreter's reference cache rounds the stored keys and values
    alike; TVM also casts q and the attention output, hence a tolerance of f16's order."""
    module, weights, built = compiled(tiny_checkpoint, "llama", tmp_path, dtype, kv_dtype)
    ex = VMExecutor(built.library, weights)
    assert ex.library.metadata["kv_cache"]["dtype"] == kv_dtype.numpy.name  # TVM's name too
    want = generate(module, weights, PROMPT, STEPS)
    got = _greedy(ex)
    assert np.argmax(got, axis=-1).tolist() == want.tokens
    assert np.abs(got - want.logits).max() <= RTOL[DType.f16] * np.abs(want.logits).max()
