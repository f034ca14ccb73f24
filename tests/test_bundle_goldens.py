"""Compiled bundles, loaded in a fresh process, reproduce transformers (tests/goldens/*.npz).

Every tiny architecture and SmolLM2 is compiled for llvm once per session (into the session's
compile cache); tests/golden_runner.py then opens all the bundles the selected tests need in
one fresh Python process and records what they compute. Checked here:
  - f32: max |logit diff| <= 1e-3 at the golden positions, and the golden's 32 greedy tokens;
  - f16 and bf16: top-1 agreement >= 99% over the golden positions that the dtype can decide
    (see `resolution`): the prompt positions that have logits, then each greedy step by
    teacher forcing (one prefill of the prompt and the golden continuation), so that one early
    near-tie does not decide every later position.
And a batch of 4 sequences decodes the same tokens as each of them alone.

Each bundle costs 10-25 s of compiling on 2 busy cores, so the default run keeps one model per
feature: llama (tied embeddings, llama3 rope), qwen2 (qkv bias, yarn), mistral (sliding window,
decoded well past it), qwen3_moe (qk-norm, experts), SmolLM2 (a real GGUF checkpoint), and one
bf16 bundle; the rest are `slow`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ferrumc.tests.tiny_checkpoints import TINY_MODELS

if importlib.util.find_spec("tvm") is None:
    pytest.skip("needs TVM (the `compile` extra)", allow_module_level=True)

GOLDENS = Path(__file__).parent / "goldens"
TOLERANCE = 1e-3
MIN_TOP1 = 0.99
GREEDY_STEPS = 32
MODELS = [*TINY_MODELS, "smollm2"]
DEFAULT_CASES = {
    *((name, "f32") for name in ("llama", "qwen2", "mistral", "qwen3_moe", "smollm2")),
    ("llama", "bf16"),
}


def cases(dtypes: tuple[str, ...]) -> list:
    return [
        pytest.param(name, dtype, marks=() if (name, dtype) in DEFAULT_CASES else pytest.mark.slow)
        for name in MODELS
        for dtype in dtypes
    ]


@pytest.fixture(scope="session")
def fresh_run(
    request: pytest.FixtureRequest, compiled_bundle: Callable[..., Path], tmp_path_factory
) -> Callable[[str, str], dict[str, np.ndarray]]:
    """`fresh_run(name, dtype)` -> the golden runner's results for that bundle.

    On first use, compiles every (name, dtype) the session's selected tests ask for and runs
    them all in one subprocess (one TVM import instead of one per bundle).
    """
    out_dir = tmp_path_factory.mktemp("fresh")
    jobs = []
    for name, dtype in sorted(_selected_cases(request.session)):
        try:
            bundle = compiled_bundle(name, dtype)
        except (Exception, pytest.skip.Exception):
            continue  # the case's own test meets the failure (or skip) again, alone
        out = out_dir / f"{name}-{dtype}.npz"
        golden = GOLDENS / f"{name}.npz"
        jobs.append({"bundle": str(bundle), "golden": str(golden), "out": str(out)})
    (out_dir / "jobs.json").write_text(json.dumps(jobs))
    runner = [sys.executable, "-m", "ferrumc.tests.golden_runner", str(out_dir / "jobs.json")]
    subprocess.run(runner, check=True, timeout=900)

    def results(name: str, dtype: str) -> dict[str, np.ndarray]:
        compiled_bundle(name, dtype)  # skips (SmolLM2 missing) or raises what compile raised
        out = out_dir / f"{name}-{dtype}.npz"
        if not out.exists():
            pytest.fail(
                f"the golden runner failed on {name} {dtype}:\n{out.with_suffix('.err').read_text()}"
            )
        return dict(np.load(out))

    return results


def _selected_cases(session: pytest.Session) -> set[tuple[str, str]]:
    """(name, dtype) of every selected test here that uses fresh_run."""
    selected = set()
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "fresh_run" in getattr(item, "fixturenames", ()) and "name" in params:
            selected.add((params["name"], params["dtype"]))
    return selected


@pytest.mark.parametrize(("name", "dtype"), cases(("f32",)))
def test_f32_bundle_matches_transformers(name: str, dtype: str, fresh_run) -> None:
    got, golden = fresh_run(name, dtype), np.load(GOLDENS / f"{name}.npz")
    for i in range(int(golden["num_prompts"])):
        diff = float(np.abs(got[f"logits_{i}"] - golden[f"logits_{i}"]).max())
        assert diff <= TOLERANCE, f"{name} prompt {i}: max |logit diff| {diff:.3g}"
        want = golden[f"greedy_ids_{i}"].tolist()
        assert len(want) == GREEDY_STEPS, "goldens from an older tools/make_goldens.py"
        assert got[f"greedy_{i}"].tolist() == want, f"{name} prompt {i}: greedy tokens differ"


@pytest.mark.parametrize(("name", "dtype"), cases(("f16", "bf16")))
def test_low_precision_bundle_agrees_on_top1(name: str, dtype: str, fresh_run) -> None:
    got, golden = fresh_run(name, dtype), np.load(GOLDENS / f"{name}.npz")
    agree = total = positions = 0
    for i in range(int(golden["num_prompts"])):
        logits = golden[f"logits_{i}"]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        want = np.concatenate([logits.argmax(-1), golden[f"greedy_ids_{i}"]])
        margins = np.concatenate([top2[:, 1] - top2[:, 0], golden[f"greedy_margins_{i}"]])
        decidable = margins > resolution(dtype, float(np.abs(logits).max()))
        agree += int((got[f"teacher_{i}"] == want)[decidable].sum())
        total += int(decidable.sum())
        positions += len(want)
    assert total >= positions // 2, f"{name} {dtype}: only {total}/{positions} positions decidable"
    assert agree / total >= MIN_TOP1, f"{name} {dtype}: top-1 agreement {agree}/{total}"


def resolution(dtype: str, scale: float) -> float:
    """The smallest top-2 margin `dtype` decides reliably for logits of magnitude `scale`.

    Four spacings of the dtype at that magnitude: each layer rounds its hidden state, so the
    logits of any implementation in that dtype (the numpy interpreter's too) are off by a few
    spacings. transformers' f32 margins on the random tiny models go down to ~0.01, below one
    bf16 spacing (0.125 at |logit| ~ 30), where the reference interpreter in bf16 agrees with
    transformers on only 95-99% of all positions.
    """
    mantissa_bits = {"f16": 10, "bf16": 7}[dtype]
    return 4 * 2.0 ** (np.floor(np.log2(scale)) - mantissa_bits)


def greedy(executor, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Prefill the prompts in one ragged call, then decode them together."""
    ids = list(range(len(prompts)))
    for s in ids:
        executor.add_sequence(s)
    tokens = [executor.prefill(ids, prompts).argmax(-1).tolist()]
    for _ in range(steps - 1):
        tokens.append(executor.decode(ids, tokens[-1]).argmax(-1).tolist())
    for s in ids:
        executor.remove_sequence(s)
    return [list(t) for t in zip(*tokens, strict=True)]


def test_batch_decode_matches_each_sequence_alone(compiled_bundle) -> None:
    from ferrumc.runtime.loader import open_bundle

    executor = open_bundle(compiled_bundle("qwen2")).executor
    rng = np.random.default_rng(7)
    # Different lengths; the longest spans two 16-token pages before decoding starts.
    prompts = [rng.integers(5, 256, n).tolist() for n in (3, 11, 20, 6)]
    alone = [greedy(executor, [p], 16)[0] for p in prompts]
    assert greedy(executor, prompts, 16) == alone
