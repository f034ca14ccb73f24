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

A parallel launch wakes TVM's thread pool, which costs ~3.4 us on this machine's 2 cores
(measured: an add of 576 floats takes 3.4 us parallel, 0.04 us serial). A decode step of a
small model runs a dozen of these kernels per layer on one row each, so each nest's parallel
loop is cut in two by `SerialWhenSmall`: below SERIAL_POINTS loop iterations (the nest's
innermost statements executed, known at run time for dynamic row counts) it runs serially on
the calling thread.
"""

from __future__ import annotations

import functools
import operator

import tvm
from tvm import relax as rx
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.sym.analyzer import Analyzer
from tvm.target import Target

from .attention_cpu import ReplaceCPUAttention

# Vector lanes tried for the innermost loop, widest first (f32 lanes of a 512-bit register).
LANES = (16, 8, 4)
# Innermost statements a nest executes (elements, vector lanes counted) below which it runs
# serially: a few microseconds of work, about what a parallel launch costs.
SERIAL_POINTS = 4096
# Marks the parallel loops ParallelOuterLoops made, for SerialWhenSmall to find.
SERIAL_BELOW = "ferrumc.serial_below"


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
        # A reshape's copy kernel must keep the form RewriteDataflowReshape turns into a view.
        may_run_serially = not rx.analysis.has_reshape_pattern(func)
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
            outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            sch.parallel(outer)
            if may_run_serially:
                sch.annotate(outer, SERIAL_BELOW, SERIAL_POINTS)
        return sch


def _points(stmt: tirx.Stmt) -> tirx.PrimExpr:
    """How many innermost statements `stmt` executes (a loop's extent times its body's)."""
    if isinstance(stmt, tirx.For):
        return stmt.extent * _points(stmt.body)
    if isinstance(stmt, tirx.SeqStmt):
        return functools.reduce(operator.add, (_points(s) for s in stmt))
    if isinstance(stmt, s_tir.SBlockRealize):
        return _points(stmt.block.body)
    if isinstance(stmt, tirx.IfThenElse):
        then = _points(stmt.then_case)
        return then if stmt.else_case is None else tirx.max(then, _points(stmt.else_case))
    return tirx.IntImm("int64", 1)


def _serial_when_small(loop: tirx.For, analyzer: Analyzer, known: list[tirx.Var]) -> tirx.Stmt:
    """A marked parallel loop as a serial loop below its threshold: statically where its work
    is known, else behind a run-time test with both loops (ConvertSSA renames the copy's
    variables afterwards). `known`: the variables defined outside the loop; a count that
    needs others (an inner extent set by an outer loop) leaves the loop parallel."""
    limit = int(loop.annotations[SERIAL_BELOW])
    annotations = {k: v for k, v in loop.annotations.items() if k != SERIAL_BELOW}

    def rebuilt(kind: tirx.ForKind) -> tirx.For:
        return tirx.For(loop.loop_var, loop.min, loop.extent, kind, loop.body, None, annotations)

    work = analyzer.simplify(_points(loop))
    if tirx.analysis.undefined_vars(work, known):
        return rebuilt(tirx.ForKind.PARALLEL)
    if isinstance(work, tirx.IntImm):
        return rebuilt(tirx.ForKind.SERIAL if int(work) < limit else tirx.ForKind.PARALLEL)
    return tirx.IfThenElse(
        work < limit, rebuilt(tirx.ForKind.SERIAL), rebuilt(tirx.ForKind.PARALLEL)
    )


def _is_marked(stmt: tirx.Stmt) -> bool:
    return isinstance(stmt, tirx.For) and SERIAL_BELOW in stmt.annotations


@tvm.transform.module_pass(opt_level=0, name="SerialWhenSmall")
def serial_when_small(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every nest ParallelOuterLoops parallelized (a loop at the top of the root block) runs
    serially below its SERIAL_POINTS."""
    analyzer = Analyzer()
    changed = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or not isinstance(func.body, s_tir.SBlockRealize):
            continue
        root = func.body.block
        stmts = list(root.body) if isinstance(root.body, tirx.SeqStmt) else [root.body]
        if not any(_is_marked(s) for s in stmts):
            continue
        # Parameters, and the symbolic shapes their buffers bind.
        known = [*func.params, *tirx.analysis.undefined_vars(func.body, list(func.params))]
        new = [_serial_when_small(s, analyzer, known) if _is_marked(s) else s for s in stmts]
        block = s_tir.SBlock(
            root.iter_vars, root.reads, root.writes, root.name_hint,
            new[0] if len(new) == 1 else tirx.SeqStmt(new),
            root.init, root.alloc_buffers, root.match_buffers, root.annotations,
        )  # fmt: skip
        realize = s_tir.SBlockRealize(func.body.iter_values, func.body.predicate, block)
        single = tvm.IRModule({gv: func.with_body(realize)})
        changed[gv] = s_tir.transform.ConvertSSA()(single)[gv]
    for gv, func in changed.items():
        mod.update_func(gv, func)
    return mod


def cpu_schedule_pass() -> tvm.transform.Pass:
    """TVM's CPU attention kernels swapped for ours, then every unscheduled PrimFunc scheduled."""
    return tvm.transform.Sequential(
        [ReplaceCPUAttention(), dl.ApplyDefaultSchedule(ParallelOuterLoops()), serial_when_small]
    )
