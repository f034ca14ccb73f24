"""The optimization pipeline: from the frontend's forward graph to the prefill and decode entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PassError
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
from .fuse_swiglu import FuseSwiGLU
from .manager import PassManager
from .quantization import Int4Quantization
from .rewrite_paged_attention import RewritePagedAttention
from .split_heads import SplitHeads

INT4_ACTIVATIONS = ("int8", "float")


@dataclass(frozen=True)
class CompileOptions:
    """What the user chooses at compile time (model and target facts live elsewhere)."""

    dtype: DType = DType.f32
    # Weight-only int4 for the float linears (format and quantizer); None keeps them float.
    quantize: Int4Quantization | None = None
    # What int4 linears (quantized here or loaded so) multiply their weights with, in decode
    # and prefill, on CPUs with int8 dot products (AVX-512 VNNI): "int8" rounds x to int8 per
    # block of 32 inputs, as llama.cpp's Q4_0 does, for ~2x the speed at ~5e-3 relative error
    # per linear; "float" keeps x exact. GPUs compute in float either way.
    int4_activations: str = "int8"
    # The KV cache's dtype; None stores it in the compute dtype. f16 under an f32 model halves
    # the cache (as llama.cpp's default f16 cache does) at ~5e-4 relative rounding of k, v, q
    # and the attention output.
    kv_dtype: DType | None = None

    @classmethod
    def from_flags(
        cls,
        dtype: str = "f32",
        quantize: Int4Quantization | None = None,
        int4_activations: str = "int8",
        kv_dtype: str | None = None,
    ) -> CompileOptions:
        """The options `ferrumc compile`'s flags spell (`--dtype f16`, `--kv-dtype f16`)."""
        try:
            kv = DType.parse(kv_dtype) if kv_dtype else None
            return cls(DType.parse(dtype), quantize, int4_activations, kv)
        except ValueError as e:
            raise PassError(f"compile dtype: {e}") from None

    def __post_init__(self) -> None:
        if self.int4_activations not in INT4_ACTIVATIONS:
            raise PassError(
                f"unknown int4 activations {self.int4_activations!r}; "
                f"use one of {', '.join(INT4_ACTIVATIONS)}"
            )


def common_passes(options: CompileOptions) -> list[Pass]:
    """Passes shared by every entry point, in order."""
    return [
        # Before fuse-qkv: its generic rule (linears sharing an input) would also take the gate/up
        # pair; this pass owns it, and alone knows the MoE experts' gate/up stacks.
        FuseGateUp(),
        # One GEMM for q, k and v (and any other linears reading one input).
        FuseQKV(),
        # Its output cut into heads after one reshape, so the cut fuses with what reads the heads.
        SplitHeads(),
        # The residual add and the next norm in one pass over memory.
        FuseAddRMSNorm(),
        # After fusion, so the casts land on the final nodes; weight casts fold at compile time.
        CastComputeDType(options.dtype),
        # Last, on the final matrices: a fused qkv or gate_up matrix quantizes to the same codes
        # as its parts (groups run along rows; GPTQ's Hessian is that of their shared input), so
        # one quantize per matrix and fusions that need not know int4; GPTQ calibrates on the
        # activations of the compute dtype.
        *([options.quantize.quantize_pass()] if options.quantize else []),
        # On the int4 gate/up linears the quantizer made (or the checkpoint brought): SiLU and
        # the product as the kernel's epilogue.
        FuseSwiGLU(),
    ]


def form_passes(form: str, options: CompileOptions) -> list[Pass]:
    """Passes that specialize the shared graph to one entry point."""
    return [
        # Attention through the paged KV cache, in the form this entry point runs.
        RewritePagedAttention(form, options.kv_dtype),
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
        passes = form_passes(form, options)
        module.graphs[form] = PassManager(passes, form_dir, ctx, on_pass=on_pass).run(shared)
    return verify_module(module)


# Every pass by CLI name, found from the classes themselves (each pass module is imported above).
PASSES: dict[str, type[Pass]] = all_passes()
