"""Open MODEL or BUNDLE for generation: a compiled bundle through the loader, or the numpy interpreter.

`ferrumc run`, `bench` and `serve` start here. The compiled path is `runtime.loader.open_model`
(bundles and the compile cache); the interpreter path builds the paged module from the
checkpoint, computes its fused weights once, and runs it with ir/interpreter: exact, slow,
and free of TVM.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError, UnsupportedModel
from ..frontend.model import TokenizerInfo
from .tokenizer import Tokenizer
from .types import Executor


@dataclass(frozen=True)
class LaunchOptions:
    target: str = "llvm"
    dtype: str = "f32"
    interpreter: bool = False  # force the numpy interpreter even where the loader exists
    max_batch_size: int = 4  # sequences generated at once
    max_total_tokens: int = 4096  # the KV cache, in tokens over all sequences
    prefill_chunk_size: int = 512  # tokens per prefill call
    threads: int | None = None  # compiled kernels' worker threads (default: every usable core)


@dataclass
class Launched:
    """What generation needs: an executor and its tokenizer, and how long opening took."""

    name: str
    executor: Executor
    tokenizer: Tokenizer
    tokenizer_info: TokenizerInfo
    kind: str  # "compiled" or "interpreter"
    load_seconds: float


def compiled_available() -> bool:
    """Whether TVM is installed, without importing it (seconds)."""
    return importlib.util.find_spec("tvm") is not None


def launch(ref: str, options: LaunchOptions | None = None) -> Launched:
    """Open `ref` (a bundle directory or anything `ferrumc compile` takes) ready to generate.

    Without TVM installed, checkpoints run on the interpreter (a note says so on stderr).
    """
    options = options or LaunchOptions()
    start = time.perf_counter()
    if options.interpreter or not compiled_available():
        if not options.interpreter:
            print("ferrumc: TVM is not installed; running the numpy interpreter", file=sys.stderr)
        name, executor, info = _interpreted(ref, options)
        kind = "interpreter"
    else:
        if options.threads is not None:
            # TVM's pool reads this once, at the first parallel kernel: before anything runs.
            os.environ["TVM_NUM_THREADS"] = str(options.threads)
        name, executor, info = _compiled(ref, options)
        kind = "compiled"
    if info is None:
        raise UnsupportedModel(
            f"{ref}: no tokenizer found; generation needs the checkpoint's tokenizer.json "
            "(or a GGUF with tokenizer metadata)"
        )
    return Launched(name, executor, Tokenizer(info), info, kind, time.perf_counter() - start)


def _compiled(ref: str, options: LaunchOptions) -> tuple[str, Executor, TokenizerInfo | None]:
    from .loader import open_model
    from .vm import CacheConfig

    cache = CacheConfig(
        options.max_batch_size, options.max_total_tokens, options.prefill_chunk_size
    )
    bundle = open_model(ref, target=options.target, dtype=options.dtype, cache=cache)
    return bundle.name, bundle.executor, bundle.tokenizer_info


def _interpreted(ref: str, options: LaunchOptions) -> tuple[str, Executor, TokenizerInfo | None]:
    from ..frontend.resolve import load_model
    from ..ir.interpreter import run_graph
    from ..ir.types import DType
    from ..passes.lift_weight_transforms import lift_weight_transforms
    from ..passes.pipeline import CompileOptions, optimize
    from .interpreter_executor import InterpreterExecutor

    if (Path(ref).expanduser() / "manifest.json").is_file():
        raise BundleError(
            f"{ref} is a compiled bundle: the interpreter runs checkpoints; drop --interpreter, "
            "or pass the model itself (checkpoint directory, .gguf file or alias)"
        )
    loaded = load_model(ref)
    module = optimize(loaded.graph(), CompileOptions(dtype=DType(options.dtype)))
    # Fused weights (qkv, gate_up, casts) computed once, as a bundle does, not at every call.
    module, transforms = lift_weight_transforms(module)

    def weight(name: str) -> np.ndarray:
        if name in transforms:
            return run_graph(transforms[name], {}, loaded.weights.load)[name]
        return loaded.weights.load(name)

    context = min(loaded.config.max_position_embeddings, options.max_total_tokens)
    executor = InterpreterExecutor(
        module, weight, num_pages=-(-options.max_total_tokens // 16), max_context=context
    )
    return (
        loaded.source.stem if loaded.source.is_file() else loaded.source.name,
        executor,
        loaded.tokenizer,
    )
