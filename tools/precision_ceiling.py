"""How often any implementation with f16/bf16 weights can agree with the f32 goldens on top-1.

    python tools/precision_ceiling.py bf16     # or f16

Rounds only the checkpoint weights to the dtype and runs the numpy interpreter in f32 (the most
accurate a low-precision bundle could be), then counts top-1 agreement with the transformers
goldens over every golden position (prompt logits, then the greedy continuation by teacher
forcing). On the random tiny models many top-2 margins are below bf16's resolution, so this
ceiling is under 99% for bf16: tests/test_bundle_goldens.py therefore counts only positions the
dtype can decide.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from ferrumc.frontend.hf import load_hf
from ferrumc.ir.reference import forward_logits
from ferrumc.tests.test_goldens import GOLDENS
from ferrumc.tests.tiny_checkpoints import TINY_MODELS, write_tiny_checkpoint


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` rounded to f16 or bf16 (nearest even) and widened back to f32."""
    a = np.asarray(a, np.float32)
    if dtype == "f16":
        return a.astype(np.float16).astype(np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32)


def agreement(name: str, dtype: str, folder: Path) -> tuple[int, int]:
    model = load_hf(write_tiny_checkpoint(name, folder))
    weights = {k: round_to(model.weights.load(k), dtype) for k in model.weights.types}
    golden, graph = np.load(GOLDENS / f"{name}.npz"), model.graph()
    agree = total = 0
    for i in range(int(golden["num_prompts"])):
        prompt = golden[f"prompt_ids_{i}"].tolist()
        greedy = golden[f"greedy_ids_{i}"].tolist()
        logits = forward_logits(graph, weights, prompt + greedy[:-1])
        want = np.concatenate([golden[f"logits_{i}"].argmax(-1), greedy])
        rows = np.concatenate(
            [golden[f"logit_positions_{i}"], np.arange(len(prompt) - 1, len(logits))]
        )
        agree += int((logits[rows].argmax(-1) == want).sum())
        total += len(want)
    return agree, total


def main() -> int:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "bf16"
    print(f"| model | top-1 agreement, weights in {dtype}, compute in f32 |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in TINY_MODELS:
            agree, total = agreement(name, dtype, Path(tmp) / name)
            print(f"| {name} | {agree}/{total} = {agree / total:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
