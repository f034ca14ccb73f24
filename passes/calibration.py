"""Calibration data for data-dependent passes: the shipped text, token windows, and the
activation statistics (GPTQ's Hessians) gathered by running the float graph in the interpreter."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PassError
from ..ir.graph import Graph, Value, live_nodes, rebuild
from ..ir.interpreter import Weights, run_graph
from ..ir.ops import Input
from .base import PassContext

if TYPE_CHECKING:
    from ..frontend.model import LoadedModel

DATA = Path(__file__).parent / "data"
# Public-domain English prose (passes/data/README.md): one part to calibrate on, and a
# held-out part that tools/perplexity.py measures on, so no quantizer sees the test text.
DEFAULT_CALIBRATION = DATA / "calibration.txt"
HELDOUT = DATA / "heldout.txt"


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PassError(f"cannot read calibration text {path}: {e}; give a UTF-8 text file") from e


def text_sha256(path: Path) -> str:
    return hashlib.sha256(read_text(path).encode()).hexdigest()


def tokenizer_from_json(tokenizer_json: str) -> Callable[[str], list[int]]:
    """Text -> token ids with a `tokenizers` tokenizer, no special tokens added."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def pass_context(loaded: LoadedModel) -> PassContext:
    """What data-dependent passes (GPTQ) read of a loaded model: its weights and its tokenizer."""
    tok = loaded.tokenizer
    tokenize = tokenizer_from_json(tok.tokenizer_json) if tok is not None else None
    return PassContext(load_weight=loaded.weights.load, tokenize=tokenize)


def token_windows(ids: Sequence[int], length: int, count: int | None = None) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of `length` tokens (at most `count`), as i32 arrays."""
    n = len(ids) // length if count is None else min(count, len(ids) // length)
    return [np.asarray(ids[i * length : (i + 1) * length], np.int32) for i in range(n)]


def calibration_windows(
    tokenize: Callable[[str], list[int]] | None,
    path: Path | None,
    count: int,
    length: int,
    by: str,
) -> list[np.ndarray]:
    """`count` windows of `length` tokens from the text at `path` (None: the shipped text)."""
    if tokenize is None:
        raise PassError(
            f"pass {by} calibrates on text but the pass context has no tokenizer; "
            "create it as PassContext(tokenize=tokenizer_from_json(...))"
        )
    path = path or DEFAULT_CALIBRATION
    ids = tokenize(read_text(path))
    windows = token_windows(ids, length, count)
    if not windows:
        raise PassError(
            f"pass {by}: calibration text {path} has {len(ids)} tokens, fewer than one "
            f"sequence of {length}; give a longer text or shorter sequences"
        )
    return windows


def collect_hessians(
    graph: Graph, values: Sequence[Value], windows: Sequence[np.ndarray], weights: Weights
) -> dict[Value, np.ndarray]:
    """H = 2 X^T X / n (f32 [K, K]) for each value X[..., K] of `graph`, X gathered over all the
    calibration windows in one interpreter run per window (graph inputs: tokens, positions)."""
    names = {v: f"calibration.{i}" for i, v in enumerate(dict.fromkeys(values))}
    probe = Graph(graph.name, graph.nodes, {name: v for v, name in names.items()})
    probe = rebuild(probe, keep=live_nodes(probe))
    inputs = {n.op.name for n in probe.inputs}  # type: ignore[attr-defined]
    if inputs != {"tokens", "positions"}:
        raise PassError(
            f"calibration runs a model's forward graph (inputs tokens, positions); "
            f"graph {graph.name} takes {sorted(inputs)}"
        )
    sums = {v: np.zeros((v.tensor.shape[-1],) * 2, np.float32) for v in names}
    rows = 0
    for ids in windows:
        positions = np.arange(len(ids), dtype=np.int32)
        out = run_graph(probe, {"tokens": ids, "positions": positions}, weights)
        for v, name in names.items():
            x = out[name].astype(np.float32).reshape(-1, sums[v].shape[0])
            sums[v] += x.T @ x
        rows += len(ids)
    return {v: s * np.float32(2 / rows) for v, s in sums.items()}


def weight_value(graph: Graph, value: Value, weights: Weights) -> np.ndarray:
    """The data of a weight-only value of `graph` (a weight, a concat of weights, a cast, ...)."""
    probe = Graph(graph.name, graph.nodes, {"value": value})
    keep = [n for n in live_nodes(probe) if not isinstance(n.op, Input)]
    return run_graph(rebuild(probe, keep=keep), {}, weights)["value"]
