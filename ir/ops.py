"""The ops of the ferrumc IR: frozen dataclasses whose fields are attributes and whose `infer` types them.

Shape conventions (T = tokens, H = heads, D = head dim, E = experts, k = top-k):
  linear weights are [out, in] as in Hugging Face checkpoints; attention works on [T, H, D].
Every op's numerics are defined by the numpy interpreter (ir/interpreter.py).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import VerifyError
from .rope import RopeScaling
from .types import (
    FLOAT_DTYPES,
    Dim,
    DType,
    KVCacheType,
    Shape,
    TensorType,
    Type,
    format_shape,
    reshape_dims,
)

OPS: dict[str, type[Op]] = {}


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise VerifyError(message)


def _tensor(t: Type, what: str) -> TensorType:
    expect(isinstance(t, TensorType), f"{what} must be a tensor, got {t}")
    return t  # type: ignore[return-value]


def _float(t: Type, what: str) -> TensorType:
    tt = _tensor(t, what)
    expect(tt.dtype in FLOAT_DTYPES, f"{what} must be a float tensor, got {tt}")
    return tt


def _axis(axis: int, rank: int) -> int:
    expect(-rank <= axis < rank, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _same_dim(a: Dim, b: Dim, what: str) -> None:
    expect(a == b, f"{what}: {a} != {b}")


@dataclass(frozen=True)
class Op:
    """Base class: subclasses register under `opname` and type their outputs in `infer`."""

    opname: ClassVar[str] = ""
    # Inputs the op takes: an int, or None when `arity()` decides from the fields.
    num_inputs: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.opname:
            assert cls.opname not in OPS, f"duplicate op name {cls.opname}"
            OPS[cls.opname] = cls

    def arity(self) -> int | None:
        return self.num_inputs

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        raise NotImplementedError

    def verify(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        """Check the inputs and return the output types; raises VerifyError."""
        n = self.arity()
        if n is not None:
            expect(len(ins) == n, f"{self.opname} takes {n} inputs, got {len(ins)}")
        return self.infer(ins)

    def attrs(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, object]) -> Op:
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(hints[k], v) for k, v in attrs.items()})


def _coerce(hint: object, value: object) -> object:
    """Turn a JSON attribute value back into the field's Python type."""
    if value is None:
        return None
    args = typing.get_args(hint)
    if hint is DType or DType in args:
        return DType(value)
    if RopeScaling in args or hint is RopeScaling:
        return RopeScaling(**value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return tuple(value)
    if hint is float or float in args:
        return float(value)  # type: ignore[arg-type]
    return value


# --- sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Input(Op):
    """A run-time input of the graph (token ids, positions, the KV cache)."""

    opname: ClassVar[str] = "input"
    num_inputs: ClassVar[int] = 0
    name: str
    type: Type

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        return (self.type,)


@dataclass(frozen=True)
class Weight(Op):
    """A parameter read from the checkpoint (or derived from one at compile time)."""

    opname: ClassVar[str] = "weight"
    num_inputs: ClassVar[int] = 0
    name: str
    type: TensorType

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        return (self.type,)


SOURCES = (Input, Weight)


# --- linear algebra --------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding(Op):
    """Gather rows: (table[V, C], ids i32[...]) -> [..., C]."""

    opname: ClassVar[str] = "embedding"
    num_inputs: ClassVar[int] = 2

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        table, ids = _float(ins[0], "table"), _tensor(ins[1], "ids")
        expect(table.rank == 2, f"table must be [vocab, hidden], got {table}")
        expect(ids.dtype is DType.i32, f"ids must be i32, got {ids}")
        return (TensorType(table.dtype, (*ids.shape, table.shape[1])),)


@dataclass(frozen=True)
class Linear(Op):
    """y = x @ w.T (+ bias): (x[..., K], w[N, K], bias[N]?) -> [..., N] in x's dtype."""

    opname: ClassVar[str] = "linear"
    has_bias: bool = False

    def arity(self) -> int:
        return 3 if self.has_bias else 2

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x, w = _float(ins[0], "x"), _float(ins[1], "weight")
        expect(w.rank == 2, f"weight must be [out, in], got {w}")
        expect(x.rank >= 1, "x must have rank >= 1")
        _same_dim(x.shape[-1], w.shape[1], f"x {x} and weight {w} disagree on the input dim")
        if self.has_bias:
            b = _float(ins[2], "bias")
            expect(b.shape == (w.shape[0],), f"bias {b} must be [{w.shape[0]}]")
        return (TensorType(x.dtype, (*x.shape[:-1], w.shape[0])),)


@dataclass(frozen=True)
class Int4Linear(Op):
    """Group-quantized linear: y = x[..., perm] @ w.T (+ bias), w dequantized from 4-bit codes.

    w[n, k] = scales[n, k // g] * (q[n, k] - zero), zero = zeros[n, k // g] (float) or 8.
    Inputs, in this order: (x[..., K], q u4[N, K], scales[N, K/g], zeros[N, K/g]?, perm i32[K]?,
    bias[N]?) -> [..., N] in x's dtype; scales and zeros may be in any float dtype.
    `perm` (act-order checkpoints, whose groups are scattered over K) reorders x's columns so that
    each group of q is contiguous: column k of q multiplies x[..., perm[k]]. Without it, perm = identity.
    `swiglu`: the output is silu(y[..., :N/2]) * y[..., N/2:], [..., N/2] (a gated MLP's fused
    gate/up projection, gate rows first, with its activation as the kernel's epilogue).
    """

    opname: ClassVar[str] = "int4_linear"
    group_size: int = 32
    has_zeros: bool = False
    has_perm: bool = False
    has_bias: bool = False
    swiglu: bool = False

    def arity(self) -> int:
        return 3 + self.has_zeros + self.has_perm + self.has_bias

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x, q, scales = _float(ins[0], "x"), _tensor(ins[1], "qweight"), _float(ins[2], "scales")
        expect(q.dtype is DType.u4 and q.rank == 2, f"qweight must be u4[out, in], got {q}")
        n, k = q.shape
        _same_dim(x.shape[-1], k, f"x {x} and qweight {q} disagree on the input dim")
        expect(
            isinstance(k, int) and k % self.group_size == 0,
            f"in dim {k} is not a multiple of group size {self.group_size}",
        )
        groups = (n, k // self.group_size)  # type: ignore[operator]
        expect(scales.shape == groups, f"scales {scales} must be {format_shape(groups)}")
        rest = list(ins[3:])
        if self.has_zeros:
            zeros = _float(rest.pop(0), "zeros")
            expect(zeros.shape == groups, f"zeros {zeros} must be {format_shape(groups)}")
        if self.has_perm:
            perm = _tensor(rest.pop(0), "perm")
            expect(perm.dtype is DType.i32 and perm.shape == (k,), f"perm {perm} must be i32[{k}]")
        if self.has_bias:
            b = _float(rest.pop(0), "bias")
            expect(b.shape == (n,), f"bias {b} must be [{n}]")
        if self.swiglu:
            expect(
                isinstance(n, int) and n % 2 == 0,
                f"swiglu needs an even out dim (gate rows, then up rows), got {q}",
            )
            n = n // 2  # type: ignore[operator]
        return (TensorType(x.dtype, (*x.shape[:-1], n)),)


@dataclass(frozen=True)
class Int4Embedding(Op):
    """Gather rows of a group-quantized table, dequantizing only the rows gathered.

    table[v, c] = scales[v, c // g] * (q[v, c] - zero), zero = zeros[v, c // g] (float) or 8,
    as Int4Linear's weight. Inputs, in this order: (q u4[V, C], scales[V, C/g], zeros[V, C/g]?,
    ids i32[...]) -> [..., C] in `dtype`: Embedding's (table, ids) with the table as Int4Linear
    stores it. Scales and zeros may be in any float dtype; rows are dequantized in f32.
    """

    opname: ClassVar[str] = "int4_embedding"
    group_size: int = 32
    has_zeros: bool = False
    dtype: DType = DType.f32

    def arity(self) -> int:
        return 3 + self.has_zeros

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        q, scales = _tensor(ins[0], "qweight"), _float(ins[1], "scales")
        ids = _tensor(ins[-1], "ids")
        expect(q.dtype is DType.u4 and q.rank == 2, f"qweight must be u4[vocab, hidden], got {q}")
        expect(ids.dtype is DType.i32, f"ids must be i32, got {ids}")
        expect(self.dtype in FLOAT_DTYPES, f"dtype must be a float, got {self.dtype.value}")
        expect(self.group_size > 0, f"group size must be positive, got {self.group_size}")
        v, c = q.shape
        expect(
            isinstance(c, int) and c % self.group_size == 0,
            f"hidden dim {c} is not a multiple of group size {self.group_size}",
        )
        groups = (v, c // self.group_size)  # type: ignore[operator]
        expect(scales.shape == groups, f"scales {scales} must be {format_shape(groups)}")
        if self.has_zeros:
            zeros = _float(ins[2], "zeros")
            expect(zeros.shape == groups, f"zeros {zeros} must be {format_shape(groups)}")
        return (TensorType(self.dtype, (*ids.shape, c)),)


@dataclass(frozen=True)
class QuantizeInt4(Op):
    """Round-to-nearest int4 group quantization of a weight, into Int4Linear's inputs.

    (w[N, K]) -> (q u4[N, K], scales[N, K/g], zeros[N, K/g] unless symmetric), scales and zeros
    in `dtype`; numerics in ir/int4_quantize.py. Only ever applied to weights:
    lift-weight-transforms computes it at compile time, so it is never lowered.
    """

    opname: ClassVar[str] = "quantize_int4"
    num_inputs: ClassVar[int] = 1
    group_size: int = 32
    symmetric: bool = True
    dtype: DType = DType.f16

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        w = _float(ins[0], "weight")
        expect(w.rank == 2, f"weight must be [out, in], got {w}")
        expect(self.dtype in FLOAT_DTYPES, f"scales dtype must be a float, got {self.dtype.value}")
        n, k = w.shape
        expect(
            isinstance(k, int) and k % self.group_size == 0,
            f"in dim {k} is not a multiple of group size {self.group_size}",
        )
        groups = TensorType(self.dtype, (n, k // self.group_size))  # type: ignore[operator]
        q = TensorType(DType.u4, (n, k))
        return (q, groups) if self.symmetric else (q, groups, groups)


# --- normalization and position ------------------------------------------------------------------


def _norm_types(x: TensorType, w: Type) -> None:
    wt = _float(w, "norm weight")
    expect(wt.shape == (x.shape[-1],), f"norm weight {wt} must be [{x.shape[-1]}] for x {x}")


@dataclass(frozen=True)
class RMSNorm(Op):
    """y = x / sqrt(mean(x^2, -1) + eps) * w, computed in f32: (x[..., C], w[C]) -> x's type."""

    opname: ClassVar[str] = "rms_norm"
    num_inputs: ClassVar[int] = 2
    eps: float = 1e-6

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _float(ins[0], "x")
        _norm_types(x, ins[1])
        return (x,)


@dataclass(frozen=True)
class AddRMSNorm(Op):
    """s = x + residual; returns (rms_norm(s) * w, s): (x, residual, w[C]) -> (x's type, x's type)."""

    opname: ClassVar[str] = "add_rms_norm"
    num_inputs: ClassVar[int] = 3
    eps: float = 1e-6

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x, r = _float(ins[0], "x"), _float(ins[1], "residual")
        expect(x == r, f"x {x} and residual {r} must have the same type")
        _norm_types(x, ins[2])
        return (x, x)


@dataclass(frozen=True)
class Rotary(Op):
    """Rotary embedding, rotate-half (NeoX) layout on the first `rotary_dim` of D.

    (x[T, H, D], positions i32[T]) -> x's type; frequencies from ir/rope.py.
    """

    opname: ClassVar[str] = "rotary"
    num_inputs: ClassVar[int] = 2
    theta: float = 10000.0
    rotary_dim: int = 0
    scaling: RopeScaling | None = None

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x, pos = _float(ins[0], "x"), _tensor(ins[1], "positions")
        expect(x.rank == 3, f"x must be [T, H, D], got {x}")
        expect(
            pos.dtype is DType.i32 and pos.shape == x.shape[:1],
            f"positions must be i32[{x.shape[0]}], got {pos}",
        )
        d = x.shape[2]
        expect(
            0 < self.rotary_dim <= d and self.rotary_dim % 2 == 0,  # type: ignore[operator]
            f"rotary_dim {self.rotary_dim} must be even and in (0, {d}]",
        )
        return (x,)


# --- attention ----------------------------------------------------------------------------------------


def _qkv_types(op: Attention | PagedAttention, ins: Sequence[Type]) -> TensorType:
    q, k, v = (_float(t, n) for t, n in zip(ins[:3], ("q", "k", "v"), strict=True))
    expect(q.rank == 3 and k.rank == 3 and v.rank == 3, "q, k, v must be [T, H, D]")
    expect(q.shape[1] == op.num_heads, f"q {q} must have {op.num_heads} heads")
    expect(k.shape[1] == op.num_kv_heads, f"k {k} must have {op.num_kv_heads} kv heads")
    expect(k == v, f"k {k} and v {v} must have the same type")
    expect(
        q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2], f"q {q} and k {k} disagree on T or D"
    )
    expect(op.num_heads % op.num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads")
    expect(op.sliding_window is None or op.sliding_window > 0, "sliding_window must be positive")
    return q


@dataclass(frozen=True)
class Attention(Op):
    """Causal self-attention over the T tokens of one sequence, GQA by head groups.

    Token i attends to j <= i (and i - j < sliding_window if set); softmax in f32.
    (q[T, Hq, D], k[T, Hkv, D], v[T, Hkv, D]) -> [T, Hq, D].
    """

    opname: ClassVar[str] = "attention"
    num_inputs: ClassVar[int] = 3
    num_heads: int = 1
    num_kv_heads: int = 1
    scale: float = 1.0
    sliding_window: int | None = None

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        return (_qkv_types(self, ins),)


ATTENTION_FORMS = ("prefill", "decode")


@dataclass(frozen=True)
class PagedAttention(Op):
    """Attention through a paged KV cache: appends this step's k, v to `layer`'s pages, then
    attends each token to its own sequence's cached keys (causal, optional sliding window).

    The cache's current batch (sequence ids and token counts, in token order) is set by the
    runtime before the call. Form "prefill" takes ragged token runs; "decode" one token per
    sequence. (q[T, Hq, D], k[T, Hkv, D], v[T, Hkv, D], kv_cache) -> [T, Hq, D]. The cache may
    store another float dtype than k's: keys and values are rounded to it.
    """

    opname: ClassVar[str] = "paged_attention"
    num_inputs: ClassVar[int] = 4
    layer: int = 0
    num_heads: int = 1
    num_kv_heads: int = 1
    scale: float = 1.0
    sliding_window: int | None = None
    form: str = "prefill"

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        q = _qkv_types(self, ins)
        cache = ins[3]
        expect(isinstance(cache, KVCacheType), f"kv_cache must be a kvcache, got {cache}")
        assert isinstance(cache, KVCacheType)
        expect(
            self.form in ATTENTION_FORMS,
            f"form must be one of {ATTENTION_FORMS}, got {self.form!r}",
        )
        expect(
            0 <= self.layer < cache.num_layers,
            f"layer {self.layer} outside the cache's {cache.num_layers} layers",
        )
        k = _tensor(ins[1], "k")
        expect(
            (cache.num_kv_heads, cache.head_dim) == k.shape[1:],
            f"k {k} does not match the cache's {cache.num_kv_heads} kv heads x {cache.head_dim}",
        )
        # A cache in another float dtype stores k and v rounded to it (--kv-dtype).
        expect(
            cache.dtype.is_float and k.dtype.is_float,
            f"k {k} and the cache ({cache.dtype.value}) must both be float",
        )
        return (q,)


# --- elementwise -----------------------------------------------------------------------------------------


def broadcast(a: Shape, b: Shape) -> Shape:
    """Numpy broadcasting of two shapes; symbolic dims must match by name (or meet a 1)."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        da = a[-1 - i] if i < len(a) else 1
        db = b[-1 - i] if i < len(b) else 1
        expect(
            da == db or da == 1 or db == 1,
            f"shapes {format_shape(a)} and {format_shape(b)} do not broadcast",
        )
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


@dataclass(frozen=True)
class _Binary(Op):
    num_inputs: ClassVar[int] = 2

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        a, b = _float(ins[0], "lhs"), _float(ins[1], "rhs")
        expect(a.dtype == b.dtype, f"operands differ in dtype: {a} vs {b}")
        return (TensorType(a.dtype, broadcast(a.shape, b.shape)),)


@dataclass(frozen=True)
class Add(_Binary):
    """a + b with numpy broadcasting."""

    opname: ClassVar[str] = "add"


@dataclass(frozen=True)
class Mul(_Binary):
    """a * b with numpy broadcasting."""

    opname: ClassVar[str] = "mul"


@dataclass(frozen=True)
class _Unary(Op):
    num_inputs: ClassVar[int] = 1

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        return (_float(ins[0], "x"),)


@dataclass(frozen=True)
class SiLU(_Unary):
    """x * sigmoid(x)."""

    opname: ClassVar[str] = "silu"


GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True)
class GELU(_Unary):
    """Gaussian error linear unit, exact (erf) or the tanh approximation."""

    opname: ClassVar[str] = "gelu"
    approximate: str = "none"

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        expect(
            self.approximate in GELU_APPROXIMATIONS,
            f"approximate must be one of {GELU_APPROXIMATIONS}",
        )
        return super().infer(ins)


@dataclass(frozen=True)
class Softmax(_Unary):
    """Softmax along `axis`, computed in f32."""

    opname: ClassVar[str] = "softmax"
    axis: int = -1

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _float(ins[0], "x")
        _axis(self.axis, x.rank)
        return (x,)


@dataclass(frozen=True)
class Cast(Op):
    """Convert element type (float <-> float, rounding to nearest even)."""

    opname: ClassVar[str] = "cast"
    num_inputs: ClassVar[int] = 1
    dtype: DType = DType.f32

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _tensor(ins[0], "x")
        expect(x.dtype is not DType.u4, "cannot cast packed u4; dequantize through int4_linear")
        expect(self.dtype is not DType.u4, "cannot cast to packed u4; quantize weights offline")
        return (x.with_dtype(self.dtype),)


# --- layout ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reshape(Op):
    """Row-major reshape; one -1 may stand for the remaining (possibly symbolic) dim."""

    opname: ClassVar[str] = "reshape"
    num_inputs: ClassVar[int] = 1
    shape: Shape = ()

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _tensor(ins[0], "x")
        try:
            return (x.with_shape(reshape_dims(x.shape, self.shape)),)
        except ValueError as e:
            raise VerifyError(str(e)) from None


@dataclass(frozen=True)
class Transpose(Op):
    """Permute axes: out.shape[i] = x.shape[perm[i]]."""

    opname: ClassVar[str] = "transpose"
    num_inputs: ClassVar[int] = 1
    perm: tuple[int, ...] = ()

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _tensor(ins[0], "x")
        expect(
            sorted(self.perm) == list(range(x.rank)),
            f"perm {list(self.perm)} is not a permutation of rank {x.rank}",
        )
        return (x.with_shape(tuple(x.shape[p] for p in self.perm)),)


@dataclass(frozen=True)
class Concat(Op):
    """Join tensors along `axis`; other dims must match."""

    opname: ClassVar[str] = "concat"
    axis: int = 0

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        expect(len(ins) >= 1, "concat needs at least one input")
        ts = [_tensor(t, f"input {i}") for i, t in enumerate(ins)]
        first = ts[0]
        axis = _axis(self.axis, first.rank)
        total = 0
        for t in ts:
            expect(
                t.dtype == first.dtype and t.rank == first.rank,
                f"concat inputs differ: {first} vs {t}",
            )
            expect(
                all(
                    a == b
                    for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True))
                    if i != axis
                ),
                f"concat inputs differ off axis {self.axis}: {first} vs {t}",
            )
            expect(isinstance(t.shape[axis], int), f"concat axis dim must be static, got {t}")
            total += t.shape[axis]  # type: ignore[operator]
        shape = list(first.shape)
        shape[axis] = total
        return (first.with_shape(tuple(shape)),)


@dataclass(frozen=True)
class Split(Op):
    """Cut a tensor along `axis` into pieces of `sizes`; one output per piece."""

    opname: ClassVar[str] = "split"
    num_inputs: ClassVar[int] = 1
    axis: int = -1
    sizes: tuple[int, ...] = ()

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _tensor(ins[0], "x")
        axis = _axis(self.axis, x.rank)
        expect(
            sum(self.sizes) == x.shape[axis],
            f"sizes {list(self.sizes)} do not sum to dim {x.shape[axis]} of {x}",
        )
        outs = []
        for size in self.sizes:
            shape = list(x.shape)
            shape[axis] = size
            outs.append(x.with_shape(tuple(shape)))
        return tuple(outs)


# --- mixture of experts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoERoute(Op):
    """Router: softmax(logits) in f32, top-k experts per token, optionally renormalized to sum 1.

    (logits[T, E]) -> (weights[T, k] in logits' dtype, expert ids i32[T, k]), ids by descending weight.
    """

    opname: ClassVar[str] = "moe_route"
    num_inputs: ClassVar[int] = 1
    top_k: int = 2
    normalize: bool = True

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x = _float(ins[0], "router logits")
        expect(x.rank == 2, f"router logits must be [T, E], got {x}")
        expect(0 < self.top_k <= x.shape[1], f"top_k {self.top_k} must be in 1..{x.shape[1]}")  # type: ignore[operator]
        t = x.shape[0]
        return (TensorType(x.dtype, (t, self.top_k)), TensorType(DType.i32, (t, self.top_k)))


@dataclass(frozen=True)
class MoEExperts(Op):
    """SwiGLU experts applied per token to its routed experts and summed by routing weight.

    out[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])), e = ids[t, j].
    Unfused: (x[T, C], weights[T, k], ids i32[T, k], gate[E, I, C], up[E, I, C], down[E, C, I]);
    fused_gate_up: (x, weights, ids, gate_up[E, 2I, C] (gate rows first), down[E, C, I]). -> [T, C].
    """

    opname: ClassVar[str] = "moe_experts"
    fused_gate_up: bool = False

    def arity(self) -> int:
        return 5 if self.fused_gate_up else 6

    def infer(self, ins: Sequence[Type]) -> tuple[Type, ...]:
        x, w, ids = _float(ins[0], "x"), _float(ins[1], "weights"), _tensor(ins[2], "ids")
        expect(x.rank == 2, f"x must be [T, C], got {x}")
        expect(
            ids.dtype is DType.i32 and ids.shape == w.shape,
            f"ids {ids} must be i32 shaped like weights {w}",
        )
        expect(w.shape[0] == x.shape[0], f"weights {w} and x {x} disagree on T")
        down = _float(ins[-1], "down")
        expect(
            down.rank == 3 and down.shape[1] == x.shape[1],
            f"down {down} must be [E, {x.shape[1]}, I]",
        )
        e, _, inter = down.shape
        if self.fused_gate_up:
            gu = _float(ins[3], "gate_up")
            expect(
                gu.shape == (e, 2 * inter, x.shape[1]),
                f"gate_up {gu} must be [{e}, {2 * inter}, {x.shape[1]}]",
            )  # type: ignore[operator]
        else:
            for name, t in (("gate", ins[3]), ("up", ins[4])):
                tt = _float(t, name)
                expect(
                    tt.shape == (e, inter, x.shape[1]),
                    f"{name} {tt} must be [{e}, {inter}, {x.shape[1]}]",
                )
        return (x,)


# Named groups, for passes and codegen tables.
ELEMENTWISE = (Add, Mul, SiLU, GELU, Cast)
LINEAR = (Linear, Int4Linear)
NORMS = (RMSNorm, AddRMSNorm)
ATTENTION = (Attention, PagedAttention)
LAYOUT = (Reshape, Transpose, Concat, Split)
MOE = (MoERoute, MoEExperts)
