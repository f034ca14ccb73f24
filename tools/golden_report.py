"""Print how closely ferrumc's interpreter, before and after the pass pipeline, follows the goldens.

python tools/golden_report.py            # every tiny model and SmolLM2
"""

from __future__ import annotations

import sys

import numpy as np

from ferrumc.frontend.gguf import load_gguf
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.tests.test_goldens import GOLDENS, compare_with_golden
from ferrumc.tests.tiny_checkpoints import TINY_MODELS, write_tiny_checkpoint


def main() -> int:
    import tempfile
    from pathlib import Path

    print(
        "| model | prompt | tokens | max abs logit diff, forward | after pipeline (paged prefill) | greedy tokens identical |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            name: lambda n=name: load_hf(write_tiny_checkpoint(n, Path(tmp) / n))
            for name in TINY_MODELS
        }
        smollm2 = alias_file(ALIASES["smollm2"])
        if smollm2 is not None:
            models["smollm2"] = lambda: load_gguf(smollm2)
        worst = 0.0
        for name, load in models.items():
            for row in compare_with_golden(load(), np.load(GOLDENS / f"{name}.npz")):
                same = row["greedy"] == row["expected"]
                print(
                    f"| {name} | {row['prompt']} | {row['tokens']} | {row['forward']:.2e} | {row['prefill']:.2e} | {'yes' if same else 'NO'} ({len(row['expected'])}) |"
                )
                worst = max(worst, row["forward"], row["prefill"])
    print(f"\nworst max abs logit diff: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
