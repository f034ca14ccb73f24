"""The llvm schedule for every kernel that has none: elementwise chains inlined, outer loops
parallel, the innermost loop in vector lanes.

The hot kernels bring their own loop nests: linear layers are hand-written TIR
(codegen/linear_cpu.py), and TVM's KV-cache kernels are scheduled already, the decode and
ragged-prefill attention ones replaced first by parallel ones (codegen/attention_cpu.py); all
of these skip this rule (`tirx.is_scheduled`). What remains is elementwise work (casts, SiLU, rotary, adds) and
row reductions (RMS norm): for each, producer blocks that are pure elementwise maps are
inlined into their consumers (one pass over memory instead of one per op), each nest's leading
spatial loops are fused into one parallel loop, and where a block is all spatial its innermost
loop of static extent is split into vector lanes.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.target import Target

from .attention_cpu import ReplaceCPUAttention

# Vector lanes tried for the innermost loop, widest first (f32 lanes of a 512-bit register).
LANES = (16, 8, 4)


def _leading_spatial_loops(sch: s_tir.Schedule, info: object) -> list[s_tir.schedule.LoopRV]:
    """The block's outermost loops, in nest order, up to the first non-spatial one."""
    kinds = [(sch.get(it.loop_rv), it.kind) for it in info.iters]  # type: ignore[attr-defined]
    lead = []
    for loop in sch.get_loops(info.block_rv):  # type: ignore[attr-defined]
        stmt = sch.get(loop)
        kind = next((k for s, k in kinds if s.same_as(stmt)), "O")
        if kind != "S":
            break
        lead.append(loop)
    return lead


def _shared_prefix(sch: s_tir.Schedule, leads: list[list[s_tir.schedule.LoopRV]]) -> list:
    """The loops at the head of every list (by identity): the part of a nest all blocks share."""
    prefix = []
    for loops in zip(*leads, strict=False):  # stop at the shortest nest
        stmts = [sch.get(loop) for loop in loops]
        if not all(s.same_as(stmts[0]) for s in stmts):
            break
        prefix.append(loops[0])
    return prefix


def _vector_lanes(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    """Lanes to split a static-extent loop into, if it divides evenly into more than one."""
    extent = sch.get(loop).extent
    if not isinstance(extent, tirx.IntImm):
        return None
    return next((n for n in LANES if int(extent) % n == 0 and int(extent) > n), None)


def _has_bf16(func: tirx.PrimFunc) -> bool:
    return "bfloat16" in func.script()


class ParallelOuterLoops(dl.ScheduleRule):
    """Inline elementwise producers, then per nest: parallel outer loops, vector inner loop."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None:
            return None
        if len(blocks) > 1:
            try_inline_contiguous_spatial(sch, blocks)
            blocks = normalize_prim_func(sch)
            if blocks is None:
                return None
        # Blocks may share a nest (TVM's KV-cache append writes k and v in one loop): group
        # them by their outermost loop and parallelize only the loops all of them share.
        nests: list[list[list[s_tir.schedule.LoopRV]]] = []
        whole: list[bool] = []  # per nest: one block, all of whose loops are spatial
        for info in blocks:
            lead = _leading_spatial_loops(sch, info)
            if not lead:
                continue
            head = sch.get(lead[0])
            index = next((i for i, n in enumerate(nests) if sch.get(n[0][0]).same_as(head)), None)
            if index is None:
                nests.append([lead])
                whole.append(len(lead) == len(sch.get_loops(info.block_rv)))
            else:
                nests[index].append(lead)
                whole[index] = False
        for nest, elementwise in zip(nests, whole, strict=True):
            loops = _shared_prefix(sch, nest)
            inner = loops[-1]
            # TVM 0.27's vectorizer fails on some bf16 nests ("Let cannot bind the same var to
            # two different values"), so bf16 kernels keep scalar inner loops.
            lanes = _vector_lanes(sch, inner) if elementwise and not _has_bf16(func) else None
            if lanes is not None:
                outer, vector = sch.split(inner, [None, lanes])
                sch.vectorize(vector)
                loops = [*loops[:-1], outer]
            sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
        return sch


def cpu_schedule_pass() -> tvm.transform.Pass:
    """TVM's CPU attention kernels swapped for ours, then every unscheduled PrimFunc scheduled."""
    return tvm.transform.Sequential(
        [ReplaceCPUAttention(), dl.ApplyDefaultSchedule(ParallelOuterLoops())]
    )
