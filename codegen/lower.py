"""Lower a ferrumc Module to a Relax IRModule: one function per graph plus `create_kv_cache`.

Every graph becomes `name(tokens, positions, kv_cache, params) -> logits`, where `params` is
one tuple holding every weight of the module in `LoweredModule.weight_names` order, so the
runtime passes the same list of tensors to prefill and decode and nothing is embedded in the
library. Ops are lowered through the table in lower_ops.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax as rx

from ..errors import UnsupportedModel
from ..ir.graph import Graph, Module, Value
from ..ir.ops import Input, Weight
from ..ir.types import TensorType
from ..ir.verify import verify_module
from ..passes.select_logit_rows import SelectLogitRows
from .context import LowerContext
from .kv_cache import CREATE_FUNCTION, CacheLayout, cache_layout, create_function_module
from .lower_ops import LOWERINGS, NOT_YET_LOWERED
from .targets import Target

# Inputs come first in this order when a graph has them; any others follow in graph order.
ENTRY_INPUTS = ("tokens", "positions", "kv_cache")
PARAMS_NAME = "params"


@dataclass(frozen=True)
class LoweredModule:
    """The Relax module and the facts the runtime needs to call it."""

    mod: tvm.IRModule
    # Weights in the order of the `params` tuple every entry function takes last.
    weight_names: tuple[str, ...]
    weight_types: dict[str, TensorType]
    # Entry function -> its input names (before `params`) and its output names.
    signatures: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    kv_cache: CacheLayout | None

    def constant_bytes(self) -> int:
        """Bytes of tensor constants inside the Relax functions: small tables such as rotary
        frequencies; weights are parameters, so this must not grow with the model."""
        total = 0

        def visit(expr: rx.Expr) -> None:
            nonlocal total
            if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.ty, rx.TensorType):
                total += expr.value.numpy().nbytes

        for gv in self.mod.get_global_vars():
            fn = self.mod[gv]
            if isinstance(fn, rx.Function):
                rx.analysis.post_order_visit(fn, visit)
        return total


def weight_order(module: Module) -> dict[str, TensorType]:
    """Every weight of the module once, in order of first use across its graphs."""
    out: dict[str, TensorType] = {}
    for graph in module.graphs.values():
        for node in graph.weights:
            out.setdefault(node.op.name, node.op.type)  # type: ignore[attr-defined]
    return out


def check_lowerable(module: Module) -> None:
    """Raise UnsupportedModel naming every op that has no lowering."""
    missing: dict[str, str] = {}
    for graph in module.graphs.values():
        for node in graph.nodes:
            op_type = type(node.op)
            if op_type in (Input, Weight) or op_type in LOWERINGS:
                continue
            reason = NOT_YET_LOWERED.get(op_type, "no lowering registered in codegen/lower_ops.py")
            missing[f"{graph.name}: {node.op.opname}"] = reason
    if missing:
        lines = "\n".join(f"  {where}: {why}" for where, why in missing.items())
        raise UnsupportedModel(f"cannot lower these ops yet:\n{lines}")


def lower_module(module: Module, target: Target, int8_activations: bool = False) -> LoweredModule:
    """The Relax IRModule for `module` on `target`; the module is verified first.
    `int8_activations`: int4 linears multiply x rounded to int8 where the CPU can
    (passes/quantization.ACTIVATIONS)."""
    verify_module(module)
    check_lowerable(module)
    weights = weight_order(module)
    layout = cache_layout(module)
    bb = rx.BlockBuilder()
    signatures = {}
    for graph in module.graphs.values():
        # The compiled prefill returns logits for the rows the runtime asks for (each chunk's
        # last token), not for every token.
        if graph.name == "prefill":
            graph = SelectLogitRows()(graph)
        ctx = LowerContext(bb, target, int8_activations)
        signatures[graph.name] = _lower_graph(ctx, graph, weights)
    mod = bb.finalize()
    if layout is not None:
        mod.update(create_function_module(layout, target))
    return LoweredModule(
        mod=mod,
        weight_names=tuple(weights),
        weight_types=weights,
        signatures=signatures,
        kv_cache=layout,
    )


def _ordered_inputs(graph: Graph) -> list[Input]:
    inputs = [n.op for n in graph.inputs]
    rank = {name: i for i, name in enumerate(ENTRY_INPUTS)}
    return sorted(inputs, key=lambda op: rank.get(op.name, len(rank)))  # type: ignore[attr-defined,return-value]


def _lower_graph(
    ctx: LowerContext, graph: Graph, weights: dict[str, TensorType]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if graph.name == CREATE_FUNCTION:
        raise UnsupportedModel(f"graph name {CREATE_FUNCTION!r} is reserved for the KV cache")
    bb = ctx.bb
    inputs = _ordered_inputs(graph)
    in_vars = {op.name: rx.Var(op.name, ctx.relax_type(op.type)) for op in inputs}
    params = rx.Var(PARAMS_NAME, rx.TupleType([ctx.relax_type(t) for t in weights.values()]))
    weight_index = {name: i for i, name in enumerate(weights)}
    with bb.function(graph.name, [*in_vars.values(), params]):
        with bb.dataflow():
            output = _lower_nodes(ctx, graph, in_vars, params, weight_index)
        bb.emit_func_output(output)
    return tuple(op.name for op in inputs), tuple(graph.outputs)


def _lower_nodes(
    ctx: LowerContext,
    graph: Graph,
    in_vars: dict[str, rx.Var],
    params: rx.Var,
    weight_index: dict[str, int],
) -> rx.Var:
    """Emit every node of `graph` into the current dataflow block; returns the output var."""
    values: dict[Value, rx.Expr] = {}
    for node in graph.nodes:
        if isinstance(node.op, Input):
            values[node.out] = in_vars[node.op.name]
            continue
        if isinstance(node.op, Weight):
            item = rx.TupleGetItem(params, weight_index[node.op.name])
            values[node.out] = ctx.emit(item, _var_name(node.op.name))
            continue
        args = [values[v] for v in node.inputs]
        results = LOWERINGS[type(node.op)](ctx, node, args)
        assert len(results) == len(node.types), f"{node.op.opname} lowered to {len(results)}"
        for value, result in zip(node.outputs, results, strict=True):
            values[value] = result
    outs = [values[v] for v in graph.outputs.values()]
    return ctx.bb.emit_output(outs[0] if len(outs) == 1 else rx.Tuple(outs))


def _var_name(weight: str) -> str:
    return weight.replace(".", "_")
