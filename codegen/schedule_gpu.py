"""GPU schedule rules: dlight's, in order, plus one for the int4 kernels on Metal.

dlight's Matmul rule first tries Metal's simdgroup tensorization, which cannot take the
int4 dequantize inside the weight load: the attempt ends in a ScheduleError after about two
minutes per kernel (measured: 128 s for a [seq, 256] x [64, 256] int4 linear), and the rule
then falls back to its generic tiled schedule. `Int4Matmul` goes to that schedule directly.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target

# The block that te_kernels.int4_linear names; FuseTIR keeps block names.
DEQUANTIZE_BLOCK = "int4_dequantize"
# A GPU target kind whose Matmul config is the one Metal gets, without the simdgroup branch.
_GENERIC_GPU = {"kind": "opencl"}


def _is_int4_linear(func: tirx.PrimFunc) -> bool:
    return f'"{DEQUANTIZE_BLOCK}"' in func.script()


class Int4Matmul(dl.gpu.Matmul):
    """dlight's Matmul schedule for int4 linears, skipping Metal's simdgroup attempt."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "metal":
            return None
        if not _is_int4_linear(func):
            return None
        return super().apply(func, Target(_GENERIC_GPU), tunable)


def gpu_schedule_pass() -> tvm.transform.Pass:
    """Loops bound to GPU blocks and threads for every kernel: the first rule that applies."""
    return dl.ApplyDefaultSchedule(
        Int4Matmul(),
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    )
