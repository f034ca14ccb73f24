"""Perplexity of a model on the shipped held-out text (passes/data/heldout.txt), as a markdown row.

    python tools/perplexity.py smollm2                                    # f32, numpy interpreter
    python tools/perplexity.py smollm2 -q int4 --group-size 64 --quantizer gptq
    python tools/perplexity.py BUNDLE                                     # a compiled bundle
    python tools/perplexity.py BUNDLE --decode                  # through its decode, token by token

The text is tokenized with the model's tokenizer (no special tokens) and cut into non-overlapping
windows of --window tokens; each window is scored on its own from an empty context, every token
after the first predicted from those before it: perplexity = exp(mean negative log-likelihood).
A checkpoint runs in the numpy interpreter on the same optimized graph a bundle is compiled from
(fusions, compute dtype, int4 quantization, weights computed as at compile time); a bundle runs
its compiled prefill with logits for every position.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from ferrumc.cli import int4_choice, quantize_options
from ferrumc.passes.calibration import HELDOUT, read_text, token_windows

# Logits [T, V] for one window of token ids.
Scorer = Callable[[np.ndarray], np.ndarray]


def interpreter_scorer(ref: str, dtype: str, quantize) -> tuple[Scorer, Callable[[str], list[int]]]:
    """The forward graph after the compile pipeline's shared passes, run by the numpy interpreter."""
    from ferrumc.frontend.resolve import load_model
    from ferrumc.ir import Module
    from ferrumc.ir.interpreter import run_graph
    from ferrumc.ir.types import DType
    from ferrumc.passes.calibration import pass_context
    from ferrumc.passes.eliminate_dead_code import EliminateDeadCode
    from ferrumc.passes.lift_weight_transforms import lift_weight_transforms
    from ferrumc.passes.manager import run_passes
    from ferrumc.passes.pipeline import CompileOptions, common_passes

    loaded = load_model(ref)
    ctx = pass_context(loaded)
    options = CompileOptions(dtype=DType(dtype), quantize=quantize)
    graph = run_passes(loaded.graph(), [*common_passes(options), EliminateDeadCode()], ctx=ctx)
    module, transforms = lift_weight_transforms(Module({"forward": graph}))
    forward = module.graphs["forward"]
    cache: dict[str, np.ndarray] = {}

    def stored(name: str) -> np.ndarray:  # a checkpoint weight, or one a pass computed (GPTQ)
        return ctx.weight(name, by="perplexity")

    def weight(name: str) -> np.ndarray:  # derived weights computed once, as a bundle stores them
        if name not in cache:
            in_transforms = name in transforms
            cache[name] = (
                run_graph(transforms[name], {}, stored)[name] if in_transforms else stored(name)
            )
        return cache[name]

    def score(ids: np.ndarray) -> np.ndarray:
        positions = np.arange(len(ids), dtype=np.int32)
        return run_graph(forward, {"tokens": ids, "positions": positions}, weight)["logits"]

    assert ctx.tokenize is not None, f"{ref} has no tokenizer"
    return score, ctx.tokenize


def bundle_label(path: Path) -> tuple[str, str]:
    """A bundle's compute dtype and its quantization as compiled (its manifest's options)."""
    from ferrumc.codegen.bundle import read_manifest

    options = read_manifest(path).options
    record = options.get("quantize")
    if not record:
        return options.get("dtype", "f32"), "none"
    label = f"{record['method']} g{record['group_size']} {record['scheme']} ({record['quantizer']})"
    x = options.get("int4_activations", "float")  # bundles from before the option: float
    return options.get("dtype", "f32"), f"{label}, x {x}"


def bundle_scorer(
    path: Path, window: int, decode: bool = False
) -> tuple[Scorer, Callable[[str], list[int]]]:
    """The bundle's compiled prefill, logits of every position (runtime/vm.py); with `decode`,
    the first token's by prefill and each later one's by a decode step."""
    from ferrumc.passes.calibration import tokenizer_from_json
    from ferrumc.runtime.loader import open_bundle
    from ferrumc.runtime.vm import CacheConfig

    bundle = open_bundle(path, cache=CacheConfig(1, window, window))
    executor = bundle.executor
    assert bundle.tokenizer_info is not None, f"{path} has no tokenizer"

    def score(ids: np.ndarray) -> np.ndarray:
        executor.add_sequence(0)
        try:
            if not decode:
                return executor.prefill([0], [ids.tolist()], last_only=False)
            rows = [executor.prefill([0], [ids[:1].tolist()])[0]]
            rows += [executor.decode([0], [int(t)])[0] for t in ids[1:]]
            return np.stack(rows)
        finally:
            executor.remove_sequence(0)

    return score, tokenizer_from_json(bundle.tokenizer_info.tokenizer_json)


def negative_log_likelihood(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """-log p(ids[t + 1] | ids[..t]) for each t, from logits [T, V] (float64 log-softmax)."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return log_norm - z[np.arange(len(ids) - 1), ids[1:]]


@click.command()
@click.argument("model")
@click.option("--dtype", type=click.Choice(("f32", "f16", "bf16")), default="f32")
@click.option("--window", type=int, default=256, show_default=True, help="Tokens per window.")
@click.option("--windows", type=int, help="Score only the first N windows (default: all).")
@quantize_options
@click.option(
    "--decode",
    is_flag=True,
    help="Bundle: score every token after the first through the compiled decode, one at a time "
    "(int4 linears round x to int8 unless compiled with --int4-activations float).",
)
def main(
    model: str,
    dtype: str,
    window: int,
    windows: int | None,
    decode: bool,
    int4_activations: str,
    **int4: object,
) -> None:
    quantize = int4_choice(**int4)  # type: ignore[arg-type]
    if int4_activations != "int8":
        raise click.UsageError("--int4-activations is chosen at compile time; score the bundle")
    start = time.perf_counter()
    if (Path(model) / "manifest.json").is_file():
        if quantize is not None:
            raise click.UsageError("a bundle is already compiled: drop -q and its options")
        score, tokenize = bundle_scorer(Path(model), window, decode)
        how = "bundle decode" if decode else "bundle"
        dtype, label = bundle_label(Path(model))
    else:
        if decode:
            raise click.UsageError("--decode scores a compiled bundle; compile MODEL first")
        score, tokenize = interpreter_scorer(model, dtype, quantize)
        how = "interpreter"
        label = "none" if quantize is None else str(quantize)
    chunks = token_windows(tokenize(read_text(HELDOUT)), window, windows)
    nll = np.concatenate([negative_log_likelihood(score(ids), ids) for ids in chunks])
    seconds = time.perf_counter() - start
    click.echo("| model | dtype | quantization | windows | tokens scored | perplexity | run |")
    click.echo("|---|---|---|---|---|---|---|")
    click.echo(
        f"| {model} | {dtype} | {label} | {len(chunks)} x {window} | {nll.size} | "
        f"{math.exp(nll.mean()):.3f} | {how}, {seconds:.0f} s |"
    )


if __name__ == "__main__":
    sys.exit(main())
