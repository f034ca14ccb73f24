"""The frontend's graph, run by the numpy interpreter, reproduces transformers' logits on every tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrumc.frontend.hf import load_hf
from ferrumc.ir.interpreter import run_graph
from ferrumc.tests.tiny_checkpoints import TINY_MODELS

GOLDENS = Path(__file__).parent / "goldens"
TOLERANCE = 1e-3  # max abs logit difference; logits are O(10-50), f32 agrees to ~5e-5


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_logits_match_transformers(name: str, tiny_checkpoint) -> None:
    golden = np.load(GOLDENS / f"{name}.npz")
    model = load_hf(tiny_checkpoint(name))
    graph = model.graph()
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"].astype(np.int32)
        positions = np.arange(len(ids), dtype=np.int32)
        logits = run_graph(graph, {"tokens": ids, "positions": positions}, model.weights.load)
        got = logits["logits"][golden[f"logit_positions_{i}"]]
        want = golden[f"logits_{i}"]
        diff = float(np.abs(got - want).max())
        assert diff <= TOLERANCE, f"{name} prompt {i} ({len(ids)} tokens): max |diff| {diff:.3g}"
