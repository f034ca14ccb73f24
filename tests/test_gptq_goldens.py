"""GPTQ checkpoints written by gptqmodel, loaded as they are (int4, not dequantized), reproduce transformers.

The checkpoints come from tools/make_gptq.py, the goldens (transformers running them through
gptqmodel's torch kernel in f32) from tools/make_gptq_goldens.py:
  - tiny fixtures, committed under tests/goldens/gptq/<name>/ with <name>.npz beside them:
    act-order and group-aware order, symmetric and asymmetric, checkpoint_format gptq and gptq_v2;
  - SmolLM2-135M at group 64 (`slow`), in ~/.cache/ferrumc/gptq/ with its golden beside it,
    skipped where tools/make_gptq.py has not been run.
Checked, per prompt: max |logit diff| <= TOLERANCE at every prompt position and 32 identical
greedy tokens, through the numpy interpreter (forward graph, then the optimized paged module)
and through an llvm bundle compiled with `--int4-activations float`, run in a fresh process
(tests/golden_runner.py). Bundles compiled the default way round x to int8 in calls of up to
8 rows (decode, batched decode, prompts that short: codegen/int4_int8x_cpu.py); their decode,
fed the golden's tokens, predicts the golden's next token at nearly every step.
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

from ferrumc.frontend.model import LoadedModel
from ferrumc.frontend.pull import sha256_of
from ferrumc.frontend.resolve import load_model
from ferrumc.ir.reference import forward_logits, generate
from ferrumc.passes.pipeline import optimize

FIXTURES = Path(__file__).parent / "goldens" / "gptq"
SMOLLM2_CACHE = Path.home() / ".cache" / "ferrumc" / "gptq"
TINY = sorted(p.stem for p in FIXTURES.glob("*.npz"))
SMOLLM2 = ["smollm2-gptq-g64", "smollm2-gptq-g64-actorder"]
GREEDY_STEPS = 32
# Both sides dequantize scale * (q - zero) in f32 and accumulate in f32, so what is left is
# summation order. Measured max |logit diff|: tiny fixtures 4.3e-5 (interpreter) and 6.0e-5
# (llvm); SmolLM2 (30 layers) 2.1e-4 and 2.3e-4. 1e-3, the f32 goldens' tolerance, is below
# every golden's smallest greedy margin (SmolLM2 0.0054, tiny 0.016) and catches dequantizing
# through f16 (f16 scale * (q - zero) rounded to f16, as gptqmodel's kernel does unless the
# scales are widened: 0.02-0.04 on the tiny fixtures) and any misread code or zero point.
TOLERANCE = 1e-3
# Int8 decode: the share of greedy steps, over all of a checkpoint's prompts, at which decode
# fed the golden's tokens predicts the golden's next one. Measured: tiny fixtures 0.958-1.0
# (their smallest margins are near int8 x's error), SmolLM2 0.99. A misread scale or zero
# point in the int8 kernel scores near chance.
INT8_AGREEMENT = 0.9


def checkpoint(name: str) -> tuple[Path, np.lib.npyio.NpzFile]:
    """The checkpoint folder and its golden; skips a SmolLM2 checkpoint that was never made."""
    root = SMOLLM2_CACHE if name.startswith("smollm2") else FIXTURES
    folder, golden = root / name, root / f"{name}.npz"
    if not (folder / "config.json").is_file() or not golden.is_file():
        pytest.skip(
            f"{folder} or its golden is missing: run `python tools/make_gptq.py --only {name}` "
            f"and `python tools/make_gptq_goldens.py --only {name}` (needs gptqmodel)"
        )
    golden_arrays = np.load(golden)
    assert sha256_of(folder / "model.safetensors") == str(golden_arrays["checkpoint_sha256"]), (
        f"{golden} was recorded for another {folder / 'model.safetensors'}: re-run "
        f"tools/make_gptq_goldens.py --only {name}"
    )
    return folder, golden_arrays


def load_quantized(folder: Path) -> LoadedModel:
    model = load_model(str(folder))
    config = json.loads((folder / "config.json").read_text())
    # Loaded as it is: the 7 linears of every layer read int4 weights, none went through floats.
    layers = config["num_hidden_layers"]
    assert len(model.quantized) == 7 * layers, f"{folder}: {sorted(model.quantized)} are int4"
    config = config["quantization_config"]
    assert {q.format.group_size for q in model.quantized.values()} == {config["group_size"]}
    assert {q.format.symmetric for q in model.quantized.values()} == {config["sym"]}
    return model


def test_fixtures_present() -> None:
    """The fixtures tools/make_gptq.py commits: the parametrized tests below must not be empty."""
    assert len(TINY) >= 3, f"expected the GPTQ fixtures in {FIXTURES}, found {TINY}"
    formats = set()
    for name in TINY:
        config = json.loads((FIXTURES / name / "config.json").read_text())["quantization_config"]
        assert config["quant_method"] == "gptq", name
        formats.add((config.get("checkpoint_format", "gptq"), config["sym"], config["desc_act"]))
    assert {f[0] for f in formats} == {"gptq", "gptq_v2"}
    assert {f[1] for f in formats} == {True, False}
    assert {f[2] for f in formats} == {True, False}


def interpreter_rows(model: LoadedModel, golden) -> list[dict[str, object]]:
    """Per prompt: max |logit diff| of the forward graph and the optimized prefill, and greedy tokens."""
    cache: dict[str, np.ndarray] = {}

    def weights(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = model.weights.load(name)
        return cache[name]

    forward = model.graph()
    module = optimize(forward)
    rows = []
    for i in range(int(golden["num_prompts"])):
        ids = golden[f"prompt_ids_{i}"].tolist()
        positions, want = golden[f"logit_positions_{i}"], golden[f"logits_{i}"]
        row: dict[str, object] = {"prompt": i}
        for stage, graph in (("forward", forward), ("prefill", module.graphs["prefill"])):
            row[stage] = float(np.abs(forward_logits(graph, weights, ids)[positions] - want).max())
        row["greedy"] = generate(module, weights, ids, GREEDY_STEPS).tokens
        row["expected"] = golden[f"greedy_ids_{i}"].tolist()
        rows.append(row)
    return rows


ALL_CASES = [*TINY, *(pytest.param(name, marks=pytest.mark.slow) for name in SMOLLM2)]


@pytest.mark.parametrize("name", ALL_CASES)
def test_interpreter_matches_transformers(name: str) -> None:
    folder, golden = checkpoint(name)
    for row in interpreter_rows(load_quantized(folder), golden):
        for stage in ("forward", "prefill"):
            assert row[stage] <= TOLERANCE, (
                f"{name} prompt {row['prompt']}, {stage}: max |logit diff| {row[stage]:.3g}"
            )
        assert row["greedy"] == row["expected"], f"{name} prompt {row['prompt']}: greedy differs"


@pytest.mark.parametrize("name", TINY)
def test_tolerance_tells_quantized_from_float(name: str, tiny_checkpoint) -> None:
    """The float model each fixture was quantized from misses its golden by far more than
    TOLERANCE: passing means the int4 weights were read right, not merely that a model ran."""
    _, golden = checkpoint(name)
    base = name.split("-")[0]  # fixtures are named <tiny model>-g<group>-...
    model = load_model(str(tiny_checkpoint(base)))
    ids, want = golden["prompt_ids_0"].tolist(), golden["logits_0"]
    diff = float(np.abs(forward_logits(model.graph(), model.weights.load, ids) - want).max())
    assert diff > 100 * TOLERANCE, f"{name}: float {base} is within {diff:.3g} of the GPTQ golden"


@pytest.fixture(scope="session")
def gptq_runs(
    request: pytest.FixtureRequest, bundle_cache_dir: Path, tmp_path_factory
) -> Callable[[str], dict[str, np.ndarray]]:
    """`gptq_runs(name, activations)` -> the golden runner's results for that checkpoint's llvm
    bundle compiled with `--int4-activations activations`.

    On first use compiles every checkpoint the session's selected tests ask for and runs them
    all in one fresh process, as tests/test_bundle_goldens.py does.
    """
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("needs TVM (the `compile` extra)")
    from ferrumc.codegen.cache import cached_bundle
    from ferrumc.passes.pipeline import INT4_ACTIVATIONS

    out_dir = tmp_path_factory.mktemp("gptq-runs")
    names = {
        item.callspec.params["name"]
        for item in request.session.items
        if "gptq_runs" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")
    }
    jobs, failed = [], {}
    for name, activations in ((n, a) for n in sorted(names) for a in INT4_ACTIVATIONS):
        root = SMOLLM2_CACHE if name.startswith("smollm2") else FIXTURES
        if not (root / name / "config.json").is_file():
            continue
        key = f"{name}-{activations}"
        try:
            bundle = cached_bundle(str(root / name), int4_activations=activations, progress=False)
        except Exception as e:  # the checkpoint's own test reports it
            failed[key] = e
            continue
        out = out_dir / f"{key}.npz"
        jobs.append({"bundle": str(bundle), "golden": str(root / f"{name}.npz"), "out": str(out)})
    (out_dir / "jobs.json").write_text(json.dumps(jobs))
    runner = [sys.executable, "-m", "ferrumc.tests.golden_runner", str(out_dir / "jobs.json")]
    subprocess.run(runner, check=True, timeout=1800)

    def results(name: str, activations: str) -> dict[str, np.ndarray]:
        key = f"{name}-{activations}"
        if key in failed:
            raise failed[key]
        out = out_dir / f"{key}.npz"
        if not out.exists():
            pytest.fail(
                f"the golden runner failed on {key}:\n{out.with_suffix('.err').read_text()}"
            )
        return dict(np.load(out))

    return results


@pytest.mark.parametrize("name", ALL_CASES)
def test_llvm_bundle_matches_transformers(name: str, gptq_runs) -> None:
    _, golden = checkpoint(name)
    got = gptq_runs(name, "float")
    for i in range(int(golden["num_prompts"])):
        diff = float(np.abs(got[f"logits_{i}"] - golden[f"logits_{i}"]).max())
        assert diff <= TOLERANCE, f"{name} prompt {i}: max |logit diff| {diff:.3g}"
        want = golden[f"greedy_ids_{i}"].tolist()
        assert len(want) == GREEDY_STEPS
        assert got[f"greedy_{i}"].tolist() == want, f"{name} prompt {i}: greedy tokens differ"


@pytest.mark.parametrize("name", ALL_CASES)
def test_int8_activation_decode_follows_transformers(name: str, gptq_runs) -> None:
    _, golden = checkpoint(name)
    got = gptq_runs(name, "int8")
    agree = []
    for i in range(int(golden["num_prompts"])):
        want = golden[f"greedy_ids_{i}"]
        assert len(got[f"forced_{i}"]) == len(want) == GREEDY_STEPS
        agree += (got[f"forced_{i}"] == want).tolist()
    share = float(np.mean(agree))
    assert share >= INT8_AGREEMENT, f"{name}: int8 decode agrees at {share:.1%} of greedy steps"
    print(f"{name}: int8 decode agrees with transformers at {share:.1%} of {len(agree)} steps")
