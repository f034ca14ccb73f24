"""quantize-int4-gptq: float linears become int4 linears whose codes GPTQ chose (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).

For each linear y = x W^T, with H = 2 X^T X over calibration activations X (its inputs), GPTQ
quantizes W one column at a time and spreads each column's rounding error over the columns not
yet quantized, weighted by the Cholesky factor of H^-1: the least-squares correction of the
layer's output error ||X W^T - X Q^T||. Here:
- activations: every linear's input, from one run per calibration window of the float graph
  in the numpy interpreter (not layer by layer through already-quantized layers: one run
  instead of one per layer, and the paper finds the difference small);
- dampening: 1% of H's mean diagonal; columns that never see activation are zeroed;
- columns in blocks of 128 (the error of a block reaches later blocks in one matmul);
- groups: the scale and zero of a group are computed from the current (error-updated)
  weights when its first column comes up;
- act-order: columns by descending diag(H) with static groups (each group's scale and zero
  from the original weights, groups still contiguous columns), so the result is the plain
  group format, with no permutation for the kernels to apply.
The codes, scales and zeros are computed here, not by an op: they become weights named like
quantize-int4-rtn's (<weight>.q4, .scales, .zeros) whose data the pass context carries to the
bundle writer. Which linears, and the scales' dtype (f16): as in quantize-int4-rtn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.int4 import Int4Format, pack_int4
from ..ir.int4_quantize import group_params, quantize_values
from ..ir.types import DType, TensorType
from .base import Pass, PassContext
from .calibration import calibration_windows, collect_hessians, weight_value
from .lift_weight_transforms import INT4_PARTS, derive_name
from .quantization import GPTQOptions
from .quantize_int4_rtn import quantizable_linears, replace_linear, scales_dtype

BLOCK = 128
DAMP = 0.01


def gptq(
    w: np.ndarray, h: np.ndarray, fmt: Int4Format, act_order: bool = False, dtype: type = np.float16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of w[N, K] given H[K, K]: codes uint8 [N, K] (unpacked, 0..15), scales and zeros
    [N, K / g] as f32 holding values representable in `dtype` (the storage dtype)."""
    n, k = w.shape
    g = fmt.group_size
    assert k % g == 0 and BLOCK % g == 0, f"K {k} and block {BLOCK} must be multiples of {g}"
    w = w.astype(np.float64)
    h = h.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    scales = np.zeros((n, k // g), np.float32)
    zeros = np.zeros((n, k // g), np.float32)
    if act_order:
        order = np.argsort(-np.diag(h), kind="stable")
        scales[:], zeros[:] = group_params(w.reshape(n, k // g, g), fmt.symmetric, dtype)
    else:
        order = np.arange(k)
    h = h[order][:, order]
    hinv = _inverse_cholesky(h)  # upper: H^-1 = U^T U
    # Transposed, so that a column of W (and its updates) is a contiguous row: wt[k] = W[:, k].
    wt = np.ascontiguousarray(w[:, order].T)
    codes = np.zeros((k, n), np.uint8)
    for i1 in range(0, k, BLOCK):
        i2 = min(i1 + BLOCK, k)
        w1, u1 = wt[i1:i2], hinv[i1:i2, i1:i2]  # w1 is updated in place
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = order[i1 + i]
            group = col // g
            if not act_order and col % g == 0:  # a group's first column: params from now
                scales[:, group], zeros[:, group] = group_params(
                    w1[i : i + g].T, fmt.symmetric, dtype
                )
            s, z = scales[:, group], zeros[:, group]
            q = quantize_values(w1[i], s, z)
            codes[col] = q
            err[i] = (w1[i] - s * (q.astype(np.float32) - z)) / u1[i, i]
            w1[i:] -= np.outer(u1[i, i:], err[i])
        wt[i2:] -= hinv[i1:i2, i2:].T @ err
    codes = np.ascontiguousarray(codes.T)
    return codes, scales, zeros


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of (H + damp)^-1, dampening more if H is too ill-conditioned."""
    k = h.shape[0]
    damp = DAMP * float(np.mean(np.diag(h)))
    for _ in range(5):
        try:
            inverse = np.linalg.inv(h + damp * np.eye(k))
            return np.linalg.cholesky(inverse).T
        except np.linalg.LinAlgError:
            damp *= 10
    raise np.linalg.LinAlgError("GPTQ: the Hessian stays singular after dampening")


@dataclass(frozen=True)
class QuantizeInt4GPTQ(Pass):
    """GPTQ int4 from calibration activations; needs the pass context's weights and tokenizer."""

    name: ClassVar[str] = "quantize-int4-gptq"
    format: Int4Format = field(default_factory=Int4Format)
    options: GPTQOptions = field(default_factory=GPTQOptions)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        targets = quantizable_linears(graph, self.format, self)
        if not targets:
            return graph
        opts = self.options
        windows = calibration_windows(
            ctx.tokenize, opts.calibration, opts.num_sequences, opts.sequence_length, self.name
        )

        # Every window reads every weight: read (and dequantize) each once, for the whole pass.
        cache: dict[str, np.ndarray] = {}

        def load(name: str) -> np.ndarray:
            if name not in cache:
                cache[name] = ctx.weight(name, by=self.name)
            return cache[name]

        hessians = collect_hessians(graph, [n.inputs[0] for n in targets], windows, load)
        computed: dict[Value, tuple[TensorType, ...]] = {}
        for node in targets:
            w = node.inputs[1]
            if w in computed:  # a weight read by several linears: quantized once, for the first
                continue
            try:
                result = gptq(
                    weight_value(graph, w, load),
                    hessians[node.inputs[0]],
                    self.format,
                    opts.act_order,
                    scales_dtype(w.tensor.dtype).numpy,
                )
            except np.linalg.LinAlgError as e:
                raise self.error(f"{derive_name(w)}: {e}") from None
            computed[w] = self._store(ctx, w, *result)
        targets_set = set(targets)

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            if node not in targets_set:
                return None
            types = computed[node.inputs[1]]
            names = self._names(node.inputs[1])
            int4 = [b.weight(name, t.dtype, t.shape) for name, t in zip(names, types, strict=False)]
            return replace_linear(b, node, ins, self.format, *int4)

        return rebuild(graph, rule)

    def _names(self, w: Value) -> tuple[str, ...]:
        parts = INT4_PARTS if not self.format.symmetric else INT4_PARTS[:2]
        return tuple(f"{derive_name(w)}.{part}" for part in parts)

    def _store(
        self, ctx: PassContext, w: Value, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray
    ) -> tuple[TensorType, ...]:
        """Put the results in the context as weights; returns their types."""
        dtype = scales_dtype(w.tensor.dtype)
        n, k = w.tensor.shape
        groups = TensorType(dtype, scales.shape)
        types = (TensorType(DType.u4, (n, k)), groups, groups)
        arrays = (pack_int4(codes), scales.astype(dtype.numpy), zeros.astype(dtype.numpy))
        names = self._names(w)
        for name, array in zip(names, arrays, strict=False):
            ctx.derived[name] = array
        return types[: len(names)]
