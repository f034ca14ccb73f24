"""AWQ (GEMM) packing: what differs from GPTQ; frontend/gptq.py loads both through the same path.

AWQ stores, per linear `<prefix>`: qweight i32[K, N/8] and qzeros i32[K/g, N/8], both packed along
N with bits 4i of word c holding column 8c + AWQ_ORDER[i]; scales [K/g, N]; no g_idx (no
act-order), zero points as they are (no offset), always asymmetric:
  w[k, n] = scales[k // g, n] * (q[k, n] - z[k // g, n]).
"""

from __future__ import annotations

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """i32[R, C] AWQ words -> uint8[R, 8C] codes in column order."""
    u = np.ascontiguousarray(words).view(np.uint32)
    out = np.empty((*u.shape, 8), np.uint8)
    for i, column in enumerate(AWQ_ORDER):
        out[..., column] = (u >> np.uint32(4 * i)) & np.uint32(0xF)
    return out.reshape(u.shape[0], u.shape[1] * 8)
