"""SmolLM2 (Q4_1 GGUF) through load_gguf and the numpy interpreter reproduces transformers' logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrumc.frontend.gguf import load_gguf
from ferrumc.frontend.pull import sha256_of
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.ir.reference import forward_logits

GOLDEN = Path(__file__).parent / "goldens" / "smollm2.npz"
TOLERANCE = 1e-3  # max abs logit difference; logits are O(30), f32 agrees to ~6e-5
# About 15 s (mostly dequantizing 135M parameters), so not marked slow.


def test_smollm2_logits_match_transformers() -> None:
    path = alias_file(ALIASES["smollm2"])
    if path is None:
        pytest.skip("SmolLM2 GGUF not available: `ferrumc pull smollm2`")
    golden = np.load(GOLDEN)
    assert sha256_of(path) == str(golden["gguf_sha256"]), "goldens were made from another GGUF"
    model = load_gguf(path)
    # Dequantize each weight once, not once per prompt.
    cache: dict[str, np.ndarray] = {}

    def weights(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = model.weights.load(name)
        return cache[name]

    graph = model.graph()
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"]
        got = forward_logits(graph, weights, ids.tolist())[golden[f"logit_positions_{i}"]]
        want = golden[f"logits_{i}"]
        diff = float(np.abs(got - want).max())
        assert diff <= TOLERANCE, f"prompt {i} ({len(ids)} tokens): max |diff| {diff:.3g}"
        assert (got.argmax(-1) == want.argmax(-1)).all()
