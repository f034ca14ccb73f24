"""Round-to-nearest int4 group quantization: the numerics of the quantize_int4 op, shared with GPTQ.

A weight row is cut into groups of `group_size` consecutive columns; each group stores one
scale and one zero and its weights as q in 0..15, read back as w ~ scale * (q - zero).

- symmetric: zero = 8 and scale = absmax / 7.5 (GPTQ's convention, 2 * absmax / 15). Then
  w / scale lies in -7.5..7.5 and rounds to -8..8; clamping +8 to level 15 costs at most
  scale / 2, so every weight is within scale / 2 and all 16 levels are used. (llama.cpp's
  Q4_0 picks absmax / 8 instead, which can miss by a whole scale on the clamped side.)
- asymmetric: the range [min(w, 0), max(w, 0)] spread over 0..15: scale = range / 15 and
  zero = -min / scale, kept as a float (the format stores zeros as floats, so nothing forces
  it to an integer and every weight stays within scale / 2). The range holds 0, so the zero
  lies in 0..15 and survives f16 storage.

Scales and zeros are rounded to their storage dtype before the weights are rounded, so the
bound holds for the values actually stored; scales round up, so that the group's extremes
still fit in 0..15. An all-zero group gets scale 1.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def group_params(
    groups: np.ndarray, symmetric: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) of each group, groups on the last axis: [..., g] -> two [...] arrays in
    f32, holding values representable in `dtype` (the storage dtype of scales and zeros)."""
    w = groups.astype(F32)
    if symmetric:
        scale = np.abs(w).max(-1) / F32(7.5)
    else:
        lo, hi = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
        scale = (hi - lo) / F32(15)
    scale = _round_up(np.where(scale > 0, scale, F32(1)), dtype)
    if symmetric:
        return scale, np.full(scale.shape, 8, F32)
    return scale, (-lo / scale).astype(dtype).astype(F32)


def _round_up(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The smallest values of `dtype` >= x (positive f32), back as f32."""
    stored = x.astype(dtype)
    up = np.nextafter(stored, np.array(np.inf, dtype))
    return np.where(stored.astype(F32) < x, up, stored).astype(F32)


def quantize_values(w: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """q = clamp(round(w / scale + zero), 0, 15) elementwise (broadcasting), as uint8."""
    q = np.rint(w.astype(F32) / scale + zero)
    return np.clip(q, 0, 15).astype(np.uint8)


def rtn_quantize(
    w: np.ndarray, group_size: int, symmetric: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize w[N, K]: q uint8 [N, K] in 0..15 (unpacked), scales and zeros [N, K / g] in `dtype`."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"in dim {k} is not a multiple of group size {group_size}")
    groups = w.reshape(n, k // group_size, group_size)
    scale, zero = group_params(groups, symmetric, dtype)
    q = quantize_values(groups, scale[..., None], zero[..., None]).reshape(n, k)
    return q, scale.astype(dtype), zero.astype(dtype)
