"""The optimization pipeline: from the frontend's forward graph to the prefill and decode entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..ir.graph import Graph, Module
from ..ir.ops import ATTENTION_FORMS
from ..ir.types import DType
from ..ir.verify import verify_module
from .base import Pass, PassContext, all_passes
from .cast_compute_dtype import CastComputeDType
from .eliminate_dead_code import EliminateDeadCode
from .fuse_add_rmsnorm import FuseAddRMSNorm
from .fuse_gate_up import FuseGateUp
from .fuse_qkv import FuseQKV
from .manager import PassManager
from .quantization import Int4Quantization
from .rewrite_paged_attention import RewritePagedAttention


@dataclass(frozen=True)
class CompileOptions:
    """What the user chooses at compile time (model and target facts live elsewhere)."""

    dtype: DType = DType.f32
    # Weight-only int4 for the float linears (format and quantizer); None keeps them float.
    quantize: Int4Quantization | None = None


def common_passes(options: CompileOptions) -> list[Pass]:
    """Passes shared by every entry point, in order."""
    return [
        # Before fuse-qkv: its generic rule (linears sharing an input) would also take the gate/up
        # pair; this pass owns it, and alone knows the MoE experts' gate/up stacks.
        FuseGateUp(),
        # One GEMM for q, k and v (and any other linears reading one input).
        FuseQKV(),
        # The residual add and the next norm in one pass over memory.
        FuseAddRMSNorm(),
        # After fusion, so the casts land on the final nodes; weight casts fold at compile time.
        CastComputeDType(options.dtype),
        # Last, on the final matrices: a fused qkv or gate_up matrix quantizes to the same codes
        # as its parts (groups run along rows; GPTQ's Hessian is that of their shared input), so
        # one quantize per matrix and fusions that need not know int4; GPTQ calibrates on the
        # activations of the compute dtype.
        *([options.quantize.quantize_pass()] if options.quantize else []),
    ]


def form_passes(form: str) -> list[Pass]:
    """Passes that specialize the shared graph to one entry point."""
    return [
        # Attention through the paged KV cache, in the form this entry point runs.
        RewritePagedAttention(form),
        # Whatever the rewrites left unread (weights included) does not reach the bundle.
        EliminateDeadCode(),
    ]


def optimize(
    graph: Graph,
    options: CompileOptions | None = None,
    dump_dir: Path | None = None,
    on_pass: Callable[[str], None] | None = None,
    ctx: PassContext | None = None,
) -> Module:
    """The forward graph as a module with graphs "prefill" and "decode".

    With `dump_dir`, the IR after each shared pass goes to dump_dir/NN-<pass>.ir and after each
    per-form pass to dump_dir/<form>/NN-<pass>.ir. `on_pass` hears each pass's name before it runs.
    `ctx` gives data-dependent passes (GPTQ) the weights and tokenizer, and collects what they compute.
    """
    options = options or CompileOptions()
    ctx = ctx or PassContext()
    shared = PassManager(common_passes(options), dump_dir, ctx, on_pass=on_pass).run(graph)
    module = Module()
    for form in ATTENTION_FORMS:
        form_dir = dump_dir / form if dump_dir is not None else None
        module.graphs[form] = PassManager(form_passes(form), form_dir, ctx, on_pass=on_pass).run(
            shared
        )
    return verify_module(module)


# Every pass by CLI name, found from the classes themselves (each pass module is imported above).
PASSES: dict[str, type[Pass]] = all_passes()
