"""The optimization pipeline: from the frontend's forward graph to the prefill and decode entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..ir.graph import Graph, Module
from ..ir.ops import ATTENTION_FORMS
from ..ir.types import DType
from ..ir.verify import verify_module
from .base import Pass, all_passes
from .cast_compute_dtype import CastComputeDType
from .eliminate_dead_code import EliminateDeadCode
from .fuse_add_rmsnorm import FuseAddRMSNorm
from .fuse_gate_up import FuseGateUp
from .fuse_qkv import FuseQKV
from .manager import PassManager
from .rewrite_paged_attention import RewritePagedAttention


@dataclass(frozen=True)
class CompileOptions:
    """What the user chooses at compile time (model and target facts live elsewhere)."""

    dtype: DType = DType.f32


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
) -> Module:
    """The forward graph as a module with graphs "prefill" and "decode".

    With `dump_dir`, the IR after each shared pass goes to dump_dir/NN-<pass>.ir and after each
    per-form pass to dump_dir/<form>/NN-<pass>.ir. `on_pass` hears each pass's name before it runs.
    """
    options = options or CompileOptions()
    shared = PassManager(common_passes(options), dump_dir, on_pass=on_pass).run(graph)
    module = Module()
    for form in ATTENTION_FORMS:
        form_dir = dump_dir / form if dump_dir is not None else None
        module.graphs[form] = PassManager(form_passes(form), form_dir, on_pass=on_pass).run(shared)
    return verify_module(module)


# Every pass by CLI name, found from the classes themselves (each pass module is imported above).
PASSES: dict[str, type[Pass]] = all_passes()
