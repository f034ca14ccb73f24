"""The state one lowering function sees: the Relax BlockBuilder, symbolic dims and type mapping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import tvm
from tvm import relax as rx
from tvm import tirx

from ..ir.graph import Node
from ..ir.types import DType, KVCacheType, Shape, TensorType, Type, storage_shape
from .targets import Target

# u4 travels as its packed bytes: two values per uint8, low nibble first (ir/types.py).
TVM_DTYPES = {
    DType.f32: "float32",
    DType.f16: "float16",
    DType.bf16: "bfloat16",
    DType.i32: "int32",
    DType.u32: "uint32",
    DType.u8: "uint8",
    DType.u4: "uint8",
}


def tvm_dtype(dtype: DType) -> str:
    return TVM_DTYPES[dtype]


@dataclass
class LowerContext:
    """One Relax function being built: symbolic dims are shared by name across its values."""

    bb: rx.BlockBuilder
    target: Target
    # Int4 linears multiply x rounded to int8 where the CPU has VNNI (int4_int8x_cpu.py,
    # int4_int8x_gemm_cpu.py).
    int8_activations: bool = False
    dims: dict[str, tirx.Var] = field(default_factory=dict)
    # Values emitted once per function and shared by the nodes that need them (a key each).
    memo: dict[tuple[object, ...], rx.Var] = field(default_factory=dict)

    def dim(self, d: int | str) -> tvm.ir.PrimExpr | int:
        if isinstance(d, int):
            return d
        if d not in self.dims:
            self.dims[d] = tirx.Var(d, "int64")
        return self.dims[d]

    def shape(self, shape: Shape) -> list[tvm.ir.PrimExpr | int]:
        return [self.dim(d) for d in shape]

    def relax_type(self, t: Type) -> rx.Type:
        """The Relax type of an IR value; a KV cache is an opaque object."""
        if isinstance(t, KVCacheType):
            return rx.ObjectType()
        return rx.TensorType(self.shape(storage_shape(t.dtype, t.shape)), tvm_dtype(t.dtype))

    def emit(self, expr: rx.Expr, name: str = "") -> rx.Var:
        return self.bb.emit(expr, name_hint=name)

    def emit_te(self, fn: object, *args: object, name: str, **kwargs: object) -> rx.Var:
        """Emit a TE compute as its own PrimFunc called through call_tir."""
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name, **kwargs)


def out_tensor(node: Node, index: int = 0) -> TensorType:
    t = node.types[index]
    assert isinstance(t, TensorType), f"{node.op.opname} output {index} is not a tensor"
    return t


def cast(ctx: LowerContext, x: rx.Expr, dtype: str) -> rx.Expr:
    """`x` in `dtype`, emitting a cast only when the dtype differs."""
    if x.ty.dtype == dtype:
        return x
    return ctx.emit(rx.op.astype(x, dtype))


def tuple_items(ctx: LowerContext, tup: rx.Expr, count: int) -> Sequence[rx.Expr]:
    return [ctx.emit(rx.TupleGetItem(tup, i)) for i in range(count)]
