"""Record transformers' logits and greedy tokens for the GPTQ checkpoints that tools/make_gptq.py writes.

Needs torch, transformers, optimum and gptqmodel (transformers runs GPTQ checkpoints through
gptqmodel's kernels); CI never runs this, it only reads the .npz files.

    python tools/make_gptq_goldens.py [--only NAME] [--cache DIR]

The format is tools/make_goldens.py's (logits at every prompt position, 32 greedy tokens and
their top-1 minus top-2 margins), plus checkpoint_sha256 (of model.safetensors) and
gptqmodel_version. Tiny fixtures' goldens go to tests/goldens/gptq/<name>.npz, SmolLM2's next
to its checkpoint in the cache (DIR/<name>.npz): that checkpoint is not committed, and a
re-quantized one may differ.

transformers computes in f32 with gptqmodel's plain torch kernel (dequantize, then matmul),
with the checkpoint's f16 scales widened to f32 first so that each weight is
scale * (q - zero) in f32, not that product rounded to f16: what ferrumc computes in f32.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, GPTQConfig

from ferrumc.frontend.pull import sha256_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_goldens import SMOLLM2_CHAT, SMOLLM2_TEXT, load, record, save_golden, tiny_prompts  # noqa: E402
from make_gptq import CHECKPOINTS, FIXTURE_DIR, GptqCheckpoint, parse_args  # noqa: E402

SMOLLM2_EXTRA_TEXT = "def fibonacci(n):\n    "  # code: a different part of the model's knowledge
# gptqmodel's plain torch kernel: dequantize to the activations' dtype, then matmul.
TORCH_BACKEND = "gptq_torch"


def load_gptq(folder: Path):
    """The checkpoint in transformers (f32, eager attention), scales widened to f32."""
    model = load(folder, quantization_config=GPTQConfig(bits=4, backend=TORCH_BACKEND))
    widened = 0
    for module in model.modules():
        scales = getattr(module, "scales", None)
        if isinstance(scales, torch.Tensor) and scales.dtype != torch.float32:
            module.scales = scales.float()
            widened += 1
    kernels = {type(m).__name__ for m in model.modules() if hasattr(m, "qweight")}
    print(f"  kernels {sorted(kernels)}, widened {widened} scale tensors to f32")
    return model


def golden(spec: GptqCheckpoint, folder: Path) -> dict[str, np.ndarray]:
    model = load_gptq(folder)
    if spec.is_fixture:
        prompts = tiny_prompts()
        texts = None
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        chat = tokenizer.apply_chat_template(
            SMOLLM2_CHAT, add_generation_prompt=True, tokenize=False
        )
        texts = [chat, SMOLLM2_TEXT, SMOLLM2_EXTRA_TEXT]
        prompts = [
            np.array(tokenizer(t, add_special_tokens=False).input_ids, dtype=np.int32)
            for t in texts
        ]
    arrays = record(model, prompts, last_positions=None)
    for i, text in enumerate(texts or []):
        arrays[f"prompt_text_{i}"] = np.array(text)
    arrays["checkpoint_sha256"] = np.array(sha256_of(folder / "model.safetensors"))
    arrays["gptqmodel_version"] = np.array(importlib.metadata.version("gptqmodel"))
    return arrays


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    for name in args.only or list(CHECKPOINTS):
        spec = CHECKPOINTS[name]
        folder = (FIXTURE_DIR if spec.is_fixture else args.cache) / name
        if not (folder / "config.json").is_file():
            print(f"{name}: no checkpoint at {folder}; run tools/make_gptq.py --only {name}")
            continue
        print(f"{name}: {folder}")
        print(f"  {save_golden(folder.parent / f'{name}.npz', name, golden(spec, folder))}")


if __name__ == "__main__":
    main()
