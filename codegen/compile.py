"""The compile driver: a model reference in, a bundle directory out, one phase at a time.

    ferrumc compile MODEL -t llvm --dtype f32 -o OUT.ferrum

Lowering comes before the weights (unlike the order a reader might expect) because it is
cheap, fails fast on ops without a lowering, and fixes the library's weight order, which is
the order the weights are then streamed into the shards.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from .. import __version__
from ..errors import CodegenError
from ..frontend.model import LoadedModel
from ..frontend.resolve import load_model
from ..ir.graph import Graph
from ..ir.interpreter import run_graph
from ..ir.types import DType, storage_shape
from ..passes.calibration import pass_context
from ..passes.lift_weight_transforms import lift_weight_transforms
from ..passes.pipeline import CompileOptions, optimize
from ..passes.quantization import Int4Quantization
from .build import compile_lowered, library_path, metadata
from .bundle import BundleWriter, Manifest
from .kv_cache import CREATE_ARGS, CREATE_FUNCTION
from .lower import LoweredModule, lower_module
from .progress import CompileProgress
from .records import config_record, tokenizer_record
from .targets import Target, get_target

PHASES = ("load", "optimize", "lift", "lower", "weights", "build", "write")


def compile_model(
    ref: str,
    out: Path,
    *,
    target: str | Target = "llvm",
    options: CompileOptions | None = None,
    progress: bool = True,
    dump_ir: Path | None = None,
    identity: dict[str, Any] | None = None,
) -> Manifest:
    """Compile the model `ref` names (anything frontend.resolve takes) into the bundle `out`.

    `identity` (the compile cache's model identity) is recorded in the manifest when given.
    """
    options = options or CompileOptions()
    target = get_target(target) if isinstance(target, str) else target
    prog = CompileProgress(PHASES, progress)
    try:
        with BundleWriter(out) as writer:
            # Config, tokenizer and weight types from the checkpoint; weight data stays on disk.
            with prog.phase("load"):
                # With -q int4, int4 checkpoint tensors (GGUF Q4_0 / Q4_1) stay as they are.
                loaded = load_model(ref, keep_int4=options.quantize is not None)
            # Fusions, the compute dtype, int4 and paged attention: the graphs the library runs.
            with prog.phase("optimize"):
                ctx = pass_context(loaded)
                module = optimize(loaded.graph(), options, dump_ir, prog.detail, ctx)
            # Weight-only subgraphs (qkv concat, casts, int4) become weights computed once, here.
            with prog.phase("lift"):
                module, transforms = lift_weight_transforms(module)
            # Relax functions and the KV cache's kernels; fixes the library's weight order.
            with prog.phase("lower"):
                int8x = options.int4_activations == "int8"
                lowered = lower_module(module, target, int8_activations=int8x)
            # One weight at a time: read or compute it, append it to a shard, let it go.
            with prog.phase("weights"):
                weights = _weights(loaded, ctx.derived, transforms, lowered, prog)
                params = writer.write_params(weights)
            # TVM: fuse, schedule, generate code and link; the longest phase.
            with prog.phase("build"):
                library, kernels = _build(lowered, target, writer.dir, prog)
            # The manifest last: its hash covers the rest, and the rename publishes the bundle.
            with prog.phase("write"):
                manifest = _manifest(ref, loaded, lowered, target, options, identity)
                manifest.params = params
                manifest.library = {**writer.add_library(library), "kernels": kernels}
                if loaded.tokenizer is not None:
                    stored = writer.write_tokenizer(loaded.tokenizer.tokenizer_json)
                    manifest.tokenizer = {**stored, **tokenizer_record(loaded.tokenizer)}
                manifest.timings = dict(prog.timings)
                writer.commit(manifest)
    except BaseException:
        prog.close(None)
        raise
    prog.close(f"compiled {manifest.name} ({kernels} kernels) to {out}")
    return manifest


def _weights(
    loaded: LoadedModel,
    computed: dict[str, np.ndarray],
    transforms: dict[str, Graph],
    lowered: LoweredModule,
    prog: CompileProgress,
) -> Iterator[tuple[str, DType, np.ndarray]]:
    """Every weight the library takes, in its order: read from the checkpoint, computed by a pass
    (GPTQ's codes), or computed from those by the numpy interpreter (derived weights), checked
    against its type."""

    def load(name: str) -> np.ndarray:
        return computed[name] if name in computed else loaded.weights.load(name)

    names = lowered.weight_names
    for i, name in enumerate(names, start=1):
        prog.detail(f"{i}/{len(names)} {name}")
        array = run_graph(transforms[name], {}, load)[name] if name in transforms else load(name)
        t = lowered.weight_types[name]
        shape = storage_shape(t.dtype, t.shape)
        if array.dtype != t.dtype.numpy or tuple(array.shape) != tuple(shape):
            raise CodegenError(
                f"weight {name!r} came out as {array.dtype}{list(array.shape)}, the library "
                f"expects {t.dtype.numpy}{list(shape)} (a frontend or lift-weight-transforms bug)"
            )
        yield name, t.dtype, array


def _build(
    lowered: LoweredModule, target: Target, folder: Path, prog: CompileProgress
) -> tuple[Path, int]:
    """Compile and export the library into `folder`; returns its path and its kernel count."""
    counter = _KernelCounter(prog)
    with tvm.transform.PassContext(instruments=[counter]):
        executable = compile_lowered(lowered, target)
    library = library_path(folder, "model", target)
    executable.export_library(str(library))
    return library, counter.kernels


@tvm.instrument.pass_instrument
class _KernelCounter:
    """Shows each TVM pass's name and counts the TIR kernels after the Relax pipeline."""

    def __init__(self, prog: CompileProgress) -> None:
        self.prog = prog
        self.kernels = 0
        self.relax_done = False

    def run_before_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        suffix = f", {self.kernels} kernels" if self.relax_done else ""
        self.prog.detail(f"{info.name}{suffix}")

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        # The last pass of build.relax_pipeline: every kernel the library will hold exists now.
        if info.name == "AttachGlobalSymbol" and not self.relax_done:
            self.kernels = sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())
            self.relax_done = True


def _manifest(
    ref: str,
    loaded: LoadedModel,
    lowered: LoweredModule,
    target: Target,
    options: CompileOptions,
    identity: dict[str, Any] | None,
) -> Manifest:
    # What build.py's sidecar holds (the weights come from the shards' table instead).
    library = metadata(lowered, target)
    kv_cache = library["kv_cache"]
    if kv_cache is not None:
        kv_cache = {
            **kv_cache,
            "create_function": CREATE_FUNCTION,
            "create_args": list(CREATE_ARGS),
        }
    model = {
        "source": ref,
        "path": str(loaded.source),
        "format": loaded.format,
        "identity": identity,
        "config": config_record(loaded.config),
        # generation_config.json's defaults, JSON-safe.
        "generation": json.loads(json.dumps(loaded.generation, default=str)),
    }
    return Manifest(
        name=model_name(ref, loaded.source),
        ferrumc_version=__version__,
        tvm_version=tvm.__version__,
        tvm_ffi_version=tvm_ffi.__version__,
        target={**target.describe(), "machine": platform.machine()},
        model=model,
        options=options_record(options),
        entry_points=library["functions"],
        kv_cache=kv_cache,
    )


def options_record(options: CompileOptions) -> dict[str, Any]:
    """Compile options as JSON values (enums by value, quantization by its record), for the
    manifest and the cache key."""

    def record(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        return v.record() if isinstance(v, Int4Quantization) else v

    return {f.name: record(getattr(options, f.name)) for f in dataclasses.fields(options)}


def model_name(ref: str, source: Path) -> str:
    """A short name: the alias or Hugging Face id as given, else the folder or file name."""
    if Path(ref).expanduser().exists():
        return source.name if source.is_dir() else source.stem
    return ref


def compile_command(
    ref: str,
    target: str,
    dtype: str,
    output: Path | None,
    dump_ir: Path | None,
    quantize: Int4Quantization | None = None,
    int4_activations: str = "int8",
    kv_dtype: str | None = None,
) -> Path:
    """`ferrumc compile`: into `output`, or into the compile cache (reused when already there;
    rebuilt when IR dumps are asked for, so that they get written)."""
    if output is None:
        from .cache import cached_bundle

        return cached_bundle(
            ref,
            target=target,
            dtype=dtype,
            quantize=quantize,
            int4_activations=int4_activations,
            kv_dtype=kv_dtype,
            rebuild=dump_ir is not None,
            dump_ir=dump_ir,
        )
    options = CompileOptions.from_flags(dtype, quantize, int4_activations, kv_dtype)
    compile_model(ref, output, target=target, options=options, dump_ir=dump_ir)
    return output
