"""Value types of the ferrumc IR: dtypes, shapes with symbolic dims, tensors and KV caches."""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass

import ml_dtypes
import numpy as np

# A dimension is a static size or a symbolic name bound at run time ("seq", "batch", ...).
Dim = int | str
Shape = tuple[Dim, ...]


class DType(enum.Enum):
    """Element types. `u4` is packed int4: two values per byte, low nibble first, along the last axis."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i32 = "i32"
    u32 = "u32"
    u8 = "u8"
    u4 = "u4"

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f16, DType.bf16)

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype holding this type's values (for u4: the packed bytes)."""
        return _NUMPY[self]

    @staticmethod
    def parse(text: str) -> DType:
        try:
            return DType(text)
        except ValueError:
            valid = ", ".join(d.value for d in DType)
            raise ValueError(f"unknown dtype {text!r}; valid: {valid}") from None


_NUMPY = {
    DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16),
    DType.bf16: np.dtype(ml_dtypes.bfloat16),
    DType.i32: np.dtype(np.int32),
    DType.u32: np.dtype(np.uint32),
    DType.u8: np.dtype(np.uint8),
    DType.u4: np.dtype(np.uint8),
}

FLOAT_DTYPES = (DType.f32, DType.f16, DType.bf16)


def format_shape(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def parse_shape(text: str) -> Shape:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"shape must look like [seq,896], got {text!r}")
    body = body[1:-1].strip()
    if not body:
        return ()
    return tuple(int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in body.split(","))


def storage_shape(dtype: DType, shape: Shape) -> Shape:
    """The numpy shape that stores a value: u4 packs two elements per byte on the last axis."""
    if dtype is not DType.u4:
        return shape
    last = shape[-1]
    return (*shape[:-1], last // 2 if isinstance(last, int) else last)


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and (possibly symbolic) shape."""

    dtype: DType
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int:
        assert self.is_static, f"numel of a symbolic shape {self}"
        return math.prod(self.shape)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.dtype.value}{format_shape(self.shape)}"


@dataclass(frozen=True)
class KVCacheType:
    """An opaque paged KV cache: pages of keys and values for every layer and sequence."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: DType

    def __str__(self) -> str:
        return (
            f"kvcache<layers={self.num_layers},kv_heads={self.num_kv_heads},"
            f"head_dim={self.head_dim},{self.dtype.value}>"
        )


Type = TensorType | KVCacheType


def parse_type(text: str) -> Type:
    text = text.strip()
    if text.startswith("kvcache<") and text.endswith(">"):
        parts = text[len("kvcache<") : -1].split(",")
        fields = dict(p.split("=") for p in parts[:3])
        return KVCacheType(
            int(fields["layers"]),
            int(fields["kv_heads"]),
            int(fields["head_dim"]),
            DType.parse(parts[3]),
        )
    bracket = text.find("[")
    if bracket <= 0:
        raise ValueError(f"type must look like f32[seq,896], got {text!r}")
    return TensorType(DType.parse(text[:bracket]), parse_shape(text[bracket:]))


def reshape_dims(src: Shape, target: Shape) -> Shape:
    """Resolve a reshape target (at most one -1) against `src`, keeping symbolic dims symbolic.

    Symbolic dims cannot be split or merged: the -1 may absorb them only as a whole, so
    [seq,896] -> [-1,14,64] gives [seq,14,64], and a reshape that mixes them with static
    factors is refused.
    """
    src_syms = [d for d in src if isinstance(d, str)]
    src_static = math.prod(d for d in src if isinstance(d, int))
    tgt_syms = [d for d in target if isinstance(d, str)]
    tgt_static = math.prod(d for d in target if isinstance(d, int) and d != -1)
    holes = sum(1 for d in target if d == -1)
    if holes > 1:
        raise ValueError(f"reshape target {format_shape(target)} has more than one -1")
    missing = Counter(src_syms) - Counter(tgt_syms)
    if Counter(tgt_syms) - Counter(src_syms):
        raise ValueError(
            f"reshape target {format_shape(target)} names dims absent from {format_shape(src)}"
        )
    if holes == 0:
        if missing or src_static != tgt_static:
            raise ValueError(f"cannot reshape {format_shape(src)} to {format_shape(target)}")
        return target
    if src_static % max(tgt_static, 1) != 0:
        raise ValueError(f"cannot reshape {format_shape(src)} to {format_shape(target)}")
    rest = src_static // tgt_static
    names = list(missing.elements())
    if (names and rest != 1) or len(names) > 1:
        raise ValueError(
            f"cannot reshape {format_shape(src)} to {format_shape(target)}: symbolic dims may not be "
            "split or merged"
        )
    fill: Dim = names[0] if names else rest
    return tuple(fill if d == -1 else d for d in target)
