"""Compile a ferrumc Module for a target: lower to Relax, fuse, schedule, `tvm.compile`, export.

The library is written next to a small JSON sidecar (weight order and types, entry
signatures, KV cache layout, target) that runtime/vm.py reads when given no metadata. Bundles
(codegen/compile.py) carry the same facts in their manifest and need no sidecar.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax as rx

from ..ir.graph import Module
from .lower import LoweredModule, lower_module
from .schedule_cpu import cpu_schedule_pass
from .schedule_gpu import gpu_schedule_pass
from .targets import Target
from .vm_trim import DropTensorKills, DropWeightChecks

METADATA_VERSION = 1


@dataclass(frozen=True)
class BuildResult:
    library: Path
    metadata: Path
    lowered: LoweredModule
    lower_seconds: float
    compile_seconds: float


def schedule_passes(target: Target) -> list[tvm.transform.Pass]:
    """GPU kernels need loops bound to threads (dlight's rules); CPU gets the parallel rule."""
    if target.needs_thread_binding:
        return [gpu_schedule_pass()]
    return [cpu_schedule_pass()]


def relax_pipeline(target: Target) -> tvm.transform.Pass:
    """Relax IRModule to VM-ready IRModule, one phase per group."""
    return tvm.transform.Sequential(
        [
            # Fold w.T into the matmul; otherwise every linear copies its weight per call.
            rx.transform.FuseTransposeMatmul(),
            # High-level ops become TIR PrimFuncs.
            rx.transform.LegalizeOps(),
            rx.transform.AnnotateTIROpPattern(),
            rx.transform.FoldConstant(),
            # Elementwise producers and consumers merge into one kernel each.
            rx.transform.FuseOps(),
            rx.transform.FuseTIR(),
            rx.transform.DeadCodeElimination(),
            *schedule_passes(target),
            # Dataflow to VM instructions with statically planned memory.
            rx.transform.RewriteDataflowReshape(),
            rx.transform.ToNonDataflow(),
            rx.transform.RemovePurityChecking(),
            rx.transform.CallTIRRewrite(),
            rx.transform.StaticPlanBlockMemory(),
            rx.transform.LowerAllocTensor(),
            rx.transform.KillAfterLastUse(),
            rx.transform.LowerRuntimeBuiltin(),
            DropTensorKills(),
            rx.transform.ComputePrimValue(),
            rx.transform.VMShapeLower(),
            DropWeightChecks(),
            rx.transform.AttachGlobalSymbol(),
            *([] if target.needs_thread_binding else [mark_no_alias]),
        ]
    )


@tvm.transform.module_pass(opt_level=0, name="MarkNoAlias")
def mark_no_alias(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """CPU: every PrimFunc declares that its buffers do not overlap (`tirx.noalias`).

    Our kernels declare it; TVM's KV-cache kernels and the VM's shape functions do not. One
    function without it in the library (even a shape function of one buffer) made LLVM keep
    the stores of local accumulators inside the loops of every kernel: the prefill GEMM
    stored its 16 accumulators after each input, one zmm store per FMA, and prefill ran at
    ~60% of its speed (codegen/NOTES.md). The declaration holds for each of them: none
    writes a tensor it also receives through another parameter (the KV cache's in-place
    kernels read and write their pages through one parameter). GPU libraries are left as
    they are: nothing here was measured there.
    """
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and not func.attrs.get("tirx.noalias"):
            mod.update_func(gv, func.with_attr("tirx.noalias", True))
    return mod


def compile_lowered(lowered: LoweredModule, target: Target) -> rx.Executable:
    tvm_target = target.tvm_target()
    # CUDA needs the target in scope or codegen fails with "No CUDA architecture" (TVM.md).
    with tvm_target:
        return tvm.compile(lowered.mod, target=tvm_target, relax_pipeline=relax_pipeline(target))


def metadata(lowered: LoweredModule, target: Target) -> dict[str, object]:
    layout = lowered.kv_cache
    return {
        "version": METADATA_VERSION,
        "target": target.describe(),
        "weights": [
            {"name": n, "dtype": t.dtype.value, "shape": list(t.shape)}
            for n, t in lowered.weight_types.items()
        ],
        "functions": {
            name: {"inputs": list(ins), "outputs": list(outs)}
            for name, (ins, outs) in lowered.signatures.items()
        },
        "kv_cache": None if layout is None else layout.__dict__,
    }


def library_path(out_dir: Path, name: str, target: Target) -> Path:
    return out_dir / f"{name}.{target.library_format}"


def build(module: Module, target: Target, out_dir: Path, name: str = "model") -> BuildResult:
    """Compile `module` into `out_dir/name.so` (or .tar) plus `out_dir/name.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lowered = lower_module(module, target)
    lowered_at = time.perf_counter()
    executable = compile_lowered(lowered, target)
    library = library_path(out_dir, name, target)
    executable.export_library(str(library))
    done = time.perf_counter()
    meta = out_dir / f"{name}.json"
    meta.write_text(json.dumps(metadata(lowered, target), indent=1) + "\n")
    return BuildResult(library, meta, lowered, lowered_at - start, done - lowered_at)
