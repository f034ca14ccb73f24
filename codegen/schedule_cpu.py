"""A correctness-first CPU schedule: run each block's outer data-parallel loops in parallel.

dlight has no CPU matmul rule and its CPU GEMV rule is slow to compile (TVM.md), so every
PrimFunc without a schedule gets this one: for each block, the leading spatial loops are
fused and marked parallel; reductions stay serial inside. Hand schedules for GEMV/GEMM
(vector lanes, rfactor, register tiles) will replace it for the hot kernels.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target


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


class ParallelOuterLoops(dl.ScheduleRule):
    """Fuse each loop nest's leading spatial loops into one parallel loop."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None:
            return None
        # Blocks may share a nest (TVM's KV-cache append writes k and v in one loop): group
        # them by their outermost loop and parallelize only the loops all of them share.
        nests: list[list[list[s_tir.schedule.LoopRV]]] = []
        for info in blocks:
            lead = _leading_spatial_loops(sch, info)
            if not lead:
                continue
            head = sch.get(lead[0])
            nest = next((n for n in nests if sch.get(n[0][0]).same_as(head)), None)
            if nest is None:
                nests.append([lead])
            else:
                nest.append(lead)
        for nest in nests:
            loops = _shared_prefix(sch, nest)
            sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
        return sch


def cpu_schedule_pass() -> object:
    """The pass that schedules every not-yet-scheduled PrimFunc for llvm."""
    return dl.ApplyDefaultSchedule(ParallelOuterLoops())
