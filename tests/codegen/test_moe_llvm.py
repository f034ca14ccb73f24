"""Mixture of experts on llvm: routing and experts against the interpreter, then qwen3_moe whole.

One small graph checks moe_route (top-k with ties, with and without renormalizing) and
moe_experts (fused and separate gate/up) in f32 and f16; the tiny qwen3_moe checkpoint then
runs through frontend, passes and the Relax VM against the interpreter and transformers'
goldens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrumc.codegen.build import build
from ferrumc.codegen.targets import TARGETS
from ferrumc.ir import DType, GraphBuilder, Module, TensorType, ops
from ferrumc.ir.graph import Value
from ferrumc.ir.interpreter import run_graph
from ferrumc.ir.reference import generate_batch
from ferrumc.runtime.library import Library
from ferrumc.runtime.vm import VMExecutor
from ferrumc.tests.codegen.test_llvm_frontend import compiled
from ferrumc.tests.codegen.tiny_paged import vm_greedy_batch

GOLDEN = Path(__file__).parents[1] / "goldens" / "qwen3_moe.npz"
EXPERTS, HIDDEN, INTER, TOKENS = 6, 16, 8, 7
# f32 agrees to summation order; f16 rounds where the interpreter rounds (measured: exact).
ATOL = {DType.f32: 2e-6, DType.f16: 2e-3}
MODEL_ATOL = 1e-3


def _moe_graph() -> Module:
    b = GraphBuilder("moe")
    outs: dict[str, Value] = {}
    for dtype in (DType.f32, DType.f16):
        name = dtype.value
        x = b.input(f"x_{name}", TensorType(dtype, ("seq", HIDDEN)))
        logits = b.input(f"logits_{name}", TensorType(dtype, ("seq", EXPERTS)))
        w3, ids3 = b.emit(ops.MoERoute(top_k=3, normalize=True), logits)
        w2, ids2 = b.emit(ops.MoERoute(top_k=2, normalize=False), logits)
        down = b.weight(f"down_{name}", dtype, (EXPERTS, HIDDEN, INTER))
        gate_up = b.weight(f"gate_up_{name}", dtype, (EXPERTS, 2 * INTER, HIDDEN))
        gate = b.weight(f"gate_{name}", dtype, (EXPERTS, INTER, HIDDEN))
        up = b.weight(f"up_{name}", dtype, (EXPERTS, INTER, HIDDEN))
        fused = ops.MoEExperts(fused_gate_up=True)
        outs[f"weights3_{name}"], outs[f"ids3_{name}"] = w3, ids3
        outs[f"weights2_{name}"], outs[f"ids2_{name}"] = w2, ids2
        outs[f"fused_{name}"] = b.emit(fused, x, w3, ids3, gate_up, down)  # type: ignore[assignment]
        outs[f"separate_{name}"] = b.emit(ops.MoEExperts(), x, w2, ids2, gate, up, down)  # type: ignore[assignment]
    return Module({"moe": b.build(outs)})


def _inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for dtype in (DType.f32, DType.f16):
        logits = rng.normal(0, 2, (TOKENS, EXPERTS))
        logits[3] = logits[3, 0]  # every expert tied: ids must come in ascending order
        logits[4, 1] = logits[4, 4]  # one tie
        out[f"logits_{dtype.value}"] = logits.astype(dtype.numpy)
        out[f"x_{dtype.value}"] = rng.normal(0, 1, (TOKENS, HIDDEN)).astype(dtype.numpy)
    return out


@pytest.fixture(scope="module")
def op_results(tmp_path_factory):
    module = _moe_graph()
    rng = np.random.default_rng(5)
    weights = {
        n: rng.normal(0, 0.3, t.shape).astype(t.dtype.numpy)
        for n, t in module.weight_types().items()
    }
    inputs = _inputs(rng)
    built = build(module, TARGETS["llvm"], tmp_path_factory.mktemp("moe_ops"))
    got = Library(built.library, weights).run("moe", inputs)
    return got, run_graph(module.graphs["moe"], inputs, weights)


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16])
@pytest.mark.parametrize("name", ["weights3", "ids3", "weights2", "ids2", "fused", "separate"])
def test_moe_ops_match_the_interpreter(op_results, name, dtype):
    got, want = (r[f"{name}_{dtype.value}"] for r in op_results)
    assert got.dtype == want.dtype and got.shape == want.shape
    if name.startswith("ids"):
        assert got.tolist() == want.tolist()
    else:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
        assert diff <= ATOL[dtype], f"{name} {dtype.value}: max abs diff {diff}"


def test_tied_router_logits_pick_the_lower_expert_ids(op_results):
    got, _ = op_results
    assert got["ids3_f32"][3].tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def qwen3_moe(tiny_checkpoint, tmp_path_factory):
    module, weights, built = compiled(tiny_checkpoint, "qwen3_moe", tmp_path_factory.mktemp("moe"))
    return module, weights, VMExecutor(built.library, weights)


def test_qwen3_moe_matches_the_interpreter_in_a_batch(qwen3_moe):
    """Two ragged prompts prefilled together, then decoded together: MoE with T > 1 both ways."""
    module, weights, ex = qwen3_moe
    prompts, steps = [[5, 17, 33, 140, 2, 9], [200, 7, 61]], 6
    want = generate_batch(module, weights, prompts, steps)
    got = vm_greedy_batch(ex, [10, 11], prompts, steps)  # [B, steps, vocab]
    for b, gen in enumerate(want):
        assert np.argmax(got[b], axis=-1).tolist() == gen.tokens
        assert np.abs(got[b] - gen.logits).max() <= MODEL_ATOL


def test_qwen3_moe_matches_transformers(qwen3_moe):
    """Prefill logits of every prompt position and 32 greedy tokens, as tests/test_goldens.py."""
    _, _, ex = qwen3_moe
    golden = np.load(GOLDEN)
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"].tolist()
        expected = golden[f"greedy_ids_{i}"].tolist()
        ex.add_sequence(i)
        prefill = ex.prefill([i], [ids], last_only=False)
        rows = golden[f"logit_positions_{i}"]
        assert np.abs(prefill[rows] - golden[f"logits_{i}"]).max() <= MODEL_ATOL, f"prompt {i}"
        tokens = [int(np.argmax(prefill[-1]))]
        while len(tokens) < len(expected):
            tokens.append(int(np.argmax(ex.decode([i], [tokens[-1]])[0])))
        ex.remove_sequence(i)
        assert tokens == expected, f"prompt {i}: greedy tokens differ"
